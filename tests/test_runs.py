"""tinylm.runs on its own: commits, reopening, the weights files, the metrics log, the out-dir checks.

The CLI-level faults (kills, a full disk, tampering) are in test_faults.py;
these tests drive ``RunWriter`` and ``open_run`` directly, so each property
is checked at the exact moment it must hold.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tinylm import checkpoint, data, runs
from tinylm.errors import CheckpointError, ConfigError
from tinylm.models import build_model
from tinylm.rng import RNG

LINES3 = (["emma", "ava", "mia", "ella", "amelia"], ["olivia", "evelyn"], ["sophia", "harper"])


def _record(step: int) -> dict:
    return {"step": step, "loss": 1.0 / (step + 1), "lr": 0.01}


class Run:
    """A tiny neural run written through RunWriter, as the trainer would."""

    def __init__(self, out, seed: int = 1) -> None:
        self.out = out
        self.tokenizer = data.Tokenizer.from_lines([l for lines in LINES3 for l in lines])
        self.mconfig, self.config = runs.resolve_configs(
            "mlp", None, {"n_embd": 2, "n_hidden": 4, "steps": 10}, self.tokenizer.vocab_size)
        self.model = build_model(self.mconfig, "numpy", RNG(seed))
        self.base = runs.neural_settings(self.mconfig, self.config)

    def create(self) -> runs.RunWriter:
        return runs.RunWriter.create(self.out, [], self.base, self.tokenizer, "test", LINES3)

    def arrays(self, bump: float = 0.0) -> dict:
        state = {k: v + np.asarray(bump, dtype=v.dtype) for k, v in self.model.state_dict().items()}
        return {"model": state, "optimizer": {"step": np.array(0)}}

    @staticmethod
    def state(step: int) -> dict:
        return {"step": step, "rng_state": "1", "loader_position": 0}

    def commit(self, writer: runs.RunWriter, step: int, bump: float = 0.0) -> None:
        writer.commit(self.state(step), self.arrays(bump), runs.weights_name(step))


def names(out) -> list[str]:
    return sorted(os.listdir(out))


def weights(out) -> list[str]:
    return sorted(n for n in os.listdir(out) if n.startswith("weights-"))


def test_a_commit_is_read_back_whole(tmp_path):
    run = Run(tmp_path / "run")
    writer = run.create()
    records = [_record(0), _record(1)]
    for r in records:
        writer.log(r)
    run.commit(writer, 2, bump=0.5)
    writer.close()
    opened = runs.open_run(run.out)
    assert opened.kind == "neural" and opened.step == 2
    assert opened.metrics == records
    assert opened.lines3 == LINES3
    assert opened.tokenizer == run.tokenizer
    for name, array in run.arrays(0.5)["model"].items():
        assert np.array_equal(opened.arrays["model"][name], array)
        assert np.array_equal(opened.model.state_dict()[name], array)
    assert names(run.out) == [".lock", "config.json", "manifest.json", "metrics.jsonl",
                              "test.txt", "train.txt", "val.txt", "weights-000000002.safetensors"]
    # config.json says what the manifest says, for people
    config = json.loads((run.out / "config.json").read_text())
    manifest = json.loads((run.out / "manifest.json").read_text())
    assert config["model_config"] == manifest["model_config"] == run.mconfig.to_dict()


def test_records_past_the_commit_are_not_the_runs(tmp_path):
    run = Run(tmp_path / "run")
    writer = run.create()
    writer.log(_record(0))
    run.commit(writer, 1)
    writer.log(_record(1))
    writer.flush()
    with open(run.out / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 2, "lo')  # a line cut by a kill in the middle of a write
    assert runs.open_run(run.out).metrics == [_record(0)]
    writer.close()


def test_the_previous_weights_file_stays_until_the_next_commit_and_goes_at_close(tmp_path):
    run = Run(tmp_path / "run")
    writer = run.create()
    run.commit(writer, 0)
    assert weights(run.out) == ["weights-000000000.safetensors"]
    run.commit(writer, 5, 1.0)
    # a reader that read the manifest just before this commit still finds its file
    assert weights(run.out) == ["weights-000000000.safetensors", "weights-000000005.safetensors"]
    run.commit(writer, 10, 2.0)
    assert weights(run.out) == ["weights-000000005.safetensors", "weights-000000010.safetensors"]
    # a commit of the same step reuses its file: the arrays are the same
    inode = os.stat(run.out / "weights-000000010.safetensors").st_ino
    run.commit(writer, 10, 2.0)
    assert os.stat(run.out / "weights-000000010.safetensors").st_ino == inode
    writer.close()
    assert weights(run.out) == ["weights-000000010.safetensors"]
    assert runs.open_run(run.out).step == 10


def test_revert_makes_the_commit_before_the_last_the_state_again(tmp_path):
    run = Run(tmp_path / "run")
    writer = run.create()
    writer.log(_record(0))
    run.commit(writer, 1)
    writer.log(_record(1))
    run.commit(writer, 2, bump=1e30)  # the weights that turn out to diverge
    writer.revert()
    opened = runs.open_run(run.out)
    assert opened.step == 1 and opened.metrics == [_record(0)]
    assert np.array_equal(opened.arrays["model"]["layers.0.weight"],
                          run.arrays()["model"]["layers.0.weight"])
    writer.close()
    assert weights(run.out) == ["weights-000000001.safetensors"]
    assert runs.open_run(run.out).step == 1


def _reopen(out, keep=None):
    lock = runs.RunLock(out)
    opened = runs.open_run(out)
    keep = len(opened.metrics) if keep is None else keep
    return runs.RunWriter.reopen(opened, lock, {k: opened.manifest[k] for k in
                                                ("kind", "model", "model_config", "train_config")},
                                 keep)


def test_reopen_drops_the_records_past_the_commit(tmp_path):
    run = Run(tmp_path / "run")
    writer = run.create()
    for step in range(3):
        writer.log(_record(step))
    run.commit(writer, 3)
    committed = (run.out / "metrics.jsonl").read_bytes()
    for step in range(3, 6):  # steps the checkpoint does not hold, flushed, then a kill
        writer.log(_record(step))
    writer.flush()
    writer.metrics.close()
    writer.lock.release()
    assert len((run.out / "metrics.jsonl").read_bytes()) > len(committed)
    writer = _reopen(run.out)
    assert (run.out / "metrics.jsonl").read_bytes() == committed
    writer.log(_record(3))
    run.commit(writer, 4, 1.0)
    writer.close()
    assert runs.open_run(run.out).metrics == [_record(s) for s in range(4)]


def test_reopen_switches_the_manifest_before_it_cuts_the_log(tmp_path, monkeypatch):
    """An extended run drops its old test record: a kill between the two steps leaves a valid run."""
    run = Run(tmp_path / "run")
    writer = run.create()
    records = [_record(0), {"step": 1, "train_loss": 2.0, "val_loss": 2.1},
               {"step": 2, "test_loss": 2.2, "test_perplexity": 9.0}]
    for r in records:
        writer.log(r)
    run.commit(writer, 2)
    writer.close()
    seen = []
    real_truncate = os.truncate

    def truncate(path, length):
        # the moment before the cut: what a kill here would leave
        opened = runs.open_run(run.out)
        seen.append((opened.metrics, opened.manifest["metrics"]["bytes"], length))
        return real_truncate(path, length)

    monkeypatch.setattr(runs.os, "truncate", truncate)
    writer = _reopen(run.out, keep=2)
    writer.close()
    kept = b"".join((json.dumps(r) + "\n").encode() for r in records[:2])
    assert seen == [(records[:2], len(kept), len(kept))]
    assert (run.out / "metrics.jsonl").read_bytes() == kept
    assert runs.open_run(run.out).metrics == records[:2]


def test_reopen_removes_weights_no_manifest_names(tmp_path):
    run = Run(tmp_path / "run")
    writer = run.create()
    run.commit(writer, 3)
    writer.close()
    # a kill after the next weights file was written, before the manifest named it
    (run.out / "weights-000000004.safetensors").write_bytes(b"partial")
    _reopen(run.out).close()
    assert weights(run.out) == ["weights-000000003.safetensors"]


def test_a_commit_writes_the_format_its_file_name_says(tmp_path):
    """New commits are safetensors, with the tree's names flat; a name ending .npz (an n-gram
    run's model.npz) is written as an .npz."""
    from safetensors.numpy import load_file

    run = Run(tmp_path / "run")
    writer = run.create()
    run.commit(writer, 1, bump=0.25)
    flat = load_file(run.out / "weights-000000001.safetensors")
    assert sorted(flat) == sorted([f"model/{k}" for k in run.model.state_dict()]
                                  + ["optimizer/step"])
    for name, array in run.arrays(0.25)["model"].items():
        assert np.array_equal(flat[f"model/{name}"], array)
    writer.commit(run.state(2), run.arrays(0.5), "model.npz")
    assert (run.out / "model.npz").read_bytes()[:2] == b"PK"  # a zip: the .npz format
    writer.close()
    assert runs.open_run(run.out).arrays["model"]["layers.0.weight"][0, 0] == \
        run.arrays(0.5)["model"]["layers.0.weight"][0, 0]


def test_a_run_written_as_npz_opens_and_resumes_into_safetensors(tmp_path):
    """A run of an older tinylm (weights-<step>.npz) opens as it is; resumed, its next commit
    is .safetensors, and the .npz goes once no manifest names it."""
    run = Run(tmp_path / "run")
    writer = run.create()
    writer.log(_record(0))
    writer.commit(run.state(3), run.arrays(1.0), "weights-000000003.npz")  # as tinylm wrote it
    writer.close()
    assert (run.out / "weights-000000003.npz").read_bytes()[:2] == b"PK"
    opened = runs.open_run(run.out)
    assert opened.manifest["arrays"]["file"] == "weights-000000003.npz"
    for name, array in run.arrays(1.0)["model"].items():
        assert np.array_equal(opened.model.state_dict()[name], array)
    # a killed write of the older tinylm, and its leftover temporary file: both go at reopen
    (run.out / "weights-000000004.npz").write_bytes(b"partial")
    (run.out / ".weights-000000004.npz.abc123de.tmp").write_bytes(b"partial")
    writer = _reopen(run.out)
    assert weights(run.out) == ["weights-000000003.npz"]
    writer.log(_record(3))
    run.commit(writer, 4, 2.0)
    # the .npz the previous manifest named stays until the next commit or the close
    assert weights(run.out) == ["weights-000000003.npz", "weights-000000004.safetensors"]
    writer.close()
    assert weights(run.out) == ["weights-000000004.safetensors"]
    assert not any(n.endswith(".tmp") for n in names(run.out))
    opened = runs.open_run(run.out)
    assert opened.step == 4 and opened.metrics == [_record(0), _record(3)]
    for name, array in run.arrays(2.0)["model"].items():
        assert np.array_equal(opened.model.state_dict()[name], array)


def test_a_file_that_is_not_what_its_name_says_is_refused(tmp_path):
    """An .npz renamed .safetensors (hashes recomputed) is refused, not read as an .npz."""
    run = Run(tmp_path / "run")
    writer = run.create()
    run.commit(writer, 1)
    writer.close()
    manifest = json.loads((run.out / "manifest.json").read_text())
    blob = checkpoint.encode(run.arrays(), "npz")
    (run.out / manifest["arrays"]["file"]).write_bytes(blob)
    manifest["arrays"]["sha256"] = checkpoint.sha256(blob)
    (run.out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as e:
        runs.open_run(run.out)
    assert str(e.value) == (f"the run in {str(run.out)!r} cannot be used: weights-000000001."
                            f"safetensors in {str(run.out)!r} is not a plain .safetensors of "
                            "numeric arrays")


def test_the_lock_has_one_holder(tmp_path):
    run = Run(tmp_path / "run")
    writer = run.create()
    with pytest.raises(ConfigError) as e:
        runs.RunLock(run.out)
    assert str(e.value) == (f"run directory {str(run.out)!r} is in use by another tinylm process "
                            f"(pid {os.getpid()}); wait for it to finish or choose another -o")
    writer.close()
    runs.RunLock(run.out).release()


def test_close_releases_the_lock_when_the_last_flush_fails(tmp_path):
    """A full disk at the last flush: the error is raised, and the directory is free again."""
    run = Run(tmp_path / "run")
    writer = run.create()
    run.commit(writer, 0)
    writer.log(_record(0))

    class Full:
        closed = False

        def close(self):
            raise OSError(28, "No space left on device")

    real = writer.metrics
    writer.metrics = Full()
    with pytest.raises(OSError):
        writer.close()
    real.close()
    runs.RunLock(run.out).release()
    assert runs.open_run(run.out).step == 0


# --- the out-dir of a new run --------------------------------------------------------------

def test_a_new_run_dir_is_checked_without_creating_anything(tmp_path):
    out = tmp_path / "a" / "b"
    assert runs.check_new_run_dir(out, []) == out
    assert not (tmp_path / "a").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.md").write_text("mine")
    assert runs.check_new_run_dir(other, []) == other  # files a run never writes are no clash
    assert names(other) == ["notes.md"]


@pytest.mark.parametrize("name", ["train.txt", "val.txt", "test.txt", "config.json",
                                  "metrics.jsonl", "model.npz", "weights-000000001.safetensors",
                                  "weights-000000001.npz",
                                  "samples.txt", "loss.png"])
def test_a_dir_with_files_a_run_would_overwrite_is_refused(tmp_path, name):
    out = tmp_path / "ds"
    out.mkdir()
    (out / name).write_bytes(b'{"mine": 1}\n')
    with pytest.raises(ConfigError) as e:
        runs.check_new_run_dir(out, [])
    assert str(e.value) == (f"out-dir {str(out)!r} holds {name}, which a run would overwrite, "
                            "and no tinylm run: choose an empty or new directory")
    assert names(out) == [name] and (out / name).read_bytes() == b'{"mine": 1}\n'


@pytest.mark.parametrize("where", ["ds/train.txt", "ds/deeper/words.txt", "ds"])
def test_an_input_inside_the_out_dir_is_refused(tmp_path, where):
    out = tmp_path / "ds"
    (out / "deeper").mkdir(parents=True)
    path = tmp_path / where
    if not path.exists():
        path.write_text("x\n")
    for spelling in (out, tmp_path / "ds" / ".", tmp_path / "link"):
        if spelling.name == "link":
            os.symlink(out, spelling)
        with pytest.raises(ConfigError, match="is inside the out-dir"):
            runs.check_new_run_dir(spelling, [path])


def test_a_committed_run_is_refused_as_a_new_run_dir(tmp_path):
    run = Run(tmp_path / "run")
    writer = run.create()
    run.commit(writer, 0)
    writer.close()
    with pytest.raises(ConfigError) as e:
        runs.check_new_run_dir(run.out, [])
    assert str(e.value) == (f"out-dir {str(run.out)!r} already holds a trained mlp run; "
                            "continue it with --resume or choose another -o")


def test_an_unfinished_runs_own_leftovers_are_taken_over(tmp_path):
    run = Run(tmp_path / "run")
    writer = run.create()
    writer.log(_record(0))
    writer.flush()
    # killed before the first commit, in the middle of writing a weights file
    (run.out / "weights-000000000.safetensors").write_bytes(b"half")
    (run.out / ".weights-000000001.safetensors.abc123de.tmp").write_bytes(b"half")
    (run.out / "weights-000000000.npz").write_bytes(b"half")  # an older tinylm's leftovers
    (run.out / ".weights-000000001.npz.abc123de.tmp").write_bytes(b"half")
    (run.out / ".manifest.json.k2j3h4g5.tmp").write_bytes(b"{")
    writer.metrics.close()
    writer.lock.release()
    assert runs.check_new_run_dir(run.out, []) == run.out
    writer = run.create()
    assert (run.out / "metrics.jsonl").read_bytes() == b""
    run.commit(writer, 0)
    writer.close()
    assert names(run.out) == [".lock", "config.json", "manifest.json", "metrics.jsonl",
                              "test.txt", "train.txt", "val.txt", "weights-000000000.safetensors"]


def test_a_run_killed_while_writing_its_splits_is_its_own_leftover(tmp_path, monkeypatch):
    """config.json marks the directory as the run's before any split is written."""
    run = Run(tmp_path / "run")
    real = runs.atomic_write_bytes

    class Killed(BaseException):
        pass

    def write(path, blob):
        if path.name == "val.txt":
            raise Killed
        return real(path, blob)

    monkeypatch.setattr(runs, "atomic_write_bytes", write)
    with pytest.raises(Killed):
        run.create()
    monkeypatch.setattr(runs, "atomic_write_bytes", real)
    assert runs.check_new_run_dir(run.out, []) == run.out
    writer = run.create()
    run.commit(writer, 0)
    writer.close()
    assert runs.open_run(run.out).lines3 == LINES3


def test_open_run_names_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        runs.open_run(tmp_path / "none")
    run = Run(tmp_path / "run")
    writer = run.create()
    with pytest.raises(CheckpointError, match="manifest.json not found"):
        runs.open_run(run.out)
    run.commit(writer, 0)
    writer.close()
    (run.out / "test.txt").unlink()
    with pytest.raises(CheckpointError) as e:
        runs.open_run(run.out)
    assert str(e.value) == f"the run in {str(run.out)!r} cannot be used: test.txt is missing or unreadable"
