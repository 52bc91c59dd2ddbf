"""The CUDA path, proven on a GPU: training, precisions, resume, sampling and NCCL.

Every test here is marked ``cuda`` and skips with "needs a CUDA GPU" where
PyTorch sees none; on a machine with one they run in the default suite
(``python -m pytest``), and ``python -m pytest -q -m cuda tests/test_cuda.py``
runs them alone (benchmarks/gpu_check.sh does, among its checks). Sizes are
tiny: a few dozen steps of a 2-block Transformer on the bundled names.

What float32 on a GPU is held to: the same metrics as the CPU within 1e-4
(the backends agree within 1e-5 on the CPU; TensorFloat-32 matmuls, with their
10-bit mantissa, would miss it by an order of magnitude), and the same bits
from the same run twice, which a bit-identical resume rests on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tinylm import data, runs
from tinylm.cli import main
from tinylm.rng import RNG
from tinylm.sample import sample_items, sample_tokens
from test_cli_neural import interrupted_at, read_metrics
from test_devices import check_float16_resume

try:
    import torch
except ImportError:  # a test extra: without it there is no GPU path either
    torch = None

CUDA = torch is not None and torch.cuda.is_available()
DEVICE = "cuda"
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]

NAMES = str(data.default_dataset())
# a 2-block Transformer on the names: the block size is the longest name + 1 (16)
TRANSFORMER = ["-i", NAMES, "--model", "transformer", "--n-embd", "16", "--n-layers", "2",
               "--n-heads", "2", "--batch-size", "32", "--lr", "0.01", "--eval-every", "20",
               "--eval-train-batches", "5", "-n", "0"]
# the MLP of tests/test_devices.py, whose float16 resume on the CPU this mirrors
SMALL = ["--model", "mlp", "--context", "3", "--n-embd", "8", "--n-hidden", "32",
         "--batch-size", "32", "--eval-every", "50", "--eval-train-batches", "5", "-n", "0"]
SMALL_TRANSFORMER = ["--model", "transformer", "--n-embd", "16", "--n-layers", "2", "--n-heads",
                     "2", "--batch-size", "8", "--lr", "0.01", "--eval-every", "10", "-n", "0"]
# GPU float32 against the CPU's: rounding only, no TF32 (see the module's docstring)
GPU_TOLERANCE = 1e-4
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def worst_difference(a: list[dict], b: list[dict]) -> float:
    """The largest difference of two runs' metrics records, which must have the same keys."""
    assert [r.keys() for r in a] == [r.keys() for r in b]
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x
               if k != "step" and x[k] is not None)


def weights(run) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(sorted(run.glob("weights-*.safetensors"))[-1])


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def tf32_off() -> bool:
    """Whether float32 matmuls on the GPU are float32 (PyTorch's default: tinylm sets nothing)."""
    return (torch.backends.cuda.matmul.allow_tf32 is False
            and torch.get_float32_matmul_precision() == "highest")


# --- float32: the GPU computes what the CPU computes ---------------------------------------

@pytest.mark.parametrize("backend", ["torch", "torch-module"])
def test_a_transformer_trained_on_the_gpu_agrees_with_the_cpu(tmp_path, capsys, backend):
    assert tf32_off(), ("TF32 matmuls are on in this process: float32 on the GPU rounds to "
                        "10 bits and cannot agree with the CPU")
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    common = ["train", *TRANSFORMER, "--steps", "40", "--backend", backend]
    assert main([*common, "-o", str(cpu), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main([*common, "-o", str(gpu), "--device", DEVICE]) == 0
    assert f"training transformer ({backend}, on {DEVICE}," in capsys.readouterr().out
    assert json.loads((gpu / "config.json").read_text())["train_config"]["device"] == DEVICE
    assert tf32_off()  # a run leaves it as it found it
    a, b = read_metrics(cpu), read_metrics(gpu)
    assert len(a) == len(b) and a[-1]["step"] == 40
    assert worst_difference(a, b) < GPU_TOLERANCE
    assert b[-1]["test_loss"] < 3.0  # it learned (ln 27 = 3.30 at the start)


@pytest.mark.parametrize("backend", ["torch", "torch-module"])
def test_a_gpu_run_repeats_itself_bit_for_bit(tmp_path, backend):
    """What a bit-identical resume on the GPU rests on: no kernel with a varying order of sums."""
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["train", *TRANSFORMER, "--steps", "30", "--backend", backend, "--device", DEVICE]
    assert main([*common, "-o", str(first)]) == 0
    assert main([*common, "-o", str(second)]) == 0
    unrepeatable = ("the same GPU run twice gave other numbers: a kernel sums in a varying "
                    "order (an attention backward, an atomic scatter), so no bit-identical "
                    "resume can hold on this GPU")
    assert read_metrics(first) == read_metrics(second), unrepeatable
    assert same_weights(first, second), unrepeatable


# --- lower precisions -----------------------------------------------------------------------

def test_a_bfloat16_run_on_the_gpu_trains_close_to_float32(tmp_path, capsys):
    runs_ = {}
    for precision in ("float32", "bfloat16"):
        run = tmp_path / precision
        assert main(["train", *TRANSFORMER, "--steps", "100", "--eval-every", "50",
                     "--backend", "torch-module", "--device", DEVICE, "--dtype", precision,
                     "-o", str(run)]) == 0
        runs_[precision] = read_metrics(run)
    assert f"on {DEVICE}, bfloat16," in capsys.readouterr().out
    low, full = runs_["bfloat16"], runs_["float32"]
    val = [r["val_loss"] for r in low if "val_loss" in r]
    assert val[-1] < val[0] - 0.5  # it learns
    assert abs(val[-1] - [r["val_loss"] for r in full if "val_loss" in r][-1]) < 0.05
    assert abs(low[-1]["test_loss"] - full[-1]["test_loss"]) < 0.05
    assert low != full  # computed in bfloat16 indeed


@pytest.mark.parametrize("backend, model", [("torch-module", SMALL), ("torch", SMALL_TRANSFORMER),
                                            ("torch-module", SMALL_TRANSFORMER)],
                         ids=["mlp-torch-module", "transformer-torch", "transformer-torch-module"])
def test_a_float16_run_on_the_gpu_resumes_bit_identically_with_its_loss_scale(
        tmp_path, small_input, monkeypatch, backend, model):
    """tests/test_devices.py's float16 resume, on the GPU (the MLP as there, and the
    Transformer, whose attention takes other kernels there)."""
    straight, stopped = check_float16_resume(
        tmp_path, monkeypatch, ["-i", str(small_input), *model, "--backend", backend,
                                "--device", DEVICE])
    assert same_weights(straight, stopped)


# --- a checkpoint moves from the GPU to the CPU ----------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_checkpoint_written_on_the_gpu_resumes_on_the_cpu(tmp_path, capsys, monkeypatch, dtype):
    straight, moved = tmp_path / "straight", tmp_path / "moved"
    common = [*TRANSFORMER, "--steps", "40", "--backend", "torch-module", "--dtype", dtype,
              "--device", DEVICE]
    assert main(["train", "-o", str(straight), *common]) == 0
    with interrupted_at(monkeypatch, 19):
        assert main(["train", "-o", str(moved), *common]) == 130
    capsys.readouterr()
    assert main(["train", "-o", str(moved), "--resume", "--device", "cpu", "-n", "0"]) == 0
    out, err = capsys.readouterr()
    resuming = [line for line in out.splitlines() if line.startswith("resuming")]
    assert len(resuming) == 1 and resuming[0].startswith("resuming transformer (torch-module,")
    assert resuming[0].endswith("at step 20 of 40") and f"on {DEVICE}" not in resuming[0]
    assert (f"tinylm: warning: this run computed on {DEVICE}; on cpu the arithmetic rounds "
            "differently") in err
    # the run now computes on the CPU, and says so to a later resume
    assert json.loads((moved / "config.json").read_text())["train_config"]["device"] == "cpu"
    a, b = read_metrics(straight), read_metrics(moved)
    assert len(a) == len(b) and b[-1]["step"] == 40
    tolerance = GPU_TOLERANCE if dtype == "float32" else 0.05  # float16 rounds as each device does
    assert worst_difference(a, b) < tolerance
    assert main(["eval", "-o", str(moved)]) == 0  # the committed run reads back whole


# --- sampling on the GPU --------------------------------------------------------------------

def test_a_run_samples_on_the_gpu_with_the_cache_as_without_it(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TRANSFORMER, "--steps", "40", "--backend", "torch-module",
                 "--device", DEVICE, "--sample-tokens", "200", "-o", str(run)]) == 0
    opened = runs.open_run(run)  # on the CPU, as 'tinylm sample' opens it
    model, tok, config = opened.model, opened.tokenizer, opened.config
    model.to_device(DEVICE)
    args = (model, tok, config.sample_prompt, 200)
    cached = sample_tokens(*args, RNG(config.sample_seed))
    assert cached == sample_tokens(*args, RNG(config.sample_seed), cache=False)
    # sample.txt was sampled on the GPU by the run itself, through the cache
    assert (run / "sample.txt").read_text() == cached + "\n"
    items = sample_items(model, tok, 20, RNG(7))
    assert items == sample_items(model, tok, 20, RNG(7), cache=False)
    assert len(set(items)) > 10


@pytest.mark.parametrize("backend", ["torch", "torch-module"])
@pytest.mark.parametrize("name", ["transformer", "rnn", "gru"])
def test_200_tokens_on_the_gpu_are_the_same_with_and_without_the_cache(name, backend):
    """tests/test_sample.py's models (weights far from uniform), on the GPU."""
    from test_sample import sequence_model
    from tinylm.data import Tokenizer
    from tinylm.layers.base import Cache

    model = sequence_model(name, backend, block_size=256)
    model.to_device(DEVICE)
    tok = Tokenizer(tuple("\nabcdefghij"))
    cached = sample_tokens(model, tok, "ab", 200, RNG(11))
    assert cached == sample_tokens(model, tok, "ab", 200, RNG(11), cache=False)
    assert len(set(cached)) > 5
    idx = np.random.RandomState(1).randint(0, 11, size=(2, 9))
    with model.inference_mode():
        whole = model.to_numpy(model.forward(idx)[0])                       # (2, 9, V)
        cache = Cache()
        pieces = [model.to_numpy(model.forward(idx[:, :3], cache=cache)[0])]
        pieces += [model.to_numpy(model.forward(idx[:, t:t + 1], cache=cache)[0])
                   for t in range(3, 9)]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=1e-5, atol=1e-5)


# --- torchrun and NCCL ----------------------------------------------------------------------

def tinylm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tinylm", *args]


def torchrun_command(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(nproc), "-m", "tinylm", *args]


def run_ok(command: list[str], env: dict | None = None, timeout: float = 300
           ) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env=env or ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_torchrun_with_one_process_on_the_gpu_equals_the_single_process_run(tmp_path):
    """torchrun --nproc_per_node 1: WORLD_SIZE 1 is a single process to tinylm, which then
    joins no process group; the NCCL path itself is the next test's."""
    one, alone = tmp_path / "torchrun", tmp_path / "alone"
    args = ["train", *TRANSFORMER, "--steps", "40", "--backend", "torch-module",
            "--device", DEVICE]
    launched = run_ok(torchrun_command(1, *args, "-o", str(one)))
    run_ok(tinylm_command(*args, "-o", str(alone)))
    assert launched.stdout.count(f"training transformer (torch-module, on {DEVICE},") == 1
    assert launched.stdout.count("done in") == 1
    assert worst_difference(read_metrics(one), read_metrics(alone)) < 1e-5


# One process that takes the path of several: the batch in parts, the gradients summed by an
# all-reduce over the process group (NCCL for CUDA tensors, gloo for the CPU's), the stop flag
# and the evaluation sums agreed. A group of one is all one GPU can hold (NCCL takes one GPU a
# process); its all-reduce is a copy, so the run must equal the single-process run.
NCCL_WORKER = r"""
import collections, json, sys
from tinylm import api, distributed
from tinylm.output import SILENT

class OneOfOne(distributed.World):
    @property
    def distributed(self):
        return True

seen = collections.Counter()
all_reduce = distributed._all_reduce
def counted(tensor, op):
    seen[tensor.device.type] += 1
    all_reduce(tensor, op)
distributed._all_reduce = counted

args = json.loads(sys.argv[1])
world = OneOfOne(0, 1, 0)
distributed.start(world)
try:
    import torch.distributed as dist
    backend = str(dist.get_backend_config()) if hasattr(dist, "get_backend_config") \
        else str(dist.get_backend())
    with distributed.together(world) as gate:
        api.run_training(args["settings"], model=args["model"], input=args["input"],
                         out_dir=args["out"], num_samples=0, output=SILENT, world=world, gate=gate)
finally:
    distributed.stop()
print(json.dumps({"backend": backend, "all_reduces": dict(seen)}))
"""

NCCL_SETTINGS = dict(n_embd=16, n_layers=2, n_heads=2, batch_size=32, lr=0.01, eval_every=20,
                     eval_train_batches=5, steps=40, backend="torch-module")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nccl_run(out, settings: dict | None = None, device: str = DEVICE,
             model: str = "transformer") -> dict:
    """The one-process group's run of ``settings`` (the Python API's names) into ``out``, in a
    process of its own; what it reports: the group's backends and the all-reduces by device.
    benchmarks/gpu_check.sh calls it too."""
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    payload = json.dumps({"settings": {**(settings or NCCL_SETTINGS), "device": device},
                          "model": model, "input": NAMES, "out": str(out)})
    result = run_ok([sys.executable, "-c", NCCL_WORKER, payload], env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_nccl_all_reduce_on_one_gpu_computes_what_one_process_computes(tmp_path):
    group, alone = tmp_path / "group", tmp_path / "alone"
    report = nccl_run(group)
    assert "cuda:nccl" in report["backend"], report
    # every update's gradients went through NCCL on the GPU
    assert report["all_reduces"].get("cuda", 0) >= NCCL_SETTINGS["steps"], report
    assert main(["train", *TRANSFORMER, "--steps", "40", "--backend", "torch-module",
                 "--device", DEVICE, "-o", str(alone)]) == 0
    assert worst_difference(read_metrics(group), read_metrics(alone)) < 1e-5
