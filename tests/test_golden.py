"""Golden figures: the numbers README.md, docs/mlp.md, docs/deep.md and docs/micrograd.md quote.

Each test reproduces one quoted figure (or one block of them) to the digits
the documents print, so a change that moves a documented number fails here
and the documents must be updated with it. Figures that other test files
already pin are not repeated here. Timings are not pinned.

Runs go through ``tinylm.cli.main`` into a temporary directory and are read
back from the run's files (metrics.jsonl, grid.jsonl, samples.txt,
sample.txt, train.txt) or from the stdout of ``tinylm sample`` and
``tinylm eval``, never from the training progress lines. Anything that takes
more than a couple of seconds is marked ``slow`` (``python -m pytest -m slow``:
9 minutes with ``OMP_NUM_THREADS=1`` on a busy 2-core machine, over half of it
the two neural-bigram runs and the full numpy mlp-classic run). The two
200,000-step deep recipes (8 and 12 minutes each) are pinned by short runs
of the same protocol instead, as are the torch backends of ``mlp-classic``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tinylm import data
from tinylm.cli import main
from tinylm.models import ModelConfig, build_model
from tinylm.rng import RNG

slow = pytest.mark.slow


# --- helpers -------------------------------------------------------------------------------


def train_run(out: Path, *flags: str) -> Path:
    """``tinylm train FLAGS -o OUT``; the run directory."""
    assert main(["train", *flags, "-o", str(out)]) == 0
    return out


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def evaluations(out: Path) -> list[dict]:
    """The evaluation records ({"step", "train_loss", "val_loss"}) of a run, in order."""
    return [r for r in metrics(out) if "val_loss" in r]


def final_record(out: Path) -> dict:
    """The final record ({"step", "test_loss", "test_perplexity"}) of a run."""
    final = [r for r in metrics(out) if "test_loss" in r]
    assert len(final) == 1
    return final[0]


def train_lines(out: Path) -> set[str]:
    return set((out / "train.txt").read_text().split())


def assert_figures(out: Path, train: float | None, val: float, test: float, digits: int = 4) -> None:
    """The last evaluation's train/val loss and the test loss of a run, rounded as printed."""
    last, final = evaluations(out)[-1], final_record(out)
    if train is not None:
        assert round(last["train_loss"], digits) == train
    assert round(last["val_loss"], digits) == val
    assert round(final["test_loss"], digits) == test


def lr_by_step(out: Path) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in metrics(out) if "loss" in r}


# --- fast: model sizes, data sizes, single computations ------------------------------------


def test_micrograd_doc_example():
    """docs/micrograd.md: tanh(w * x + 2) with x = 0.5, w = -1.5 prints 0.8483 0.1402 -0.4206."""
    from tinylm.micrograd import Value

    x = Value(0.5)
    w = Value(-1.5)
    y = (w * x + 2).tanh()
    y.backward()
    assert f"{y.data:.4f} {w.grad:.4f} {x.grad:.4f}" == "0.8483 0.1402 -0.4206"


def test_parameter_counts_of_the_bigram_and_the_mlps():
    """docs/mlp.md: the bigram's 27 x 27 table, 11,897 parameters for the default mlp,
    89,387 for mlp-classic (README: "89k parameters").

    (bnmlp-classic's 46,997 and wavenet-classic's 76,579 are pinned by
    test_wavenet.py::test_classic_sizes.)"""
    assert build_model(ModelConfig("bigram", vocab_size=27, context=1), "numpy", RNG(1)).num_params() == 27 * 27
    mlp = ModelConfig("mlp", vocab_size=27, context=3, n_embd=10, n_hidden=200)
    assert build_model(mlp, "numpy", RNG(1)).num_params() == 11_897
    classic = ModelConfig("mlp", vocab_size=27, context=3, n_embd=48, n_hidden=512)
    assert build_model(classic, "numpy", RNG(1337)).num_params() == 89_387


def test_parameter_counts_of_the_sequence_recipes():
    """README's table: 204,544 for transformer-makemore, 28,315 for gru-makemore, 451,963
    for best (block 16: the longest name + 1)."""
    sizes = {"transformer": dict(n_embd=64, n_heads=4, n_layers=4),
             "gru-makemore": dict(n_embd=64, n_embd2=64), "best": dict(n_embd=64, n_embd2=352)}
    counts = {name: build_model(ModelConfig("gru" if name != "transformer" else name,
                                            vocab_size=27, block_size=16, **kw),
                                "numpy", RNG(1)).num_params() for name, kw in sizes.items()}
    assert counts == {"transformer": 204_544, "gru-makemore": 28_315, "best": 451_963}


def test_matmul_flops_of_one_classic_step():
    """README and docs/mlp.md: a classic step multiplies 128 x 144 x 512 and 128 x 512 x 27
    matrices, three matmuls per Linear: 67.2 MFLOP."""
    model = build_model(ModelConfig("mlp", vocab_size=27, context=3, n_embd=48, n_hidden=512),
                        "numpy", RNG(1337))
    shapes = [layer.weight.data.shape for layer in model.layers if type(layer).__name__ == "Linear"]
    assert shapes == [(512, 144), (27, 512)]
    batch = 128
    flops = sum(3 * 2 * batch * n_in * n_out for n_out, n_in in shapes)
    assert round(flops / 1e6, 1) == 67.2


def test_the_train_split_in_examples(names_splits, names_lines):
    """docs/mlp.md: the neural bigram sees all 213,797 training examples in every step, and
    mlp-classic's 50,000 batches of 128 windows are 30 passes over the training stream."""
    tok = data.Tokenizer.from_lines(names_lines)
    train_split = names_splits[0]
    X, _ = data.word_examples(train_split, tok, 1)
    assert len(X) == 213_797
    windows, _ = data.stream_examples(train_split, tok, 3)
    assert round(50_000 * 128 / len(windows)) == 30


def test_naive_init_starts_far_above_ln_vocab_and_is_warned_about(names_splits, names_lines):
    """docs/deep.md: with --init naive the default bnmlp starts at a loss of 20.8, and the
    warning fires when the initial loss is more than 0.5 away from ln(vocab_size)."""
    from tinylm.batches import make_split
    from tinylm.diagnostics import initial_loss_record
    from tinylm.train import evaluate

    tok = data.Tokenizer.from_lines(names_lines)
    split = make_split("train", names_splits[0], tok, 3, "words")
    config = ModelConfig("bnmlp", vocab_size=27, context=3, n_embd=10, n_hidden=100, n_layers=5,
                         init="naive")
    loss = evaluate(build_model(config, "numpy", RNG(42)), split, 32)
    assert round(loss, 1) == 20.8
    assert initial_loss_record(loss, 27)["initial_loss_warning"]
    assert not initial_loss_record(math.log(27) + 0.49, 27)["initial_loss_warning"]
    assert initial_loss_record(math.log(27) + 0.51, 27)["initial_loss_warning"]


def test_mean_gradient_at_a_tanh_feeding_batchnorm_is_rounding_error(names_splits, names_lines):
    """docs/deep.md: the mean gradient at every tanh that feeds a Linear and a BatchNorm is
    about 1e-13 (the last tanh, which feeds the output layer, has no such cancellation)."""
    from tinylm.diagnostics import measure

    tok = data.Tokenizer.from_lines(names_lines)
    X, Y = data.word_examples(names_splits[0], tok, 3)
    model = build_model(ModelConfig("bnmlp", vocab_size=27, context=3, n_embd=10, n_hidden=100,
                                    n_layers=5), "numpy", RNG(42))
    snap, _ = measure(model, X[:512], Y[:512])
    means = [g.mean for g in snap.gradient_stats]
    assert len(means) == 5
    assert all(abs(m) < 1e-12 for m in means[:-1]), means
    assert abs(means[-1]) > 1e-9


def test_micrograd_demo_losses(tmp_path):
    """README and docs/micrograd.md: the losses `tinylm micrograd` prints at steps 1, 11, ..., 91.

    (The final train loss 0.0391, the last val loss 0.0787 and the test
    accuracy 90.0% are pinned by test_micrograd_demo.py.)"""
    out = tmp_path / "micrograd"
    assert main(["micrograd", "-o", str(out)]) == 0
    records = metrics(out)
    train_loss = {r["step"]: r["train_loss"] for r in records if "train_loss" in r}
    val_loss = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    printed_train = [1.0122, 0.6091, 0.4713, 0.3447, 0.2496, 0.1914, 0.1444, 0.1065, 0.0738, 0.0520]
    printed_val = [1.0539, 0.7814, 0.5038, 0.4178, 0.2861, 0.2185, 0.1763, 0.1334, 0.0947]
    assert [round(train_loss[s], 4) for s in range(1, 92, 10)] == printed_train
    assert [round(val_loss[s], 4) for s in range(1, 82, 10)] == printed_val


# --- slow: the n-gram tour of the README ---------------------------------------------------

README_GRID = {  # order -> val loss for smoothing 0.01, 0.03, 0.1, 0.3, 1
    1: [2.8344, 2.8344, 2.8344, 2.8344, 2.8344],
    2: [2.4762, 2.4757, 2.4753, 2.4749, 2.4749],
    3: [2.2496, 2.2442, 2.2401, 2.2405, 2.2521],
    4: [2.1340, 2.1007, 2.0831, 2.1002, 2.1767],
    5: [2.1750, 2.1209, 2.1121, 2.1748, 2.3279],
    6: [2.3419, 2.2803, 2.2785, 2.3549, 2.5101],
}
README_SAMPLES = [  # (item, new)
    ("freylon", True), ("enmaya", True), ("leizbeth", True), ("geovan", True),
    ("cevuqwmtnmrqxvwcvbzxhlmxrotflhajayma", True), ("jastianand", True), ("baidah", True),
    ("myla", True), ("mika", False), ("mikolton", True),
]
README_SAMPLE_KA = """\
samples (2 of 5 new, not in the training set):
  kallowen  (new)
  kamarian  (copy of a training item)
  kahleeya  (new)
  kariah    (copy of a training item)
  karmin    (copy of a training item)
"""
README_EVAL = """\
order 4 additive model, loader words
train: loss 1.9246, perplexity 6.853, 2.7767 bits per character
  val: loss 2.0831, perplexity 8.029, 3.0052 bits per character
 test: loss 2.0794, perplexity 8.000, 2.9999 bits per character
"""


@pytest.fixture(scope="module")
def ngram_run(tmp_path_factory):
    """`tinylm train` with no flags: the README's first run."""
    return train_run(tmp_path_factory.mktemp("golden") / "out")


@slow
def test_ngram_default_run(ngram_run):
    """README `tinylm train`: the 6 x 5 grid, best order 4 smoothing 0.1 (train 1.9246,
    val 2.0831), test loss 2.0794, perplexity 8.000, and the ten samples (9 new)."""
    grid = [json.loads(line) for line in (ngram_run / "grid.jsonl").read_text().splitlines()]
    table = {}
    for point in grid:
        table.setdefault(point["order"], {})[point["smoothing"]] = round(point["val_loss"], 4)
    assert {order: [row[a] for a in (0.01, 0.03, 0.1, 0.3, 1.0)] for order, row in table.items()} == README_GRID
    best = min(grid, key=lambda p: p["val_loss"])
    assert (best["order"], best["smoothing"]) == (4, 0.1)
    assert_figures(ngram_run, train=1.9246, val=2.0831, test=2.0794)
    assert f"{final_record(ngram_run)['test_perplexity']:.3f}" == "8.000"
    items = (ngram_run / "samples.txt").read_text().split()
    known = train_lines(ngram_run)
    assert [(item, item not in known) for item in items] == README_SAMPLES


@slow
def test_ngram_sample_and_eval_output(ngram_run, capsys):
    """README: the exact output of `tinylm sample -o out -n 5 --prompt ka --temperature 0.8`
    and of `tinylm eval -o out`."""
    capsys.readouterr()
    assert main(["sample", "-o", str(ngram_run), "-n", "5", "--prompt", "ka", "--temperature", "0.8"]) == 0
    assert capsys.readouterr().out == README_SAMPLE_KA
    assert main(["eval", "-o", str(ngram_run)]) == 0
    assert capsys.readouterr().out == README_EVAL


@slow
def test_kneser_ney_run(tmp_path, ngram_run):
    """README `tinylm train --method kneser-ney`: best order 6 (train 1.5724, val 1.9684),
    test loss 1.9596, perplexity 7.097, better than the best additive model (test 2.0794)
    by 0.1198 nats per character (0.12)."""
    out = train_run(tmp_path / "kn", "--method", "kneser-ney", "-n", "0")
    grid = [json.loads(line) for line in (out / "grid.jsonl").read_text().splitlines()]
    assert min(grid, key=lambda p: p["val_loss"])["order"] == 6
    assert_figures(out, train=1.5724, val=1.9684, test=1.9596)
    assert f"{final_record(out)['test_perplexity']:.3f}" == "7.097"
    margin = final_record(ngram_run)["test_loss"] - final_record(out)["test_loss"]
    assert round(margin, 4) == 0.1198 and round(margin, 2) == 0.12


@slow
def test_count_bigram(tmp_path):
    """docs/mlp.md: `tinylm train --model ngram --order 2` picks smoothing 1 (0.3 and 1 tie on
    val at 2.4749): train 2.4540, val 2.4749, test 2.4563."""
    out = train_run(tmp_path / "count-bigram", "--model", "ngram", "--order", "2", "-n", "0")
    grid = [json.loads(line) for line in (out / "grid.jsonl").read_text().splitlines()]
    val = {p["smoothing"]: p["val_loss"] for p in grid}
    assert min(val, key=val.get) == 1.0
    assert round(val[0.3], 4) == round(val[1.0], 4) == 2.4749
    assert_figures(out, train=2.4540, val=2.4749, test=2.4563)


# (README `tinylm train --loader stream --order 4 --smoothing 0.1`: test loss 2.1064,
# perplexity 8.218 is pinned by test_cli.py::test_reference_figure_through_the_cli and
# test_ngram.py::test_reference_figure.)


# --- slow: the neural bigram and the default MLP -------------------------------------------


@slow
def test_default_mlp_run(tmp_path):
    """README and docs/mlp.md `tinylm train --model mlp`: val loss 2.266, test loss 2.254
    (perplexity 9.53); among its samples `malve (new)` and `jacelyn (copy of a training item)`."""
    out = train_run(tmp_path / "mlp", "--model", "mlp")
    assert_figures(out, train=None, val=2.266, test=2.254, digits=3)
    assert round(final_record(out)["test_perplexity"], 2) == 9.53
    items = (out / "samples.txt").read_text().split()
    known = train_lines(out)
    assert "malve" in items and "malve" not in known
    assert "jacelyn" in items and "jacelyn" in known


@slow
def test_neural_bigram_default_200_steps(tmp_path):
    """docs/mlp.md `tinylm train --model bigram` (200 full-batch steps): train 2.4649,
    val 2.4846, test 2.4645."""
    out = train_run(tmp_path / "bigram", "--model", "bigram", "-n", "0")
    assert evaluations(out)[-1]["step"] == 199
    assert_figures(out, train=2.4649, val=2.4846, test=2.4645)


@slow
def test_neural_bigram_1000_steps(tmp_path):
    """README and docs/mlp.md `tinylm train --model bigram --steps 1000`: train 2.4598,
    val 2.4795, test 2.4606."""
    out = train_run(tmp_path / "bigram", "--model", "bigram", "--steps", "1000", "-n", "0")
    assert evaluations(out)[-1]["step"] == 999
    assert_figures(out, train=2.4598, val=2.4795, test=2.4606)


# --- slow: mlp-classic ---------------------------------------------------------------------


@slow
def test_mlp_classic_300_steps_on_every_backend(tmp_path):
    """docs/mlp.md: 300 steps of mlp-classic on any backend give val 2.3755, test 2.3616, and
    numpy, torch and torch-module agree on every metric record to 4.8e-7 at worst.

    (The 1e-5 tolerance and the identical sample.txt are also checked by
    test_cli_neural.py::test_the_three_large_implementations_agree_on_the_classic_recipe.)"""
    pytest.importorskip("torch")
    runs = {}
    for backend in ("numpy", "torch", "torch-module"):
        runs[backend] = train_run(tmp_path / backend, "--recipe", "mlp-classic", "--steps", "300",
                              "--backend", backend, "-n", "0")
        assert_figures(runs[backend], train=None, val=2.3755, test=2.3616)
    reference = metrics(runs["numpy"])
    worst = 0.0
    for backend in ("torch", "torch-module"):
        records = metrics(runs[backend])
        assert len(records) == len(reference)
        worst = max(worst, max(abs(a[k] - b[k]) for a, b in zip(reference, records) for k in a))
    assert f"{worst:.1e}" == "4.8e-07"


@slow
@pytest.mark.parametrize("backend", ["torch", "torch-module"])
def test_mlp_classic_protocol_on_the_torch_backends(tmp_path, backend):
    """README and docs/mlp.md: `tinylm train --recipe mlp-classic --backend torch` (and
    torch-module). The full 50,000 steps take about three minutes per backend, so this pins
    the recipe's protocol on a 5,000-step run instead: val 2.1617, test 2.1585, as numpy's
    figures are pinned in full by test_mlp_classic_full_run_numpy."""
    pytest.importorskip("torch")
    out = train_run(tmp_path / backend, "--recipe", "mlp-classic", "--steps", "5000", "--backend", backend,
                "-n", "0")
    assert [r["step"] for r in evaluations(out)] == list(range(0, 5000, 200)) + [4999]
    assert_figures(out, train=2.1287, val=2.1617, test=2.1585)


@slow
def test_mlp_classic_full_run_numpy(tmp_path):
    """README and docs/mlp.md `tinylm train --recipe mlp-classic` (numpy, 50,000 steps): val
    2.0592, test 2.0580 (perplexity 7.83), 50,252 metric records, final train loss 1.943
    (0.12 below val), and sample.txt begins richard, roydhan, makye, makyiah, eline, rah."""
    out = train_run(tmp_path / "classic", "--recipe", "mlp-classic", "-n", "0")
    assert len(metrics(out)) == 50_252
    assert_figures(out, train=None, val=2.0592, test=2.0580)
    assert round(final_record(out)["test_perplexity"], 2) == 7.83
    last = evaluations(out)[-1]
    assert round(last["train_loss"], 3) == 1.943
    assert round(last["val_loss"] - last["train_loss"], 2) == 0.12
    sample = (out / "sample.txt").read_text()
    assert sample.split("\n")[1:7] == ["richard", "roydhan", "makye", "makyiah", "eline", "rah"]


# --- slow: the deep recipes, on short runs of their protocol -------------------------------


@slow
def test_bnmlp_classic_protocol(tmp_path):
    """README and docs/deep.md `tinylm train --recipe bnmlp-classic`: the full run (200,000
    steps, val 2.0722, test 2.0661) takes about 8 minutes, so this pins the recipe's protocol
    on a 12,000-step run: SGD lr 0.1 dropping to 0.01 after 75 % of the steps, an exact
    evaluation every 10,000 steps, val 2.1877 and test 2.1853 after 12,000 steps."""
    out = train_run(tmp_path / "bnmlp", "--recipe", "bnmlp-classic", "--steps", "12000", "-n", "0")
    lr = lr_by_step(out)
    assert lr[8999] == 0.1 and lr[9000] == pytest.approx(0.01)
    evals = evaluations(out)
    assert [r["step"] for r in evals] == [0, 10_000, 11_999]
    assert (round(evals[0]["train_loss"], 4), round(evals[0]["val_loss"], 4)) == (3.3027, 3.3021)
    assert (round(evals[1]["train_loss"], 4), round(evals[1]["val_loss"], 4)) == (2.1757, 2.1978)
    assert_figures(out, train=2.1675, val=2.1877, test=2.1853)


@slow
def test_wavenet_classic_protocol(tmp_path):
    """README and docs/deep.md `tinylm train --recipe wavenet-classic`: the initial loss
    (step 0: train 3.2990, val 3.2975, against ln(27) = 3.2958) exactly; the full run
    (200,000 steps, val 1.9721, test 1.9605) takes about 12 minutes, so this pins the
    recipe's protocol on a 12,000-step run: val 2.0841, test 2.0757."""
    out = train_run(tmp_path / "wavenet", "--recipe", "wavenet-classic", "--steps", "12000", "-n", "0")
    evals = evaluations(out)
    assert [r["step"] for r in evals] == [0, 10_000, 11_999]
    assert (round(evals[0]["train_loss"], 4), round(evals[0]["val_loss"], 4)) == (3.2990, 3.2975)
    assert round(math.log(27), 4) == 3.2958
    lr = lr_by_step(out)
    assert lr[8999] == 0.1 and lr[9000] == pytest.approx(0.01)
    assert (round(evals[1]["train_loss"], 4), round(evals[1]["val_loss"], 4)) == (2.0655, 2.0966)
    assert_figures(out, train=2.0527, val=2.0841, test=2.0757)


# --- slow: the sequence models ---------------------------------------------------------------


@slow
def test_transformer_makemore_protocol(tmp_path):
    """README and docs/sequence.md `tinylm train --recipe transformer-makemore --backend
    torch-module` (204,544 parameters): the full run (20,000 AdamW steps with a cosine
    decay; the weights of step 15,500 kept, val 1.9725, test 1.9724) takes about 11
    minutes, so this pins the recipe's protocol on a 3,000-step run: the initial loss
    3.5227 (PyTorch's default initialisation), the cosine, an evaluation every 500 steps,
    the best weights kept (here the last), val 2.1010 and test 2.1041."""
    pytest.importorskip("torch")
    out = train_run(tmp_path / "tm", "--recipe", "transformer-makemore", "--backend",
                    "torch-module", "--steps", "3000", "-n", "0")
    evals = evaluations(out)
    assert [r["step"] for r in evals] == list(range(0, 3000, 500)) + [2999]
    assert round(evals[0]["train_loss"], 4) == 3.5227
    assert lr_by_step(out)[1500] == pytest.approx(2.5e-4)  # half-way down the cosine
    assert_figures(out, train=2.0717, val=2.1010, test=2.1041)
    final = final_record(out)
    assert final["best_step"] == 2999 and final["best_val_loss"] == evals[-1]["val_loss"]


@slow
def test_best_recipe_protocol(tmp_path):
    """README and docs/sequence.md `tinylm train --recipe best` (a GRU of 451,963
    parameters): the full run (20,000 steps, val 1.9037, test 1.8967, about 12.5 minutes
    on two threads) is too long for CI, so this pins the recipe's protocol on a 2,000-step
    run, which is the full run's first 2,000 steps (the rate is constant after its warmup):
    the warmup to 2e-3 over 667 steps (given, since a recipe shortened with --steps scales
    its warmup), dropout 0.4, weight decay 0.1, the average of the weights (decay 0.9995)
    measured and the best of it kept (here the last), val 2.0559 and test 2.0521."""
    out = train_run(tmp_path / "best", "--recipe", "best", "--steps", "2000", "--warmup", "667",
                    "-n", "0")
    lr = lr_by_step(out)
    assert lr[0] == pytest.approx(2e-3 / 667) and lr[666] == lr[667] == lr[1999] == \
        pytest.approx(2e-3)
    saved = json.loads((out / "config.json").read_text())
    config, train_config = saved["model_config"], saved["train_config"]
    assert (config["n_embd"], config["n_embd2"], config["dropout"]) == (64, 352, 0.4)
    assert (train_config["weight_decay"], train_config["ema"]) == (0.1, 0.9995)
    assert [r["step"] for r in evaluations(out)] == [0, 1000, 1999]
    assert_figures(out, train=2.0273, val=2.0559, test=2.0521)
    assert final_record(out)["best_step"] == 1999


@slow
def test_gru_makemore_recipe(tmp_path):
    """README and docs/sequence.md `tinylm train --recipe gru-makemore` (numpy, 28,315
    parameters, 30,000 AdamW steps, about 2.5 minutes): val 2.0150, test 2.0124."""
    out = train_run(tmp_path / "gru", "--recipe", "gru-makemore", "-n", "0")
    assert evaluations(out)[-1]["step"] == 29_999
    assert_figures(out, train=1.9449, val=2.0150, test=2.0124)


@slow
@pytest.mark.parametrize("model", [
    ["--model", "transformer", "--dropout", "0.1"],
    ["--model", "rnn"],
    ["--model", "gru", "--dropout", "0.1"],
], ids=["transformer", "rnn", "gru"])
def test_sequence_models_300_steps_on_every_backend(tmp_path, model):
    """docs/sequence.md: 300 steps of each sequence model at its default size on the names
    (with dropout for two of them): numpy, raw torch and torch.nn agree on every metric
    record within 1e-5 and write the same sample.txt."""
    pytest.importorskip("torch")
    runs = {}
    for backend in ("numpy", "torch", "torch-module"):
        runs[backend] = train_run(tmp_path / backend, *model, "--steps", "300", "--eval-every",
                                  "100", "--eval-train-batches", "10", "--backend", backend,
                                  "--sample-tokens", "100", "-n", "0")
    reference = metrics(runs["numpy"])
    assert reference[-1]["test_loss"] < 2.6
    for backend in ("torch", "torch-module"):
        other = metrics(runs[backend])
        assert len(other) == len(reference)
        for a, b in zip(reference, other):
            assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 for k in a), (a, b)
        assert (runs[backend] / "sample.txt").read_text() == \
            (runs["numpy"] / "sample.txt").read_text()


# --- --format text: the README's worked run on the Python standard library's sources ----------

# The README builds its text with this one line; the figures below are this machine's Python's
# (3.11.7), whose top-level modules concatenate to 4,698,280 characters with this SHA-256.
STDLIB_SHA256 = "2e31e854ce7c5a39d3549a94420e7ba4b51281ef0f32fc8b6ddd601eff6d7d42"


@pytest.fixture(scope="module")
def stdlib_text(tmp_path_factory) -> Path:
    import glob
    import hashlib
    import sysconfig

    files = sorted(glob.glob(sysconfig.get_path("stdlib") + "/*.py"))
    text = "".join(open(f, encoding="utf-8").read() for f in files)
    path = tmp_path_factory.mktemp("stdlib") / "stdlib.txt"
    path.write_text(text, encoding="utf-8")
    if hashlib.sha256(path.read_bytes()).hexdigest() != STDLIB_SHA256:
        pytest.skip("this Python's standard library is not the one the README's text run used")
    return path


@slow
def test_text_ngram_on_the_stdlib(tmp_path, stdlib_text):
    out = train_run(tmp_path / "kn", "--format", "text", "-i", str(stdlib_text), "--method",
                    "kneser-ney", "-n", "0")
    grid = [json.loads(line) for line in (out / "grid.jsonl").read_text().splitlines()]
    best = min(grid, key=lambda p: p["val_loss"])
    assert (best["order"], round(best["val_loss"], 4)) == (6, 1.3766)
    assert round(final_record(out)["test_loss"], 4) == 1.2855


@slow
def test_text_transformer_on_the_stdlib(tmp_path, stdlib_text):
    out = train_run(tmp_path / "t", "--format", "text", "-i", str(stdlib_text), "--model",
                    "transformer", "--backend", "torch-module", "--n-layers", "4", "--n-heads",
                    "4", "--n-embd", "128", "--batch-size", "12", "--lr", "1e-3", "--steps",
                    "2000", "--eval-every", "500", "-n", "0")
    last = evaluations(out)[-1]
    assert (last["step"], round(last["val_loss"], 4)) == (1999, 1.5377)
    final = final_record(out)
    assert (round(final["test_loss"], 4), round(final["test_loss_se"], 4)) == (1.4420, 0.0193)
    assert round(final["test_loss"] / math.log(2), 4) == 2.0804
