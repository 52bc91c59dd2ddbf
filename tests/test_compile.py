"""--compile: torch.compile's refusals, and its numbers against the uncompiled network's."""

from __future__ import annotations

import json

import pytest

from tinylm import devices
from tinylm.cli import main
from tinylm.errors import ConfigError
from test_cli_neural import read_metrics

pytest.importorskip("torch")

TINY = ["--model", "transformer", "--n-layers", "2", "--n-embd", "32", "--n-heads", "2",
        "--batch-size", "32", "--eval-every", "30", "--eval-train-batches", "5"]


@pytest.mark.parametrize("flags, message", [
    (["--model", "mlp"], "--compile needs a torch backend"),
    (["--model", "transformer", "--backend", "numpy"], "--compile needs a torch backend"),
])
def test_compile_without_a_torch_backend_is_one_line_and_nothing_written(
        tmp_path, small_input, capsys, flags, message):
    run = tmp_path / "run"
    assert main(["train", "-i", str(small_input), "-o", str(run), *flags, "--steps", "5",
                 "-n", "0", "--compile"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not run.exists()


def test_compile_on_the_cpu_without_a_cxx_compiler_is_refused(tmp_path, small_input, capsys,
                                                                monkeypatch):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="needs a C.. compiler on the PATH"):
        devices.check_compile("torch", "cpu")
    devices.check_compile("torch", "cuda")  # a GPU's kernels are Triton's, not a C++ compiler's
    run = tmp_path / "run"
    assert main(["train", "-i", str(small_input), "-o", str(run), *TINY, "--steps", "5",
                 "--backend", "torch-module", "-n", "0", "--compile"]) == 2
    err = capsys.readouterr().err.strip()
    assert "apt-get install g++" in err and len(err.splitlines()) == 1
    assert not run.exists()


def test_compile_is_a_switch_saved_with_the_run(tmp_path, small_input, capsys):
    run = tmp_path / "run"
    assert main(["train", "-i", str(small_input), "-o", str(run), *TINY, "--steps", "2",
                 "-n", "0", "--backend", "torch"]) == 0
    assert json.loads((run / "config.json").read_text())["train_config"]["compile"] is False
    assert main(["train", "--help"]) == 0
    assert "--compile " in capsys.readouterr().out  # a switch: no value follows it


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "torch-module"])
def test_a_compiled_run_agrees_with_the_uncompiled_one(tmp_path, names_splits, backend):
    # the bar for a faster step: metrics within 1e-5 over the run, the same samples
    path = tmp_path / "names.txt"
    path.write_text("\n".join(names_splits[0][:2000]) + "\n")
    runs = {}
    for compiled in (False, True):
        run = tmp_path / f"{compiled}"
        assert main(["train", "-i", str(path), "-o", str(run), *TINY, "--steps", "60",
                     "--backend", backend, "-n", "50"] + ["--compile"] * compiled) == 0
        runs[compiled] = run
    eager, fused = read_metrics(runs[False]), read_metrics(runs[True])
    assert [r.keys() for r in eager] == [r.keys() for r in fused]
    worst = max(abs(a[k] - b[k]) for a, b in zip(eager, fused) for k in a if k.endswith("loss"))
    assert worst < 1e-5
    assert (runs[False] / "samples.txt").read_text() == (runs[True] / "samples.txt").read_text()
    assert json.loads((runs[True] / "config.json").read_text())["train_config"]["compile"] is True
