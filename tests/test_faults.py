"""Fault injection: the run directory keeps its promises under kills, full disks and tampering.

The cases, as the issue numbers them:

1. an input inside -o is refused: its bytes unchanged, nothing created;
2. kill -9 at every write/rename boundary of a save (new, resumed, extended
   and n-gram runs): the directory resumes to the bit-identical result of a
   straight run, or is refused with one line; sample/eval work or say one line;
3. real SIGTERM and kill -9 at random moments of a training subprocess;
4. binding and locking: another kind of run, a second writer, a dead
   writer's lock, an edited config.json, a swapped split, tampered metrics,
   a pickle payload in place of the weights;
5. one line and exit 2, never a traceback: an unwritable -o, a full disk at
   every write, a diverging learning rate, a diagnose that fails;
6. garbage refused: --resume with fewer steps; resume updates config.json;
7. a large alphabet's bigram heatmap stays bounded.

Kills and full disks at the K-th boundary are injected by tests/fault_driver.py,
which forks one tinylm process per command (see its docstring). Real signals
go to real ``tinylm`` subprocesses. The driver and the subprocesses hide
matplotlib, so that no process spends a second drawing loss.png (a run then
prints a note instead): plots are outputs, not part of the transaction.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinylm import runs
from tinylm.cli import main

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "fault_driver.py"
SRC = TESTS.parent / "src"

WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "harper",
         "evelyn", "abigail", "emily", "ella"] * 3
SMALL = ["--model", "mlp", "--n-embd", "4", "--n-hidden", "16", "--steps", "30",
         "--checkpoint-every", "10", "--eval-every", "10", "-n", "0"]
NGRAM = ["--order", "3", "-n", "2"]
# about a second of training: long enough to be hit at a random moment
LONG = ["--model", "mlp", "--n-embd", "4", "--n-hidden", "16", "--steps", "600",
        "--checkpoint-every", "25", "--eval-every", "200", "-n", "0"]

CLI = ("import sys; sys.modules['matplotlib'] = None; "
       "from tinylm.cli import main; sys.exit(main())")


# --- helpers ---------------------------------------------------------------------------------

def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


def tinylm(*argv, timeout: float = 120) -> subprocess.CompletedProcess:
    """``tinylm ARGV`` in a subprocess of its own."""
    return subprocess.run([sys.executable, "-c", CLI, *map(str, argv)], capture_output=True,
                          text=True, env=_env(), timeout=timeout)


def popen(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def drive(tmp_path: Path, commands: list[dict]) -> list[dict]:
    """Run ``commands`` through the fault driver; one result per command."""
    scratch = tmp_path / "driver"
    scratch.mkdir(exist_ok=True)
    spec = scratch / "spec.json"
    spec.write_text(json.dumps({"commands": commands, "scratch": str(scratch)}))
    done = subprocess.run([sys.executable, str(DRIVER), str(spec)], capture_output=True,
                          text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def train(words, out, *flags) -> list[str]:
    return ["train", "-i", str(words), "-o", str(out), *flags]


def resume(out, *flags) -> list[str]:
    return ["train", "-o", str(out), "--resume", "-n", "0", *flags]


def error_line(err: str) -> str:
    """The one line a refusal prints: never a traceback, never more."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinylm: error: "), err
    return lines[0]


def one_line(capsys) -> str:
    return error_line(capsys.readouterr().err)


def no_run(out) -> str:
    return (f"tinylm: error: no run in {str(out)!r} (manifest.json not found: no checkpoint "
            "was ever committed there)")


def holds_run(out, model: str) -> str:
    hint = ("continue it with --resume or choose another -o" if model != "ngram"
            else "choose another -o, or remove it first")
    return f"tinylm: error: out-dir {str(out)!r} already holds a trained {model} run; {hint}"


def cannot_use(out, what: str) -> str:
    return f"tinylm: error: the run in {str(out)!r} cannot be used: {what}"


EDITED = ("config.json says other settings than the run was trained with (manifest.json): it "
          "was edited; tinylm never changes a trained run through it; restore it, or train a "
          "new run")
FULL = "tinylm: error: cannot write or read: No space left on device"


def visible(out: Path) -> list[str]:
    return sorted(n for n in os.listdir(out) if n != ".lock")


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` but the lock (whose content is the last holder's pid)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_arrays(a[key], b[key])
        else:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def assert_same_run(out: Path, ref: Path, whole: bool = True) -> None:
    """``out`` holds, bit for bit, the run ``ref`` holds (whole: and the same files)."""
    got, want = runs.open_run(out), runs.open_run(ref)
    assert (out / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes()
    assert_same_arrays(got.arrays, want.arrays)
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (out, ref)]
    for m in manifests:
        m["arrays"].pop("sha256")  # an .npz's zip entries (model.npz) carry their write time
    assert manifests[0] == manifests[1]
    for name in ("config.json", "train.txt", "val.txt", "test.txt"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    if whole:
        assert visible(out) == visible(ref)
        for name in ("samples.txt", "grid.jsonl"):
            if (ref / name).exists():
                assert (out / name).read_bytes() == (ref / name).read_bytes(), name


@contextlib.contextmanager
def plots_hidden():
    """In this process, as in the subprocesses: no loss.png or bigram.png (a note instead)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "matplotlib", None)
        yield


@pytest.fixture
def no_plots():
    with plots_hidden():
        yield


def no_traceback(results: list[dict]) -> None:
    for r in results:
        assert "Traceback" not in r["err"], r


@pytest.fixture(scope="module")
def words(tmp_path_factory) -> Path:
    """One input for every run of this module: config.json records its path."""
    path = tmp_path_factory.mktemp("input") / "names.txt"
    path.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, words) -> dict[str, Path]:
    """A finished mlp run and an n-gram run, to be copied by the tests that spoil them."""
    base = tmp_path_factory.mktemp("trained")
    with plots_hidden():
        for name, flags in (("mlp", SMALL), ("ngram", NGRAM)):
            assert main(train(words, base / name, *flags)) == 0
    return {"mlp": base / "mlp", "ngram": base / "ngram"}


def copy_of(trained, kind: str, tmp_path: Path) -> Path:
    out = tmp_path / kind
    shutil.copytree(trained[kind], out)
    return out


# --- 1. the input is sacred ------------------------------------------------------------------

@pytest.mark.parametrize("model", [["--order", "3"], ["--model", "mlp", "--steps", "2"]],
                         ids=["ngram", "mlp"])
@pytest.mark.parametrize("name", ["train.txt", "val.txt", "test.txt", "config.json"])
def test_an_input_inside_the_out_dir_is_refused_untouched(tmp_path, capsys, words, model, name):
    ds = tmp_path / "ds"
    ds.mkdir()
    data = words.read_bytes()
    (ds / name).write_bytes(data)
    for flags in (["-i", str(ds / name)], ["--train", str(ds / name)],
                  ["--train", str(words), "--val", str(ds / name)]):
        assert main(["train", *flags, "-o", str(ds), *model]) == 2
        assert one_line(capsys) == (
            f"tinylm: error: the input {str(ds / name)!r} is inside the out-dir {str(ds)!r}; "
            "a run never writes beside its input: choose another -o")
        assert os.listdir(ds) == [name] and (ds / name).read_bytes() == data


def test_an_input_deeper_inside_the_out_dir_is_refused(tmp_path, capsys, words):
    ds = tmp_path / "ds"
    (ds / "data").mkdir(parents=True)
    inp = ds / "data" / "words.txt"
    shutil.copy(words, inp)
    os.symlink(ds, tmp_path / "link")
    for out in (ds, tmp_path / "link"):
        assert main(["train", "-i", str(inp), "-o", str(out), "--model", "mlp"]) == 2
        assert "is inside the out-dir" in one_line(capsys)
    assert snapshot(ds) == {"data/words.txt": words.read_bytes()}
    assert sorted(os.listdir(ds)) == ["data"]


# --- 2 and 5. a kill -9 or a full disk at every boundary of a save ----------------------------

def _norm(label: str) -> str:
    """A boundary's label without the random part of a temporary file's name."""
    return re.sub(r"\.[a-z0-9_]{8}\.tmp$", ".tmp", label)


SCENARIOS = ["new", "resumed", "extended", "ngram"]
KINDS = ["kill", "enospc"]


class Refs:
    """The straight runs every faulted one is compared with, and the boundaries of each command."""

    def __init__(self, words: Path, base: Path) -> None:
        self.words, self.base = words, base
        self.straight, self.ngram = base / "straight", base / "ngram"
        self.extended, self.mid = base / "extended", base / "mid"
        self.calls: dict[tuple[str, str], list[str]] = {}

    def ref(self, scenario: str) -> Path:
        return {"ngram": self.ngram, "extended": self.extended}.get(scenario, self.straight)

    def faulted(self, scenario: str, out: Path, fault: dict | None) -> dict:
        """The command under fault: a new run, a resume of ``mid``, an extension, an n-gram run."""
        if scenario in ("new", "ngram"):
            flags = NGRAM if scenario == "ngram" else SMALL
            return {"name": "faulted", "argv": train(self.words, out, *flags), "fault": fault}
        src, steps = ((self.mid, []) if scenario == "resumed"
                      else (self.straight, ["--steps", "40"]))
        return {"name": "faulted", "copy": [str(src), str(out)], "argv": resume(out, *steps),
                "fault": fault}

    def after(self, scenario: str, out: Path) -> list[dict]:
        """What a user does next: sample, eval, and resume or train anew."""
        cmds = [{"name": "sample", "argv": ["sample", "-o", str(out), "-n", "2"]},
                {"name": "eval", "argv": ["eval", "-o", str(out)]}]
        if scenario != "ngram":
            steps = ["--steps", "40"] if scenario == "extended" else []
            cmds.append({"name": "resume", "argv": resume(out, *steps)})
        if scenario in ("new", "ngram"):
            flags = NGRAM if scenario == "ngram" else SMALL
            cmds.append({"name": "fresh", "argv": train(self.words, out, *flags)})
        return cmds


@pytest.fixture(scope="module")
def refs(tmp_path_factory, words) -> Refs:
    refs = Refs(words, tmp_path_factory.mktemp("refs"))
    setup = [{"name": "straight", "argv": train(words, refs.straight, *SMALL)},
             {"name": "ngram", "argv": train(words, refs.ngram, *NGRAM)},
             {"name": "extended", "copy": [str(refs.straight), str(refs.extended)],
              "argv": resume(refs.extended, "--steps", "40")},
             # committed at step 10, the records of steps 10..19 flushed past the commit:
             # killed at the fsync of the step-20 commit
             {"name": "mid", "argv": train(words, refs.mid, *SMALL),
              "fault": {"kind": "kill", "label": "os.fsync metrics.jsonl", "nth": 3}}]
    counts = [(s, k) for s in SCENARIOS for k in KINDS]
    results = drive(refs.base, setup + [refs.faulted(s, refs.base / f"count-{s}-{k}",
                                                     {"kind": k, "k": 10 ** 9})
                                        for s, k in counts])
    no_traceback(results)
    assert all(r["rc"] == 0 for r in results if r["name"] != "mid"), results
    assert results[3]["signal"] == signal.SIGKILL
    mid = runs.open_run(refs.mid)
    assert mid.step == 10
    assert (refs.mid / "metrics.jsonl").stat().st_size > mid.manifest["metrics"]["bytes"]
    for (scenario, kind), result in zip(counts, results[len(setup):]):
        refs.calls[scenario, kind] = [_norm(c) for c in result["calls"]]
        # the driver changes nothing when it injects nothing
        assert_same_run(refs.base / f"count-{scenario}-{kind}", refs.ref(scenario))
    return refs


def sweep(tmp_path: Path, refs: Refs, scenario: str, kind: str, ks: list[int]) -> None:
    """Fault the K-th boundary for each K of ``ks``; check what each directory became."""
    calls = refs.calls[scenario, kind]
    commit_at = None  # the boundary of a new run's first manifest rename
    if scenario in ("new", "ngram"):
        mark = "os.replace manifest.json" if kind == "kill" else "os.fsync .manifest.json.tmp"
        commit_at = calls.index(mark) + 1
    commands = []
    for k in ks:
        out = tmp_path / f"k{k}"
        commands += [refs.faulted(scenario, out, {"kind": kind, "k": k}),
                     *refs.after(scenario, out)]
    results = drive(tmp_path, commands)
    no_traceback(results)
    per_k = len(refs.after(scenario, tmp_path)) + 1
    model = "ngram" if scenario == "ngram" else "mlp"
    for i, k in enumerate(ks):
        out = tmp_path / f"k{k}"
        faulted, *after = results[i * per_k:(i + 1) * per_k]
        got = {r["name"]: r for r in after}
        where = f"{kind} at boundary {k} of {len(calls)} ({calls[k - 1]})"
        if kind == "kill":
            assert faulted["signal"] == signal.SIGKILL, where
            assert [_norm(c) for c in faulted["calls"]] == calls[:k], where
        else:
            assert faulted["rc"] == 2 and error_line(faulted["err"]) == FULL, (where, faulted)
            assert [_norm(c) for c in faulted["calls"]][:k] == calls[:k], where
            assert not [n for n in faulted["listing"] if n.endswith(".tmp")], where
        committed = commit_at is None or k > commit_at
        for cmd in ("sample", "eval"):
            if committed:
                assert got[cmd]["rc"] == 0, (where, got[cmd])
            else:
                assert error_line(got[cmd]["err"]) == no_run(out), where
        if scenario == "extended":  # the state before the resume, or a later commit of it
            assert re.search(r"at step (30|40),", got["eval"]["out"]), (where, got["eval"])
        if "resume" in got:
            if committed:
                assert got["resume"]["rc"] == 0, (where, got["resume"])
            else:
                assert error_line(got["resume"]["err"]) == no_run(out), where
        if "fresh" in got:
            if committed:
                assert error_line(got["fresh"]["err"]) == holds_run(out, model), where
            else:
                assert got["fresh"]["rc"] == 0, (where, got["fresh"])
        # a committed n-gram run is final: the outputs it writes after the commit may be missing
        assert_same_run(out, refs.ref(scenario), whole=not (scenario == "ngram" and committed))


def sampled(refs: Refs, scenario: str, kind: str, n: int) -> list[int]:
    """``n`` boundaries, one drawn from each n-th of the run (a fixed draw)."""
    total = len(refs.calls[scenario, kind])
    rng = random.Random(f"{scenario}-{kind}")
    edges = [round(i * total / n) for i in range(n + 1)]
    return [rng.randint(lo + 1, hi) for lo, hi in zip(edges, edges[1:])]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kill_9_inside_a_save_leaves_a_run_that_resumes_bit_identically(tmp_path, refs,
                                                                        scenario):
    sweep(tmp_path, refs, scenario, "kill", sampled(refs, scenario, "kill", 4))


@pytest.mark.parametrize("scenario", ["new", "extended", "ngram"])
def test_a_full_disk_leaves_the_previous_state_or_nothing(tmp_path, refs, scenario):
    sweep(tmp_path, refs, scenario, "enospc", sampled(refs, scenario, "enospc", 3))


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_fault_at_every_boundary(tmp_path, refs, scenario, kind):
    total = len(refs.calls[scenario, kind])
    assert total >= 10
    sweep(tmp_path, refs, scenario, kind, list(range(1, total + 1)))


# --- 3. real signals at random moments -------------------------------------------------------

@pytest.fixture(scope="module")
def long_run(tmp_path_factory, words) -> tuple[Path, float, float]:
    """The straight LONG run: its directory, the process's seconds and the training loop's."""
    out = tmp_path_factory.mktemp("long") / "straight"
    t0 = time.perf_counter()
    done = tinylm(*train(words, out, *LONG))
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    loop = float(re.search(r"done in ([0-9.]+) s", done.stdout).group(1))
    return out, seconds, loop


def _wait_for(path: Path, p: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def _sigterm(tmp_path, capsys, words, long_run, rng: random.Random, n: int) -> None:
    straight, _, loop = long_run
    for i in range(n):
        out = tmp_path / f"term{i}"
        for attempt in range(4):  # a loaded machine may finish first: then stop sooner
            shutil.rmtree(out, ignore_errors=True)
            p = popen(*train(words, out, *LONG))
            _wait_for(out / "manifest.json", p)  # the step-0 commit: the loop is starting
            time.sleep(rng.uniform(0.05, 0.6 * loop) / 2 ** attempt)
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=60)
            if p.returncode != 0:
                break
        assert p.returncode == 143, err
        step = runs.open_run(out).step
        assert err.strip() == (f"tinylm: stopped by SIGTERM before step {step}; checkpoint saved "
                               f"in {out}; continue with: tinylm train -o {out} --resume")
        assert 0 < step < 600
        with plots_hidden():  # the directory is what is under test: read it in this process
            assert main(resume(out)) == 0
        assert f"resuming mlp (numpy, 586 parameters) at step {step} of 600" in \
            capsys.readouterr().out
        assert_same_run(out, straight)


def _kill_9(tmp_path, capsys, words, long_run, rng: random.Random, n: int) -> None:
    straight, seconds, _ = long_run
    for i in range(n):
        out = tmp_path / f"kill{i}"
        p = popen(*train(words, out, *LONG))
        time.sleep(rng.uniform(0, seconds))
        p.kill()
        p.communicate(timeout=60)
        if p.returncode == 0:  # it had finished
            assert_same_run(out, straight)
            continue
        assert p.returncode == -signal.SIGKILL
        with plots_hidden():  # the directory is what is under test: read it in this process
            if main(resume(out)) != 0:  # killed before its first commit
                assert one_line(capsys) in (
                    no_run(out), f"tinylm: error: run directory {str(out)!r} does not exist")
                assert main(train(words, out, *LONG)) == 0
        assert_same_run(out, straight)


def test_sigterm_saves_and_kill_9_loses_nothing_committed(tmp_path, capsys, words, long_run):
    rng = random.Random(1)
    _sigterm(tmp_path, capsys, words, long_run, rng, 1)
    _kill_9(tmp_path, capsys, words, long_run, rng, 2)


@pytest.mark.slow
def test_sigterm_and_kill_9_at_many_random_moments(tmp_path, capsys, words, long_run):
    rng = random.Random(2)
    _sigterm(tmp_path, capsys, words, long_run, rng, 4)
    _kill_9(tmp_path, capsys, words, long_run, rng, 12)


# --- 4. binding and the lock -----------------------------------------------------------------

def test_a_run_of_another_kind_is_refused(tmp_path, capsys, words, trained):
    for kind, other, flags in (("mlp", "ngram", NGRAM), ("ngram", "mlp", SMALL)):
        out = copy_of(trained, kind, tmp_path)
        before = snapshot(out)
        assert main(train(words, out, *flags)) == 2
        assert one_line(capsys) == holds_run(out, kind)
        assert snapshot(out) == before


def test_one_writer_at_a_time_and_a_dead_writers_lock_is_taken_over(tmp_path, capsys, words):
    out = tmp_path / "run"
    p = popen(*train(words, out, "--model", "mlp", "--n-embd", "4", "--n-hidden", "16",
                     "--steps", "1000000", "--checkpoint-every", "100", "--eval-every", "1000000",
                     "-n", "0"))
    try:
        _wait_for(out / "manifest.json", p)
        assert main(resume(out)) == 2
        assert one_line(capsys) == (
            f"tinylm: error: run directory {str(out)!r} is in use by another tinylm process "
            f"(pid {p.pid}); wait for it to finish or choose another -o")
        assert main(train(words, out, *SMALL)) == 2
        assert one_line(capsys) == holds_run(out, "mlp")
        assert main(["eval", "-o", str(out)]) == 0  # readers take no lock
        assert p.poll() is None
    finally:
        p.kill()
        p.communicate()
    assert (out / ".lock").read_text().strip() == str(p.pid)  # the dead writer's
    step = runs.open_run(out).step
    with plots_hidden():
        assert main(resume(out, "--steps", str(step + 5))) == 0
    assert runs.open_run(out).step == step + 5
    assert len([n for n in os.listdir(out) if n.startswith("weights-")]) == 1


def _set(path: tuple, value):
    def edit(config: dict) -> None:
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


@pytest.mark.parametrize("kind,edit", [
    ("ngram", _set(("ngram", "order"), 2)),
    ("ngram", _set(("ngram", "smoothing"), 1.0)),
    ("mlp", _set(("model_config", "n_hidden"), 17)),
    ("mlp", _set(("model_config", "context"), 2)),
    ("mlp", _set(("train_config", "lr"), 0.5)),
    ("mlp", _set(("vocab",), ["\n", "a"])),
], ids=["ngram-order", "ngram-smoothing", "mlp-n_hidden", "mlp-context", "mlp-lr", "mlp-vocab"])
def test_an_edited_config_is_refused(tmp_path, capsys, trained, kind, edit):
    out = copy_of(trained, kind, tmp_path)
    config = json.loads((out / "config.json").read_text())
    edit(config)
    (out / "config.json").write_text(json.dumps(config))
    before = snapshot(out)
    for argv in (["sample", "-o", str(out)], ["eval", "-o", str(out)], resume(out),
                 ["diagnose", "-o", str(out)]):
        assert main(argv) == 2
        assert one_line(capsys) == cannot_use(out, EDITED)
    assert snapshot(out) == before


def test_config_json_is_for_people_the_manifest_is_the_run(tmp_path, trained, no_plots):
    """An edited --steps (which --resume may change) is ignored; resume writes config.json anew."""
    out = copy_of(trained, "mlp", tmp_path)
    original = (out / "config.json").read_bytes()
    config = json.loads(original)
    config["train_config"]["steps"] = 999
    (out / "config.json").write_text(json.dumps(config))
    metrics = (out / "metrics.jsonl").read_bytes()
    assert main(resume(out)) == 0
    assert (out / "config.json").read_bytes() == original
    assert (out / "metrics.jsonl").read_bytes() == metrics


@pytest.mark.parametrize("kind", ["mlp", "ngram"])
def test_a_swapped_split_is_refused(tmp_path, capsys, trained, kind, no_plots):
    out = copy_of(trained, kind, tmp_path)
    train_txt, val_txt = (out / "train.txt").read_bytes(), (out / "val.txt").read_bytes()
    for first, second, named in (("val.txt", train_txt, "val.txt"),
                                 ("train.txt", val_txt, "train.txt")):
        (out / first).write_bytes(second)
        for argv in (["sample", "-o", str(out)], ["eval", "-o", str(out)], resume(out)):
            assert main(argv) == 2
            assert one_line(capsys) == cannot_use(
                out, f"{named} is not the split the run was trained on (modified?)")


@pytest.mark.parametrize("kind", ["mlp", "ngram"])
def test_the_committed_metrics_are_bound(tmp_path, capsys, trained, kind, no_plots):
    out = copy_of(trained, kind, tmp_path)
    path = out / "metrics.jsonl"
    good = path.read_bytes()
    first, rest = good.split(b"\n", 1)
    changed = re.sub(rb"\d(?=[,}])", lambda m: b"7" if m.group() != b"7" else b"8", first, 1)
    assert changed != first
    for spoiled in (changed + b"\n" + rest, good[:-1], good[: good.rindex(b"\n", 0, -1) + 1]):
        path.write_bytes(spoiled)
        for argv in (["sample", "-o", str(out)], ["eval", "-o", str(out)], resume(out)):
            assert main(argv) == 2
            assert one_line(capsys) == cannot_use(
                out, "metrics.jsonl does not hold the records the run committed (modified?)")
    # what lies past the commit is no record of the run: read past, dropped on resume
    path.write_bytes(good + b'{"step": 99, "loss": 1.0, "l')
    assert main(["eval", "-o", str(out)]) == 0
    if kind == "mlp":
        assert main(resume(out)) == 0
        assert path.read_bytes() == good


class Payload:
    """Unpickling this creates ``marker``: what a crafted weights file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["mlp", "ngram"])
@pytest.mark.parametrize("form", ["npz", "pickle", "npy"])
def test_a_crafted_weights_file_is_refused_and_never_runs(tmp_path, capsys, trained, kind, form):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()  # the payload is live: loading it with pickle runs code
    marker = tmp_path / "marker"
    out = copy_of(trained, kind, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    name = manifest["arrays"]["file"]
    if form == "npz":
        buf = io.BytesIO()
        np.savez(buf, **{"model/layers.0.weight": np.array([Payload(marker)], dtype=object)})
        blob = buf.getvalue()
    elif form == "pickle":
        blob = pickle.dumps({"model": Payload(marker)})
    else:  # a plain array, but no file of named arrays
        buf = io.BytesIO()
        np.save(buf, np.zeros(3))
        blob = buf.getvalue()
    (out / name).write_bytes(blob)
    manifest["arrays"]["sha256"] = hashlib.sha256(blob).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    commands = [["sample", "-o", str(out)], ["eval", "-o", str(out)], resume(out)]
    if kind == "mlp":
        commands.append(["diagnose", "-o", str(out)])
    for argv in commands:
        assert main(argv) == 2
        assert one_line(capsys) == cannot_use(
            out, f"{name} in {str(out)!r} is not a plain {Path(name).suffix} of numeric arrays")
    assert not marker.exists()
    assert not (out / "diagnostics").exists()


# --- 5. one line and exit 2 where one line is promised ---------------------------------------

@pytest.mark.parametrize("model", [NGRAM, SMALL], ids=["ngram", "mlp"])
def test_an_unwritable_out_dir_is_one_line(tmp_path, capsys, monkeypatch, words, model):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(train(words, afile / "run", *model)) == 2
    assert one_line(capsys) == (f"tinylm: error: out-dir {str(afile / 'run')!r}: "
                                f"{str(afile)!r} is not a directory")
    assert afile.read_text() == "x"

    # a parent the user may not write: the new directory cannot be made
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if tmp_path in self.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    out = tmp_path / "locked" / "run"
    assert main(train(words, out, *model)) == 2
    assert one_line(capsys) == f"tinylm: error: cannot write or read {str(out)!r}: Permission denied"
    assert not (tmp_path / "locked").exists()
    monkeypatch.undo()

    # a directory the user may not write into
    out = tmp_path / "readonly"
    out.mkdir()
    real_open = os.open

    def os_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).parent == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    assert main(train(words, out, *model)) == 2
    monkeypatch.undo()
    assert one_line(capsys) == (f"tinylm: error: cannot write or read {str(out / '.lock')!r}: "
                                "Permission denied")
    assert os.listdir(out) == []


TEXT_FILES = ("*.json", "*.jsonl", "*.txt")


@pytest.mark.parametrize("flags", [[], ["--checkpoint-every", "1"], ["--diagnose-every", "1"],
                                   ["--eval-every", "1", "--checkpoint-every", "1"]],
                         ids=["default", "checkpoint-every-1", "diagnose-every-1", "eval-every-1"])
def test_a_diverging_run_stops_with_one_line_and_writes_no_nan(tmp_path, capsys, words, flags, no_plots):
    out = tmp_path / "run"
    argv = train(words, out, "--model", "mlp", "--n-embd", "4", "--n-hidden", "16", "--steps",
                 "30", "-n", "0", "--lr", "1e300", *flags)
    assert main(argv) == 2
    line = one_line(capsys)
    assert re.fullmatch(r"tinylm: error: the (training loss became nan at|weights stopped being "
                        r"finite numbers by) step [1-9]\d*: the learning rate \(\S+\) is probably "
                        r"too large; the run keeps its last checkpoint", line), line
    for pattern in TEXT_FILES:
        for path in out.glob(pattern):
            text = path.read_text()
            assert "NaN" not in text and "Infinity" not in text, path
    run = runs.open_run(out)
    assert all(np.isfinite(v).all() for v in run.arrays["model"].values())
    assert all(np.isfinite(v).all() for r in run.metrics for v in r.values() if v is not None)


@pytest.mark.parametrize("lr", ["1e300", "1e37", "1e35"])
def test_the_checkpoint_a_diverged_run_keeps_is_not_diverged(tmp_path, capsys, words, lr, no_plots):
    """eval and sample of what a diverged run kept: finite losses.

    With a checkpoint at every step, the weights that diverge are committed
    (they are finite) before the step that finds their loss is not.
    """
    out = tmp_path / "run"
    assert main(train(words, out, "--model", "mlp", "--n-embd", "4", "--n-hidden", "16",
                      "--steps", "30", "-n", "0", "--lr", lr, "--checkpoint-every", "1",
                      "--eval-every", "1")) == 2
    assert "the run keeps its last checkpoint" in one_line(capsys)
    assert main(["eval", "-o", str(out)]) == 0
    printed = capsys.readouterr()
    losses = [float(x) for x in re.findall(r"loss (\S+),", printed.out)]
    assert len(losses) == 3 and all(np.isfinite(losses)), printed.out
    assert printed.err == ""
    run = runs.open_run(out)
    assert run.step < 30 and all(np.isfinite(r.get("loss", 0)) for r in run.metrics)
    assert main(["sample", "-o", str(out), "-n", "5"]) == 0
    printed = capsys.readouterr()
    assert len([l for l in printed.out.splitlines() if l.startswith("  ")]) == 5
    assert printed.err == ""


def test_diagnose_that_fails_leaves_no_diagnostics_dir(tmp_path, capsys, trained, monkeypatch):
    ngram = copy_of(trained, "ngram", tmp_path)
    assert main(["diagnose", "-o", str(ngram)]) == 2
    assert one_line(capsys) == (f"tinylm: error: {str(ngram)!r} holds an n-gram run: it has no "
                                "layers to diagnose")
    assert not (ngram / "diagnostics").exists()
    mlp = copy_of(trained, "mlp", tmp_path)
    (mlp / "val.txt").write_text("x\n")
    assert main(["diagnose", "-o", str(mlp)]) == 2
    assert "val.txt is not the split" in one_line(capsys)
    assert not (mlp / "diagnostics").exists()
    shutil.copy(trained["mlp"] / "val.txt", mlp / "val.txt")
    from tinylm import diagnostics
    from tinylm.errors import ConfigError

    def no_matplotlib():
        raise ConfigError("plots need matplotlib: pip install 'tinylm[plot]'")

    monkeypatch.setattr(diagnostics, "headless_pyplot", no_matplotlib)
    assert main(["diagnose", "-o", str(mlp)]) == 2
    assert one_line(capsys) == "tinylm: error: plots need matplotlib: pip install 'tinylm[plot]'"
    assert not (mlp / "diagnostics").exists()


def test_diagnose_that_fails_mid_way_leaves_no_partial_dir(tmp_path, capsys, trained,
                                                           monkeypatch):
    pytest.importorskip("matplotlib")
    from tinylm import diagnostics

    out = copy_of(trained, "mlp", tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(diagnostics, "plot_gradient_histograms", full)
    assert main(["diagnose", "-o", str(out)]) == 2
    assert one_line(capsys) == FULL
    assert not (out / "diagnostics").exists()


# --- 6. garbage refused ----------------------------------------------------------------------

def test_resume_to_fewer_steps_is_refused_and_changes_nothing(tmp_path, capsys, words, no_plots):
    out = tmp_path / "run"
    assert main(train(words, out, "--model", "mlp", "--n-embd", "4", "--n-hidden", "16",
                      "--steps", "300", "--eval-every", "100", "-n", "0")) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert main(resume(out, "--steps", "100")) == 2
    assert one_line(capsys) == ("tinylm: error: --steps 100 is fewer than the 300 steps this run "
                                "has done; give more steps to extend it")
    assert snapshot(out) == before
    runs.RunLock(out).release()  # and the lock is free again

    assert main(resume(out, "--steps", "320")) == 0
    config = json.loads((out / "config.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert config["train_config"]["steps"] == manifest["train_config"]["steps"] == 320
    run = runs.open_run(out)
    assert run.step == 320 and run.metrics[-1]["step"] == 320
    assert [r["step"] for r in run.metrics if "test_loss" in r] == [320]


# --- 7. a large alphabet -------------------------------------------------------------------

def _limit_memory() -> None:  # pragma: no cover (runs in the child)
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def test_a_bigram_heatmap_of_3000_characters_is_bounded(tmp_path):
    pytest.importorskip("matplotlib")
    rng = random.Random(7)
    chars = [chr(0x4E00 + i) for i in range(3000)]
    rng.shuffle(chars)
    lines = ["".join(chars[i:i + 6]) for i in range(0, 3000, 6)]
    lines += ["".join(rng.choice(chars) for _ in range(rng.randint(3, 8))) for _ in range(400)]
    rng.shuffle(lines)
    inp = tmp_path / "cjk.txt"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", "import sys; from tinylm.cli import main; "
                           "sys.exit(main())", "train", "-i", str(inp), "-o", str(out),
                           "--order", "2", "-n", "0"], capture_output=True, text=True,
                          env=_env(), timeout=600, preexec_fn=_limit_memory)
    assert done.returncode == 0, done.stderr[-2000:]
    png = out / "bigram.png"
    assert (png.exists() and png.stat().st_size < 5 << 20) or "note: bigram.png" in done.stdout


# --- signals in every phase of a text run (--format text) -------------------------------------

# stopping takes a chunk of work at the most (a fraction of a second); the bound here only
# separates "stopped at once" from "ran the phase to its end", which takes far longer
STOPPED_AT_ONCE = 10.0


@pytest.fixture(scope="module")
def long_text(tmp_path_factory) -> Path:
    """600,000 characters of indented text: an exact evaluation of it takes tens of seconds."""
    path = tmp_path_factory.mktemp("text") / "doc.txt"
    lines = [f"{' ' * (i % 8)}line {i}\tof the {'document' if i % 3 else 'text'} {i * 7919 % 997}"
             for i in range(20_000)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sigterm_during_an_evaluation_stops_at_once_and_the_run_resumes(tmp_path, long_text):
    out = tmp_path / "run"
    flags = ["--format", "text", "-i", long_text, "-o", out, "--model", "transformer",
             "--n-embd", "32", "--n-layers", "2", "--eval-tokens", "10000000", "--steps", "2",
             "-n", "0"]
    p = popen("train", *flags)
    _wait_for(out / "manifest.json", p)  # step 0 committed: the step-0 evaluation is running
    time.sleep(0.5)
    sent = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    took = time.monotonic() - sent
    assert p.returncode == 143, err
    assert took < STOPPED_AT_ONCE, f"the evaluation went on for {took:.1f} s after SIGTERM"
    assert err.strip().endswith(f"continue with: tinylm train -o {out} --resume")
    assert runs.open_run(out).step == 0
    done = tinylm("train", "-o", out, "--resume", "-n", "0", "--eval-tokens", "2000", timeout=300)
    assert done.returncode == 0, done.stderr
    assert runs.open_run(out).step == 2


def test_sigterm_while_a_large_text_is_prepared_writes_nothing(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"def f(x):\n\treturn x\n" * 4_000_000)  # 84 MB: seconds of preparing
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    out = tmp_path / "run"
    p = popen("train", "--format", "text", "-i", big, "-o", out, "--model", "mlp")
    time.sleep(1.0)
    sent = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    took = time.monotonic() - sent
    if p.returncode == 143 and not (out / "manifest.json").exists():
        assert err.strip() == "tinylm: stopped by SIGTERM"
        assert took < STOPPED_AT_ONCE
    else:  # a fast machine had prepared it and started: then training stopped as it does
        assert p.returncode == 143 and "--resume" in err
    assert hashlib.sha256(big.read_bytes()).hexdigest() == digest  # the input is untouched


def test_sigterm_during_a_long_sample_stops_at_once_and_changes_nothing(tmp_path, long_text):
    out = tmp_path / "run"
    done = tinylm("train", "--format", "text", "-i", long_text, "-o", out, "--model", "mlp",
                  "--steps", "2", "--eval-tokens", "1000", "-n", "0")
    assert done.returncode == 0, done.stderr
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    p = popen("sample", "-o", out, "--tokens", "10000000")
    time.sleep(1.5)
    sent = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and err.strip() == "tinylm: stopped by SIGTERM"
    assert time.monotonic() - sent < STOPPED_AT_ONCE
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before
