"""The deep models, bnmlp and wavenet: structure, init, gradients, backends, modes."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tinylm.errors import ConfigError  # noqa: E402
from tinylm.layers import numpy_layers as nl  # noqa: E402
from tinylm.models import (  # noqa: E402
    GAINS, ModelConfig, build_model, expected_initial_loss, gain, kaiming_normal, wavenet_levels)
from tinylm.optim import SGD  # noqa: E402
from tinylm.rng import RNG  # noqa: E402

from gradcheck import finite_difference  # noqa: E402

BNMLP = ModelConfig("bnmlp", vocab_size=11, context=3, n_embd=4, n_hidden=8, n_layers=3)
WAVENET = ModelConfig("wavenet", vocab_size=11, context=8, n_embd=4, n_hidden=8)
CONFIGS = [BNMLP, WAVENET]
IDS = ["bnmlp", "wavenet"]


def batch(config: ModelConfig, B: int = 16, seed: int = 0):
    rs = np.random.RandomState(seed)
    return (rs.randint(0, config.vocab_size, size=(B, config.context)),
            rs.randint(0, config.vocab_size, size=B))


def test_classic_sizes():
    """The classic WaveNet-style character model has 76,579 parameters."""
    wave = build_model(ModelConfig("wavenet", vocab_size=27, context=8, n_embd=24, n_hidden=128),
                       "numpy", RNG(1))
    assert wave.num_params() == 76_579
    kinds = [type(layer).__name__ for layer in wave.layers]
    assert kinds == ["Embedding"] + ["FlattenConsecutive", "Linear", "BatchNorm1d", "Tanh"] * 3 + ["Linear"]
    deep = build_model(ModelConfig("bnmlp", vocab_size=27, context=3, n_embd=10, n_hidden=100,
                                   n_layers=5), "numpy", RNG(1))
    assert deep.num_params() == 27 * 10 + 30 * 100 + 4 * 100 * 100 + 5 * 200 + 100 * 27 + 27
    assert all(layer.bias is None for layer in deep.layers[2:-1:3])  # Linear(bias=False) before BN


@pytest.mark.parametrize("context,levels", [(2, 1), (4, 2), (8, 3), (16, 4), (32, 5)])
def test_wavenet_any_number_of_levels(context, levels):
    assert wavenet_levels(context) == levels
    config = ModelConfig("wavenet", vocab_size=7, context=context, n_embd=3, n_hidden=5)
    model = build_model(config, "numpy", RNG(2))
    X, Y = batch(config, B=4)
    logits, loss = model.forward(X, Y)
    assert logits.shape == (4, 7) and math.isfinite(loss)
    assert sum(type(layer).__name__ == "BatchNorm1d" for layer in model.layers) == levels


@pytest.mark.parametrize("context", [1, 3, 6, 12])
def test_wavenet_context_must_be_a_power_of_two(context):
    config = ModelConfig("wavenet", vocab_size=7, context=context)
    with pytest.raises(ConfigError, match="power of two"):
        build_model(config, "numpy", RNG(1))


def test_micrograd_backend_is_refused_clearly():
    with pytest.raises(ConfigError, match="BatchNorm1d"):
        build_model(BNMLP, "micrograd", RNG(1))


def test_gains_and_kaiming_normal():
    assert gain("tanh") == pytest.approx(5 / 3)
    assert gain("linear") == 1.0 and gain("relu") == pytest.approx(math.sqrt(2))
    with pytest.raises(ConfigError):
        gain("gelu")
    rng, ref = RNG(5), RNG(5)
    w = kaiming_normal(rng, 3, 4, GAINS["tanh"])
    want = np.array(ref.randn(12, 0.0, (5 / 3) / 2.0), dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(w, want)
    big = kaiming_normal(RNG(6), 200, 400, 1.0)
    assert big.std() == pytest.approx(1 / math.sqrt(400), rel=0.02)


def test_init_is_the_canonical_scalar_sequence():
    """Embedding, hidden weights in layer order, output weight; the rest is not drawn."""
    model = build_model(BNMLP, "numpy", RNG(7))
    rng = RNG(7)
    V, T, E, H = 11, 3, 4, 8
    s = model.state_dict()

    def draw(n: int, sigma: float) -> np.ndarray:
        return np.array(rng.randn(n, 0.0, sigma), dtype=np.float32)

    np.testing.assert_array_equal(s["layers.0.weight"], draw(V * E, 1.0).reshape(V, E))
    fan_in = T * E
    for i in (2, 5, 8):
        np.testing.assert_array_equal(s[f"layers.{i}.weight"],
                                      draw(H * fan_in, (5 / 3) / math.sqrt(fan_in)).reshape(H, fan_in))
        fan_in = H
        np.testing.assert_array_equal(s[f"layers.{i + 1}.weight"], np.ones(H, np.float32))
        np.testing.assert_array_equal(s[f"layers.{i + 1}.bias"], np.zeros(H, np.float32))
        np.testing.assert_array_equal(s[f"layers.{i + 1}.running_var"], np.ones(H, np.float32))
    np.testing.assert_array_equal(s["layers.11.weight"], draw(V * H, 0.1 / math.sqrt(H)).reshape(V, H))
    np.testing.assert_array_equal(s["layers.11.bias"], np.zeros(V, np.float32))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_initial_loss_is_close_to_uniform(config):
    big = ModelConfig(config.model, vocab_size=27, context=config.context, n_embd=10,
                      n_hidden=64, n_layers=4)
    model = build_model(big, "numpy", RNG(3))
    X, Y = batch(big, B=256, seed=1)
    _, loss = model.forward(X, Y)
    assert expected_initial_loss(big) == pytest.approx(math.log(27))
    assert abs(loss - math.log(27)) < 0.1
    # without the last-layer scaling the network starts confidently wrong
    noscale = build_model(ModelConfig(**{**big.to_dict(), "init": "noscale"}), "numpy", RNG(3))
    assert noscale.forward(X, Y)[1] > loss + 0.1


def test_init_choices():
    for init in ("default", "kaiming", "noscale", "naive"):
        build_model(ModelConfig("bnmlp", vocab_size=5, init=init), "numpy", RNG(1))
    with pytest.raises(ConfigError, match="unknown init 'xavier'; choose one of default"):
        build_model(ModelConfig("wavenet", vocab_size=5, context=2, init="xavier"), "numpy", RNG(1))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_numpy_gradient_matches_torch_float64(config):
    """Every parameter gradient of the hand-written backward against autograd (float64)."""
    model = build_model(config, "numpy", RNG(4))
    nl.to_dtype(model.layers, np.float64)
    ref = build_model(config, "torch", RNG(4))
    for layer in ref.layers:
        for name, p in layer.named_parameters():
            setattr(layer, name, p.detach().double().requires_grad_())
        for name, b in layer.named_buffers():
            setattr(layer, name, b.double())
    ref._params = {f"layers.{n}": p for n, p in ref.net.named_parameters()}
    X, Y = batch(config)
    _, loss = model.forward(X, Y)
    model.backward()
    _, ref_loss = ref.forward(X, Y)
    ref.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    ref_params = dict(zip(model._named_parameters(), ref.parameters()))
    for p in model.parameters():
        np.testing.assert_allclose(p.grad, ref_params[p.name].grad.numpy(), rtol=1e-8, atol=1e-12,
                                   err_msg=p.name)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_numpy_gradient_by_finite_differences(config):
    model = build_model(config, "numpy", RNG(5))
    nl.to_dtype(model.layers, np.float64)
    X, Y = batch(config, B=8, seed=2)
    model.forward(X, Y)
    model.backward()
    for p in model.parameters():
        picks, fd = finite_difference(lambda: model.forward(X, Y)[1], p.data, n=6)
        np.testing.assert_allclose(p.grad.reshape(-1)[picks], fd, rtol=1e-5, atol=1e-8, err_msg=p.name)


def _grads(model) -> list[np.ndarray]:
    return [np.asarray(p.grad.detach() if hasattr(p.grad, "detach") else p.grad)
            for p in model.parameters()]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_backends_agree_over_sgd_steps(config):
    """numpy, raw torch and nn.Module: same init, same logits, grads and running stats."""
    models = {b: build_model(config, b, RNG(9)) for b in ("numpy", "torch", "torch-module")}
    states = {b: m.state_dict() for b, m in models.items()}
    for b in ("torch", "torch-module"):
        assert list(states[b]) == list(states["numpy"])
        for name in states["numpy"]:
            np.testing.assert_array_equal(states[b][name], states["numpy"][name])
    opts = {"numpy": SGD(models["numpy"].parameters(), lr=0.1)}
    for b in ("torch", "torch-module"):
        opts[b] = torch.optim.SGD(models[b].parameters(), lr=0.1)
    for step in range(3):
        X, Y = batch(config, seed=step)
        out = {}
        for b, m in models.items():
            m.train()
            logits, loss = m.forward(X, Y)
            m.backward()
            out[b] = (np.asarray(logits.detach() if hasattr(logits, "detach") else logits),
                      float(loss.detach() if hasattr(loss, "detach") else loss), _grads(m))
            opts[b].step()
        for b in ("torch", "torch-module"):
            np.testing.assert_allclose(out[b][0], out["numpy"][0], rtol=1e-4, atol=1e-5)
            assert out[b][1] == pytest.approx(out["numpy"][1], abs=1e-5)
            for g, g_ref in zip(out[b][2], out["numpy"][2]):
                np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-6)
    final = {b: m.state_dict() for b, m in models.items()}
    for b in ("torch", "torch-module"):
        for name in final["numpy"]:
            np.testing.assert_allclose(final[b][name], final["numpy"][name], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{b} {name}")


@pytest.mark.parametrize("backend", ["numpy", "torch", "torch-module"])
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_eval_mode_uses_and_keeps_running_statistics(config, backend):
    model = build_model(config, backend, RNG(10))
    for seed in range(3):
        X, Y = batch(config, seed=seed)
        model.train()
        model.forward(X, Y)
    before = model.state_dict()
    model.eval()
    X, _ = batch(config, B=1, seed=7)   # a single example works in eval mode
    a = model.forward(X)[0]
    b = model.forward(np.concatenate([X, batch(config, B=5, seed=8)[0]]))[0][:1]
    # in eval mode an example's logits do not depend on the rest of the batch
    a, b = (np.asarray(t.detach() if hasattr(t, "detach") else t) for t in (a, b))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    after = model.state_dict()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    assert any("running_mean" in n for n in before)


@pytest.mark.parametrize("backend", ["numpy", "torch", "torch-module"])
def test_evaluation_and_sampling_never_change_running_statistics(backend):
    """Sampling feeds one example at a time: only eval mode makes that meaningful."""
    from tinylm import data
    from tinylm.batches import make_split
    from tinylm.sample import sample_items, sample_tokens
    from tinylm.train import evaluate

    lines = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia", "harper"] * 4
    tok = data.Tokenizer.from_lines(lines)
    config = ModelConfig("wavenet", vocab_size=tok.vocab_size, context=4, n_embd=3, n_hidden=8)
    model = build_model(config, backend, RNG(12))
    split = make_split("val", lines, tok, 4, "words")
    model.train()
    model.forward(split.X[:32], split.Y[:32])   # move the running statistics off their start
    before = model.state_dict()
    evaluate(model, split, 16)
    items = sample_items(model, tok, 5, RNG(1))
    sample_tokens(model, tok, "em", 20, RNG(2))
    assert len(items) == 5 and model.training   # back in training mode afterwards
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_recipes_hold_the_classic_protocols():
    from tinylm.optim import lr_at
    from tinylm.recipes import get_recipe
    from tinylm.runs import resolve_configs

    common = dict(loader="words", batch_size=32, steps=200_000, optimizer="sgd", lr=0.1,
                  lr_schedule="step")
    bn = get_recipe("bnmlp-classic").settings
    assert bn.items() >= dict(model="bnmlp", context=3, n_embd=10, n_hidden=100, n_layers=5,
                              **common).items()
    wave = get_recipe("wavenet-classic").settings
    assert wave.items() >= dict(model="wavenet", context=8, n_embd=24, n_hidden=128, **common).items()
    assert lr_at(149_999, 200_000, 0.1, "step") == 0.1
    assert lr_at(150_000, 200_000, 0.1, "step") == pytest.approx(0.01)
    # a plain --model wavenet gets a context its levels can fuse
    assert resolve_configs("wavenet", None, {})[0].context == 8


def test_cli_trains_and_diagnoses_a_wavenet(tmp_path, capsys, monkeypatch):
    import json

    from tinylm import diagnostics
    from tinylm.cli import main

    run, names = tmp_path / "run", tmp_path / "names.txt"
    names.write_text("\n".join(["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte",
                                "amelia", "harper", "evelyn", "abigail", "emily"] * 5) + "\n")
    monkeypatch.setattr(diagnostics, "INITIAL_LOSS_TOLERANCE", 0.0)  # always warn, to see it
    argv = ["train", "-i", str(names), "--model", "wavenet", "--context", "4", "--n-embd", "4", "--n-hidden", "8",
            "--steps", "20", "--eval-every", "10", "--eval-train-batches", "2",
            "--diagnose-every", "5", "-n", "2", "-o", str(run)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    vocab = len(set("".join(names.read_text().split()))) + 1
    assert "initial loss" in out and f"ln({vocab}) = {math.log(vocab):.4f}" in out
    assert "warning: the initial loss" in err
    assert "diagnostics at step 20" in out
    history = [json.loads(line) for line in (run / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [0, 5, 10, 15, 20]
    from tinylm.runs import open_run

    saved = open_run(run).model.state_dict()   # the running statistics travel with the weights
    assert np.any(saved["layers.3.running_mean"] != 0) and np.any(saved["layers.3.running_var"] != 1)

    assert main(["diagnose", "-o", str(run), "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "layers.4 (tanh)" in out and "log10 upd:data" in out and "at step 20" in out
    for name in ("activations", "gradients", "weight_gradients", "update_ratios", "loss"):
        png = run / "diagnostics" / f"{name}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG", name

    assert main(["diagnose", "-o", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_init_setting_reaches_the_model_and_old_configs_still_load():
    from tinylm.runs import resolve_configs

    mconfig, _ = resolve_configs("bnmlp", None, {"init": "naive"}, vocab_size=27)
    assert mconfig.init == "naive" and build_model(mconfig, "numpy", RNG(1)).config.init == "naive"
    saved = mconfig.to_dict()
    del saved["init"]   # a run saved before the setting existed
    assert ModelConfig.from_dict(saved).init == "default"
