"""Array files: exact round trips of a tree of arrays (.safetensors and .npz), and refusal of
damaged or crafted files."""

from __future__ import annotations

import io
import json
import struct
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


@pytest.mark.parametrize("fmt", ["safetensors", "npz", None])
def test_round_trip_is_exact(fmt):
    data = checkpoint.encode(tree(), fmt or "safetensors")
    got = checkpoint.decode(data, checkpoint.sha256(data), "test arrays", fmt)  # None: sniffed
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
    for fmt in ("npz", None):  # None: told by its bytes, a zip
        with pytest.raises(CheckpointError, match="plain .npz"):
            checkpoint.decode(data, checkpoint.sha256(data), "weights", fmt)
    assert not marker.exists()


def test_not_a_zip_is_refused():
    data = b"not a zip at all"
    with pytest.raises(CheckpointError, match="plain .npz"):
        checkpoint.decode(data, checkpoint.sha256(data), "weights", "npz")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("weight.npy", b"garbage")
    with pytest.raises(CheckpointError):
        checkpoint.decode(buf.getvalue(), checkpoint.sha256(buf.getvalue()), "weights")


def test_the_safetensors_names_are_flat_and_torch_reads_them():
    """The standard reader sees ``model/...``, ``optimizer/...``: the levels joined by '/'."""
    from safetensors.numpy import load

    data = checkpoint.encode(tree())
    flat = load(data)
    assert sorted(flat) == ["model/layers.0.weight", "model/layers.2.bias",
                            "optimizer/exp_avg.0", "optimizer/step"]
    assert flat["optimizer/step"].shape == () and flat["optimizer/step"] == 12
    assert checkpoint.flatten(tree()).keys() == flat.keys()
    torch = pytest.importorskip("torch")
    from safetensors.torch import load as torch_load

    got = torch_load(data)["model/layers.0.weight"]
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), tree()["model"]["layers.0.weight"])


def test_encoding_is_deterministic():
    """Unlike an .npz (whose zip entries carry their write time): same arrays, same bytes."""
    assert checkpoint.encode(tree()) == checkpoint.encode(tree())


def _safetensors(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


@pytest.mark.parametrize("data", [
    b"short",
    b"not a safetensors file, but long enough",
    struct.pack("<Q", 10**9) + b"{}",                                          # header past the end
    _safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
    _safetensors({"w": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"\0" * 2),
    _safetensors(["a", "list"], b""),
])
def test_a_broken_or_foreign_safetensors_is_refused(data):
    with pytest.raises(CheckpointError, match="not a plain .safetensors of numeric arrays"):
        checkpoint.decode(data, checkpoint.sha256(data), "weights", "safetensors")


def test_a_file_is_read_in_the_format_its_name_says():
    """A .safetensors file must hold safetensors: an .npz under that name is refused unread."""
    data = checkpoint.encode(tree(), "npz")
    assert checkpoint.format_of("weights-000000001.npz") == "npz"
    assert checkpoint.format_of("weights-000000001.safetensors") == "safetensors"
    with pytest.raises(CheckpointError, match="plain .safetensors"):
        checkpoint.decode(data, checkpoint.sha256(data), "weights",
                          checkpoint.format_of("weights-000000001.safetensors"))
    with pytest.raises(CheckpointError, match="not an array file"):
        checkpoint.format_of("weights-000000001.pt")


def test_clashing_names_are_refused():
    from safetensors.numpy import save

    data = save({"model": np.zeros(1, np.float32), "model/w": np.zeros(1, np.float32)})
    with pytest.raises(CheckpointError, match="clashing"):
        checkpoint.decode(data, checkpoint.sha256(data), "weights")


def test_unsupported_dtypes_are_refused_when_saving():
    with pytest.raises(TypeError, match="safetensors"):
        checkpoint.encode({"c": np.zeros(2, dtype=np.complex64)})
