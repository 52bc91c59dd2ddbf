"""Array files: exact round trips of a tree of arrays, and refusal of damaged or crafted files."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from tinylm import checkpoint
from tinylm.errors import CheckpointError


def tree():
    rng = np.random.default_rng(0)
    return {
        "model": {"layers.0.weight": rng.normal(size=(27, 10)).astype(np.float32),
                  "layers.2.bias": rng.normal(size=200).astype(np.float32)},
        "optimizer": {"step": np.array(12, dtype=np.int64), "exp_avg.0": np.zeros((3, 2))},
    }


def test_round_trip_is_exact():
    data = checkpoint.encode(tree())
    got = checkpoint.decode(data, checkpoint.sha256(data), "test arrays")
    want = tree()
    assert got.keys() == want.keys()
    for part in want:
        assert got[part].keys() == want[part].keys()
        for name, array in want[part].items():
            assert got[part][name].dtype == array.dtype and np.array_equal(got[part][name], array)


def test_a_flat_tree_works_too():
    arrays = {"keys_0": np.arange(4), "counts_0": np.ones((4, 3))}
    data = checkpoint.encode(arrays)
    assert checkpoint.decode(data, checkpoint.sha256(data), "x").keys() == arrays.keys()


def test_object_arrays_and_bad_names_are_refused_when_saving():
    with pytest.raises(TypeError, match="pickle"):
        checkpoint.encode({"bad": np.array([object()], dtype=object)})
    with pytest.raises(TypeError, match="'/'"):
        checkpoint.encode({"a/b": np.zeros(1)})


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_bytes_are_refused(damage):
    data = checkpoint.encode(tree())
    sha = checkpoint.sha256(data)
    bad = data[: len(data) // 2] if damage == "truncate" else data[:100] + b"X" + data[101:]
    with pytest.raises(CheckpointError, match="truncated or was modified"):
        checkpoint.decode(bad, sha, "weights")


def test_a_crafted_pickle_never_runs_even_with_a_recomputed_hash(tmp_path):
    """An .npz whose array is a pickle (here one that would create a file) is refused unread."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buf = io.BytesIO()
    np.savez(buf, weight=np.array([Evil()], dtype=object), allow_pickle=True)
    data = buf.getvalue()
    with pytest.raises(CheckpointError, match="plain .npz"):
        checkpoint.decode(data, checkpoint.sha256(data), "weights")
    assert not marker.exists()


def test_not_a_zip_is_refused():
    data = b"not a zip at all"
    with pytest.raises(CheckpointError, match="plain .npz"):
        checkpoint.decode(data, checkpoint.sha256(data), "weights")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("weight.npy", b"garbage")
    with pytest.raises(CheckpointError):
        checkpoint.decode(buf.getvalue(), checkpoint.sha256(buf.getvalue()), "weights")
