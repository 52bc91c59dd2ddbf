"""Arrays that load safely: a tree of named arrays as .safetensors (or, read back, .npz) bytes.

A model's weights and an optimizer's moments are a two-level tree of numpy
arrays, ``{"model": {"layers.0.weight": ...}, "optimizer": {"step": ...}}``;
a count model's tables are one level. ``encode`` flattens such a tree into
flat names (``model/layers.0.weight``, ``optimizer/exp_avg.0``, ``best/...``)
and writes them as the bytes of a ``.safetensors`` file (a JSON header and
raw little-endian data: reading it never runs code, and PyTorch, JAX and
Hugging Face read it as it is) or, on request, of an ``.npz``. ``decode``
reads either back, after checking that the bytes are the ones whose SHA-256
the run's manifest recorded (tinylm.runs); an .npz is read with
``allow_pickle=False``. A truncated, modified or crafted file is refused
with a ``CheckpointError``.

Runs written before tinylm wrote .safetensors hold ``weights-<step>.npz``;
``format_of`` tells the two apart by the file name, so they still open and
resume.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from typing import Mapping

import numpy as np

from tinylm.errors import CheckpointError

Tree = Mapping[str, "np.ndarray | Tree"]

FORMATS = ("safetensors", "npz")
SUFFIXES = {".safetensors": "safetensors", ".npz": "npz"}
# the numpy dtypes safetensors stores (its BOOL, U8..I64, F16, F32, F64)
_SAFETENSORS_DTYPES = {np.dtype(t) for t in (np.bool_, np.uint8, np.int8, np.uint16, np.int16,
                                             np.uint32, np.int32, np.uint64, np.int64,
                                             np.float16, np.float32, np.float64)}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def format_of(name: str) -> str:
    """The array format a file name says: "safetensors" or "npz" (by its suffix)."""
    for suffix, fmt in SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise CheckpointError(f"{name!r} is not an array file (.safetensors or .npz)")


def flatten(tree: Tree) -> dict[str, np.ndarray]:
    """The arrays of ``tree`` under flat names, the levels joined by "/"."""
    arrays: dict[str, np.ndarray] = {}
    _flatten(tree, "", arrays)
    return arrays


def encode(tree: Tree, fmt: str = "safetensors") -> bytes:
    """The .safetensors (or, ``fmt="npz"``, .npz) bytes of a tree of numpy arrays
    (nested dicts with str keys)."""
    arrays = flatten(tree)
    if fmt == "safetensors":
        from safetensors.numpy import save

        for name, array in arrays.items():
            if array.dtype not in _SAFETENSORS_DTYPES:
                raise TypeError(f"cannot save the {array.dtype} array at {name!r} as safetensors")
        # safetensors takes C-order little-endian data (np.ascontiguousarray would make a
        # 0-d array, an optimizer's step count, 1-d)
        return save({name: a.astype(a.dtype.newbyteorder("<"), order="C", copy=False)
                     for name, a in arrays.items()})
    if fmt == "npz":
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()
    raise ValueError(f"unknown array format {fmt!r}; choose one of {', '.join(FORMATS)}")


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


def decode(data: bytes, expected_sha256: str, what: str, fmt: str | None = None) -> dict:
    """The tree stored in ``data``; ``CheckpointError`` unless its SHA-256 is ``expected_sha256``.

    ``fmt`` is the format the file must have (``format_of`` its name); None
    takes either, told apart by the bytes (an .npz is a zip archive).
    """
    if sha256(data) != expected_sha256:
        raise CheckpointError(f"{what} does not match the SHA-256 recorded in the run's manifest: "
                              "the file is truncated or was modified")
    if fmt is None:
        fmt = "npz" if data[:2] == b"PK" else "safetensors"
    if fmt == "npz":
        flat = _read_npz(data, what)
    elif fmt == "safetensors":
        flat = _read_safetensors(data, what)
    else:
        raise ValueError(f"unknown array format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in flat.values()):
        raise CheckpointError(f"{what} is not a plain .{fmt} of numeric arrays")
    return unflatten(flat, what)


def unflatten(flat: Mapping[str, np.ndarray], what: str = "the arrays") -> dict:
    """The tree of ``flat``'s arrays, each name split at "/" (``flatten`` undone)."""
    tree: dict = {}
    for name, array in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"{what} holds clashing array names")
        if not leaf or leaf in node:
            raise CheckpointError(f"{what} holds clashing array names")
        node[leaf] = array
    return tree


def _read_npz(data: bytes, what: str) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a lone .npy array
            raise ValueError
        with loaded as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError):
        # allow_pickle=False raises ValueError for object arrays: a crafted file stops here
        raise CheckpointError(f"{what} is not a plain .npz of numeric arrays") from None


def _read_safetensors(data: bytes, what: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    refused = CheckpointError(f"{what} is not a plain .safetensors of numeric arrays")
    # the header is JSON; its dtypes are checked here so that one safetensors reads only
    # through ml_dtypes (bfloat16, float8) is refused, not half-read
    if len(data) < 8:
        raise refused
    (size,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + size]) if size <= len(data) - 8 else None
    except (ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or not all(
            isinstance(v, dict) and v.get("dtype") in _SAFETENSORS_NAMES
            for k, v in header.items() if k != "__metadata__"):
        raise refused
    try:
        return load(data)
    except (SafetensorError, ValueError, TypeError, KeyError):
        raise refused from None


_SAFETENSORS_NAMES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64",
                      "F16", "F32", "F64"}
