"""Arrays that load safely: a plain .npz of named arrays, checked by its SHA-256.

A model's weights and an optimizer's moments are a two-level tree of numpy
arrays, ``{"model": {"layers.0.weight": ...}, "optimizer": {"step": ...}}``;
a count model's tables are one level. ``encode`` flattens such a tree into
the bytes of an .npz (keys ``model/layers.0.weight``...), ``decode`` reads
them back with ``allow_pickle=False`` so that loading can never run code,
after checking that the bytes are the ones whose SHA-256 the run's manifest
recorded (tinylm.runs). A truncated, modified or crafted file is refused
with a ``CheckpointError``.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from typing import Mapping

import numpy as np

from tinylm.errors import CheckpointError

Tree = Mapping[str, "np.ndarray | Tree"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(tree: Tree) -> bytes:
    """The .npz bytes of a tree of numpy arrays (nested dicts with str keys)."""
    arrays: dict[str, np.ndarray] = {}
    _flatten(tree, "", arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _flatten(tree: Tree, prefix: str, out: dict[str, np.ndarray]) -> None:
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise TypeError(f"array names must be non-empty strings without '/', got {key!r}")
        if isinstance(value, Mapping):
            _flatten(value, f"{prefix}{key}/", out)
            continue
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"cannot save an array of Python objects at {prefix}{key!r} "
                            "(it would need pickle)")
        out[prefix + key] = array


def decode(data: bytes, expected_sha256: str, what: str) -> dict:
    """The tree stored in ``data``; ``CheckpointError`` unless its SHA-256 is ``expected_sha256``."""
    if sha256(data) != expected_sha256:
        raise CheckpointError(f"{what} does not match the SHA-256 recorded in the run's manifest: "
                              "the file is truncated or was modified")
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a lone .npy array
            raise ValueError
        with loaded as npz:
            flat = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, KeyError):
        # allow_pickle=False raises ValueError for object arrays: a crafted file stops here
        raise CheckpointError(f"{what} is not a plain .npz of numeric arrays") from None
    if not all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in flat.values()):
        raise CheckpointError(f"{what} is not a plain .npz of numeric arrays")
    tree: dict = {}
    for name, array in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"{what} holds clashing array names")
        node[leaf] = array
    return tree
