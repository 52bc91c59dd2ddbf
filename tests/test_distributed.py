"""Data-parallel training: a batch in parts adds up to the whole batch's step, across
micro-batches in one process and across processes started by torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from tinylm import data, distributed, settings
from tinylm.batches import split_for
from tinylm.errors import ConfigError
from tinylm.layers.base import dropout_mask
from tinylm.models import ModelConfig, build_model
from tinylm.rng import RNG
from tinylm.train import TrainConfig, Trainer
from test_cli_neural import read_metrics

torch = pytest.importorskip("torch")

LINES = data.read_lines(data.default_dataset())
SPLIT = data.split_lines(LINES, seed=42)
TOKENIZER = data.Tokenizer.from_lines(LINES)
MLP = ["--model", "mlp", "--backend", "torch", "--context", "3", "--n-embd", "8",
       "--n-hidden", "64", "--batch-size", "32", "--eval-every", "50",
       "--eval-train-batches", "5", "-n", "0"]


# --- the parts of a batch ----------------------------------------------------------------------

def test_world_from_torchruns_environment():
    assert distributed.from_environment({}) == distributed.World()
    world = distributed.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.main) == (1, 2, 1, False)
    assert str(world) == "process 1 of 2"
    for env in ({"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(ConfigError):
            distributed.from_environment(env)


def test_the_parts_cover_the_batch_once_in_order():
    for n, size, micro in [(32, 2, 1), (32, 2, 4), (10, 3, 1), (7, 1, 7), (33, 2, 2)]:
        rows = []
        for rank in range(size):
            rows += [list(range(n))[s] for s in
                     distributed.parts(n, distributed.World(rank, size), micro)]
        assert [i for part in rows for i in part] == list(range(n))
        assert max(map(len, rows)) - min(map(len, rows)) <= 1
    with pytest.raises(ConfigError, match="cannot be split into 8 parts"):
        distributed.parts(4, distributed.World(0, 2), 4)


def test_each_process_takes_its_own_gpu_and_a_device_they_cannot_share_is_refused():
    world = distributed.World(1, 2, local_rank=1)
    assert distributed.device_of(world, "cpu") == "cpu"
    assert distributed.device_of(distributed.World(), "cuda:3") == "cuda:3"
    with pytest.raises(ConfigError, match="each process takes its own GPU"):
        distributed.device_of(world, "cuda:0")
    with pytest.raises(ConfigError, match="cannot train on mps"):
        distributed.device_of(world, "mps")
    if torch.cuda.device_count() >= 2:
        assert distributed.device_of(world, "cuda") == "cuda:1"
    else:
        with pytest.raises(ConfigError, match="at most one process per GPU"):
            distributed.device_of(distributed.World(2, 3, local_rank=2), "cuda")


def test_a_process_started_without_torchrun_says_so_in_one_line():
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    env.pop("MASTER_ADDR", None)
    result = subprocess.run([sys.executable, "-m", "tinylm", "train", *MLP, "--steps", "5",
                             "-o", "/nonexistent/never"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.splitlines()
                                                  if line.startswith("tinylm: error: process 0 "
                                                                     "of 2 could not join")]


def trainer_of(values, lines=2000):
    mconfig = settings.resolve(ModelConfig, [values], vocab_size=TOKENIZER.vocab_size)
    config = settings.resolve(TrainConfig, [values])
    if mconfig.model in ("transformer", "gru", "rnn"):
        mconfig = settings.resolve(ModelConfig, [values, {"block_size": 16}],
                                   vocab_size=TOKENIZER.vocab_size)
    rng = RNG(config.seed)
    model = build_model(mconfig, config.backend, rng)
    lines3 = (SPLIT[0][:lines], SPLIT[1][:200], SPLIT[2][:200])
    splits = {name: split_for(name, data.Items(ls, TOKENIZER), mconfig, config.loader)
              for name, ls in zip(data.SPLIT_NAMES, lines3)}
    return Trainer(config, model, splits, rng)


@pytest.mark.parametrize("backend", ["torch", "torch-module"])
@pytest.mark.parametrize("model, extra", [
    ("mlp", dict(context=3, n_embd=8, n_hidden=32)),
    # rows of different lengths: each micro-batch weighs the targets it scores
    ("transformer", dict(n_embd=16, n_heads=2, n_layers=1)),
    ("gru", dict(n_embd=8, n_embd2=16)),
    # each micro-batch drops the rows of the whole batch's masks that it holds
    ("transformer", dict(n_embd=16, n_heads=2, n_layers=1, dropout=0.2)),
    ("gru", dict(n_embd=8, n_embd2=16, dropout=0.3)),
])
def test_micro_batches_add_up_to_the_whole_batch(backend, model, extra):
    values = dict(model=model, backend=backend, seed=5, batch_size=24, steps=40, lr=1e-2,
                  eval_every=20, eval_train_batches=2, **extra)
    whole = trainer_of(values).run().metrics
    parts = trainer_of({**values, "grad_accum": 4}).run().metrics
    assert worst_difference(whole, parts) < 1e-5
    assert whole != parts or model == "mlp"  # (summed in another order: rarely the same bits)


@pytest.mark.parametrize("values, message", [
    (dict(model="mlp", backend="numpy", grad_accum=2), "needs a torch backend"),
    (dict(model="bnmlp", backend="torch", grad_accum=2), "BatchNorm1d"),
    (dict(model="mlp", backend="torch", grad_accum=64, batch_size=32), "larger --batch-size"),
])
def test_a_batch_that_cannot_be_computed_in_parts_is_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        trainer_of({"steps": 5, **values}, lines=300)


def test_a_part_of_the_batch_gets_its_rows_of_the_whole_batchs_mask():
    whole_rng, part_rng = RNG(3), RNG(3)
    whole = dropout_mask(whole_rng, (10, 4, 6), 0.4)
    rows = slice(3, 7)
    part = dropout_mask(part_rng, (4, 4, 6), 0.4, part=(rows, 10))
    assert np.array_equal(part, whole[rows])
    assert part_rng.get_state() == whole_rng.get_state()  # the RNG left where the whole leaves it
    assert 0 < (whole == 0).mean() < 1


def test_a_dropout_model_reads_its_part_only_inside_computing_part():
    values = dict(model="gru", backend="torch", n_embd=8, n_embd2=16, dropout=0.3, steps=1)
    model = trainer_of(values, lines=300).model
    dropouts = [layer for layer in model._sublayers() if getattr(layer, "draws_from_rng", False)]
    assert len(dropouts) == 2
    with model.computing_part(slice(2, 5), 8):
        assert all(layer.part == (slice(2, 5), 8) for layer in dropouts)
    assert all(layer.part is None for layer in dropouts)


# --- several processes, through torchrun -------------------------------------------------------

TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun_command(nproc: int, *args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m tinylm ARGS``, with this Python."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(nproc), "-m", "tinylm", *args]


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(nproc, *args), capture_output=True, text=True,
                          timeout=timeout, env=TORCHRUN_ENV)


def worst_difference(a, b):
    assert [r.keys() for r in a] == [r.keys() for r in b]
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x
               if k != "step" and x[k] is not None)


def tinylm_lines(text: str) -> list[str]:
    """Our lines of a torchrun's output (torchrun adds its own warnings and reports)."""
    return [line for line in text.splitlines() if line.startswith("tinylm:")]


GRU_DROPOUT = ["--model", "gru", "--backend", "torch-module", "--n-embd", "8", "--n-embd2", "16",
               "--dropout", "0.3", "--batch-size", "32", "--eval-every", "50",
               "--eval-train-batches", "5", "-n", "0", "--ema", "0.95"]  # evaluating the average


@pytest.mark.parametrize("args", [MLP + ["--steps", "200"], GRU_DROPOUT + ["--steps", "100"]],
                         ids=["mlp", "gru-dropout-ema"])
def test_two_processes_compute_what_one_process_computes(tmp_path, args):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["train", *args]
    single = torchrun(1, *args, "-o", str(one))
    assert single.returncode == 0, single.stderr
    double = torchrun(2, *args, "-o", str(two))
    assert double.returncode == 0, double.stderr
    assert worst_difference(read_metrics(one), read_metrics(two)) < 1e-5
    # process 0 alone writes and prints: one run directory, one report
    assert double.stdout.count(f"training {args[2]} (") == 1
    assert "2 processes," in double.stdout
    assert double.stdout.count("done in") == 1
    assert ("the average of the weights" in double.stdout) == ("--ema" in args)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert len(read_metrics(two)) == len(read_metrics(one))


def test_a_setup_that_fails_in_one_process_stops_all_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("the user's own file\n")  # a run would overwrite it
    result = torchrun(2, "train", *MLP, "--steps", "5", "-o", str(run))
    assert result.returncode != 0
    errors = tinylm_lines(result.stderr)
    assert len(errors) == 1 and "which a run would overwrite" in errors[0], errors
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]
    assert (run / "metrics.jsonl").read_text() == "the user's own file\n"


def test_the_count_models_are_refused_under_torchrun(tmp_path):
    result = torchrun(2, "train", "-o", str(tmp_path / "run"))
    assert result.returncode != 0
    assert tinylm_lines(result.stderr) == ["tinylm: error: the n-gram models count in one pass: "
                                           "run them without torchrun"]
    assert not (tmp_path / "run").exists()


def _wait_for_step(run, step: int, proc, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (run / "manifest.json").exists():
            manifest = json.loads((run / "manifest.json").read_text())
            if manifest.get("state", {}).get("step", 0) >= step:
                return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("the run did not reach its checkpoint")


def _start(nproc: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen(torchrun_command(nproc, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV,
                            start_new_session=True)


def _workers(launcher: subprocess.Popen) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


@pytest.mark.slow
def test_a_killed_process_stops_the_job_and_the_run_resumes_with_fewer_processes(tmp_path):
    run, straight = tmp_path / "run", tmp_path / "straight"
    args = ["train", *MLP, "--steps", "4000", "--eval-every", "1000", "--checkpoint-every", "100"]
    launcher = _start(2, *args, "-o", str(run))
    _wait_for_step(run, 300, launcher)
    workers = _workers(launcher)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)  # rank 1, started second
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert any("another process of the run stopped" in line for line in tinylm_lines(err)), err
    step = json.loads((run / "manifest.json").read_text())["state"]["step"]
    assert step >= 300 and step % 100 == 0
    # the last checkpoint holds; one process continues it to the end
    resumed = subprocess.run([sys.executable, "-m", "tinylm", "train", "-o", str(run),
                              "--resume", "-n", "0"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {step} of 4000" in resumed.stdout
    done = torchrun(2, *args, "-o", str(straight))
    assert done.returncode == 0, done.stderr
    # from the checkpoint on, one process sums in another order: close, not the same bits
    assert worst_difference(read_metrics(run), read_metrics(straight)) < 1e-4


@pytest.mark.slow
def test_sigterm_stops_every_process_before_the_same_step_and_resume_is_bit_identical(tmp_path):
    run, straight = tmp_path / "run", tmp_path / "straight"
    args = ["train", *MLP, "--steps", "3000", "--eval-every", "500", "--checkpoint-every", "1000"]
    launcher = _start(2, *args, "-o", str(run))
    _wait_for_step(run, 1000, launcher)
    os.kill(launcher.pid, signal.SIGTERM)  # torchrun passes it on to every process
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert "tinylm: stopped by SIGTERM before step" in err, err
    resumed = torchrun(2, "train", "-o", str(run), "--resume", "-n", "0")
    assert resumed.returncode == 0, resumed.stderr
    done = torchrun(2, *args, "-o", str(straight))
    assert done.returncode == 0, done.stderr
    assert read_metrics(run) == read_metrics(straight)
    a = load_file(sorted(run.glob("weights-*.safetensors"))[-1])
    b = load_file(sorted(straight.glob("weights-*.safetensors"))[-1])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
