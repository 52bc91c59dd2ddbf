"""Checkpoints: exact round trips of nested state, and refusal of damaged files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinylm.checkpoint import ARRAYS_FILE, META_FILE, has_checkpoint, load_checkpoint, save_checkpoint
from tinylm.errors import CheckpointError


def tree():
    rng = np.random.default_rng(0)
    return {
        "model": {"layers.0.weight": rng.normal(size=(27, 10)).astype(np.float32),
                  "layers.2.bias": rng.normal(size=200).astype(np.float32)},
        "optimizer": {"step": np.array(12, dtype=np.int64), "exp_avg.0": np.zeros((3, 2)),
                      "nested": {0: [1, 2.5, None, "x", True], "k": (np.arange(3), 2**63 + 5)}},
    }


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    else:
        assert a == b


def test_round_trip_is_exact(tmp_path):
    meta = {"step": 12, "rng_state": str(2**64 - 1), "metrics": [{"step": 0, "loss": 0.1 + 0.2}]}
    assert not has_checkpoint(tmp_path)
    save_checkpoint(tmp_path, meta, tree())
    assert has_checkpoint(tmp_path)
    got_meta, got_tree = load_checkpoint(tmp_path)
    assert got_meta == meta
    assert_same(got_tree, tree())


def test_torch_tensors_come_back_as_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    t = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 5)}}}
    save_checkpoint(tmp_path, {}, t)
    _, got = load_checkpoint(tmp_path)
    assert torch.equal(got["state"][0]["exp_avg"], t["state"][0]["exp_avg"])
    assert got["state"][0]["step"].dtype == torch.float32


def test_arrays_are_a_plain_npz_without_pickles(tmp_path):
    save_checkpoint(tmp_path, {}, tree())
    with np.load(tmp_path / ARRAYS_FILE, allow_pickle=False) as npz:
        assert "model/layers.0.weight" in npz.files


def test_object_arrays_are_not_saved(tmp_path):
    with pytest.raises(TypeError, match="pickle"):
        save_checkpoint(tmp_path, {}, {"bad": np.array([object()], dtype=object)})


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "swap"])
def test_damaged_arrays_are_refused(tmp_path, damage):
    save_checkpoint(tmp_path, {"step": 1}, tree())
    path = tmp_path / ARRAYS_FILE
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        path.write_bytes(blob[:100] + bytes([blob[100] ^ 1]) + blob[101:])
    elif damage == "delete":
        path.unlink()
    else:  # a valid npz from another save
        other = tmp_path / "other"
        other.mkdir()
        t = tree()
        t["model"]["layers.2.bias"] += 1
        save_checkpoint(other, {"step": 1}, t)
        path.write_bytes((other / ARRAYS_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="checkpoint arrays"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("edit", ["truncate", "format", "version", "structure"])
def test_damaged_metadata_is_refused(tmp_path, edit):
    save_checkpoint(tmp_path, {"step": 1}, tree())
    path = tmp_path / META_FILE
    text = path.read_text()
    doc = json.loads(text)
    if edit == "truncate":
        path.write_text(text[: len(text) // 2])
    else:
        if edit == "format":
            doc["format"] = "something-else"
        elif edit == "version":
            doc["version"] = 99
        else:
            doc["structure"]["dict"][0][1] = {"array": "no-such-array"}
        path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
