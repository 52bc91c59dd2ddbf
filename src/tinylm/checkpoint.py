"""Checkpoints that load safely: a plain .npz of arrays plus a JSON description.

A checkpoint in a run directory is two files:

* ``checkpoint.npz``: every array (model parameters and buffers, optimizer
  moments), read back with ``allow_pickle=False`` so loading can never run
  code;
* ``checkpoint.json``: the format version, the SHA-256 of the .npz, the
  caller's metadata (config, vocabulary, step, RNG state, metrics...) and the
  *structure* of the saved tree: which nested dicts, lists, scalars, numpy
  arrays and torch tensors it held, with the arrays replaced by their names
  in the .npz.

The tree may be any nesting of dicts (str or int keys), lists, tuples,
numbers, strings, None, numpy arrays and torch tensors, which covers both our
optimizers' ``state_dict()`` and ``torch.optim``'s. Integers of any size and
floats survive JSON exactly (Python's json writes the shortest repr that
round-trips). The .npz is written first and the JSON last, so a crash in
between leaves a digest mismatch, which loading refuses like any truncated or
modified file.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tinylm.errors import CheckpointError
from tinylm.io import atomic_write_bytes, write_json

FORMAT = "tinylm-checkpoint"
VERSION = 1
META_FILE = "checkpoint.json"
ARRAYS_FILE = "checkpoint.npz"


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / META_FILE).is_file()


def save_checkpoint(run_dir: str | Path, meta: dict, tree: dict) -> Path:
    """Write ``tree`` (arrays and their structure) and ``meta`` into ``run_dir``."""
    run_dir = Path(run_dir)
    arrays: dict[str, np.ndarray] = {}
    structure = _encode(tree, "", arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # object arrays were refused above: nothing here needs pickle
    data = buf.getvalue()
    atomic_write_bytes(run_dir / ARRAYS_FILE, data)
    write_json(run_dir / META_FILE, {
        "format": FORMAT,
        "version": VERSION,
        "arrays_file": ARRAYS_FILE,
        "arrays_sha256": hashlib.sha256(data).hexdigest(),
        "meta": meta,
        "structure": structure,
    })
    return run_dir / META_FILE


def load_checkpoint(run_dir: str | Path) -> tuple[dict, dict]:
    """(meta, tree) of the checkpoint in ``run_dir``; ``CheckpointError`` if unusable."""
    run_dir = Path(run_dir)
    meta_path = run_dir / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"no checkpoint in {str(run_dir)!r} ({META_FILE} not found)")
    try:
        doc = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{str(meta_path)!r} is not valid JSON (truncated or modified?)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{str(meta_path)!r} is not a tinylm checkpoint")
    if doc.get("version") != VERSION:
        raise CheckpointError(
            f"{str(meta_path)!r} has checkpoint format version {doc.get('version')!r}; "
            f"this tinylm reads version {VERSION}"
        )
    arrays_path = run_dir / ARRAYS_FILE
    try:
        data = arrays_path.read_bytes()
    except OSError:
        raise CheckpointError(f"checkpoint arrays {str(arrays_path)!r} are missing or unreadable") from None
    if hashlib.sha256(data).hexdigest() != doc.get("arrays_sha256"):
        raise CheckpointError(
            f"checkpoint arrays {str(arrays_path)!r} do not match the SHA-256 recorded in "
            f"{META_FILE}: the file is truncated or was modified"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        tree = _decode(doc["structure"], arrays)
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile):
        raise CheckpointError(f"the checkpoint in {str(run_dir)!r} is malformed") from None
    meta = doc.get("meta")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{str(meta_path)!r} has no metadata")
    return meta, tree


# --- the tree codec ------------------------------------------------------------------

def _encode(obj: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, np.ndarray):
        return {"array": _store(arrays, path, obj)}
    if _is_tensor(obj):
        return {"tensor": _store(arrays, path, obj.detach().cpu().numpy())}
    if isinstance(obj, np.generic):
        return {"value": obj.item()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"cannot save a dict key of type {type(k).__name__}")
            items.append([k, _encode(v, f"{path}/{k}" if path else str(k), arrays)])
        return {"dict": items}
    if isinstance(obj, (list, tuple)):
        kind = "list" if isinstance(obj, list) else "tuple"
        return {kind: [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(obj)]}
    raise TypeError(f"cannot save an object of type {type(obj).__name__} at {path!r}")


def _store(arrays: dict[str, np.ndarray], path: str, value: np.ndarray) -> str:
    if value.dtype.hasobject:
        raise TypeError(f"cannot save an array of Python objects at {path!r} (it would need pickle)")
    name = path or "root"
    while name in arrays:
        name += "_"
    arrays[name] = value
    return name


def _decode(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError("bad structure node")
    (kind, body), = node.items()
    if kind == "value":
        return body
    if kind == "array":
        return arrays[body]
    if kind == "tensor":
        import torch

        return torch.from_numpy(np.array(arrays[body]))
    if kind == "dict":
        return {k: _decode(v, arrays) for k, v in body}
    if kind == "list":
        return [_decode(v, arrays) for v in body]
    if kind == "tuple":
        return tuple(_decode(v, arrays) for v in body)
    raise ValueError(f"unknown structure node {kind!r}")


def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")
