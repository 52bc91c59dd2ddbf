"""Model configs, the canonical initialisation, and the model interface on every backend."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tinylm.errors import CheckpointError, ConfigError
from tinylm.layers import numpy_layers as nl
from tinylm.models import BACKENDS, MODELS, ModelConfig, build_model
from tinylm.rng import RNG

from gradcheck import finite_difference


def f32(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float64).astype(np.float32)


def test_mlp_init_is_the_canonical_scalar_sequence():
    V, T, E, H = 27, 3, 10, 200
    config = ModelConfig("mlp", vocab_size=V, context=T, n_embd=E, n_hidden=H)
    rng = RNG(42)
    expected = {"layers.0.weight": f32(rng.randn(V * E, 0, 1)).reshape(V, E)}
    s = 1 / math.sqrt(T * E)
    expected["layers.2.weight"] = f32(rng.rand(H * T * E, -s, s)).reshape(H, T * E)
    expected["layers.2.bias"] = f32(rng.rand(H, -s, s))
    s = 1 / math.sqrt(H)
    expected["layers.4.weight"] = f32(rng.rand(V * H, -s, s)).reshape(V, H)
    expected["layers.4.bias"] = f32(rng.rand(V, -s, s))
    after = rng.get_state()
    for backend in ("numpy", "torch", "torch-module"):
        build_rng = RNG(42)
        state = build_model(config, backend, build_rng).state_dict()
        assert list(state) == list(expected)
        for name, want in expected.items():
            assert state[name].dtype == np.float32
            np.testing.assert_array_equal(state[name], want, err_msg=f"{backend} {name}")
        assert build_rng.get_state() == after  # drew exactly these numbers, no more


def test_micrograd_init_holds_the_same_float32_values():
    config = ModelConfig("mlp", vocab_size=27, context=3, n_embd=2, n_hidden=4)
    ref = build_model(config, "numpy", RNG(9)).state_dict()
    mg = build_model(config, "micrograd", RNG(9)).state_dict()
    for name in ref:
        assert mg[name].dtype == np.float64
        np.testing.assert_array_equal(mg[name], ref[name].astype(np.float64))


def test_bigram_init_and_loss():
    V = 27
    model = build_model(ModelConfig("bigram", vocab_size=V, context=1), "numpy", RNG(5))
    W = model.state_dict()["layers.0.weight"]
    np.testing.assert_array_equal(W, f32(RNG(5).randn(V * V)).reshape(V, V))
    X = np.array([[0], [4], [4], [26]])
    Y = np.array([1, 2, 3, 0])
    logits, loss = model.forward(X, Y)
    onehot = np.eye(V, dtype=np.float32)[X[:, 0]]
    np.testing.assert_allclose(logits, onehot @ W, rtol=1e-6)       # a row lookup is one-hot @ W
    logprobs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    nll = -logprobs[np.arange(4), Y].mean()
    assert loss == pytest.approx(nll + 0.01 * np.mean(W.astype(np.float64) ** 2), rel=1e-6)


def test_bigram_reads_only_the_last_token():
    config = ModelConfig("bigram", vocab_size=10, context=3)
    model = build_model(config, "numpy", RNG(5))
    a = model.forward(np.array([[1, 2, 7]]))[0]
    b = model.forward(np.array([[5, 0, 7]]))[0]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["mlp", "bigram"])
def test_numpy_model_gradient_by_finite_differences(name):
    """The whole model, penalty included, in float64."""
    config = ModelConfig(name, vocab_size=8, context=2, n_embd=3, n_hidden=5, reg=0.5)
    model = build_model(config, "numpy", RNG(3))
    nl.to_dtype(model.layers, np.float64)
    rs = np.random.RandomState(0)
    X, Y = rs.randint(0, 8, size=(6, 2)), rs.randint(0, 8, size=6)
    model.forward(X, Y)
    model.backward()
    for p in model.parameters():
        picks, fd = finite_difference(lambda: model.forward(X, Y)[1], p.data, n=8)
        np.testing.assert_allclose(p.grad.reshape(-1)[picks], fd, rtol=1e-5, atol=1e-8, err_msg=p.name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_model_interface(backend):
    config = ModelConfig("mlp", vocab_size=7, context=2, n_embd=2, n_hidden=3)
    model = build_model(config, backend, RNG(1))
    assert model.backend == backend and model.config is config and model.context == 2
    assert len(model.layers) == 5 and model.training
    assert model.num_params() == 7 * 2 + 3 * 4 + 3 + 7 * 3 + 7
    logits, loss = model.forward(np.array([[0, 1], [2, 3]]))
    assert loss is None and tuple(logits.shape) == (2, 7)
    assert model.layers[3].out is not None
    with pytest.raises(ValueError, match="idx"):
        model.forward(np.array([[0], [1]]))
    model.eval()
    assert not model.training
    assert model.train() is model and model.training


def test_load_state_dict_refuses_what_does_not_fit():
    config = ModelConfig("mlp", vocab_size=7, context=2, n_embd=2, n_hidden=3)
    model = build_model(config, "numpy", RNG(1))
    state = model.state_dict()
    del state["layers.4.bias"]
    with pytest.raises(CheckpointError, match="missing layers.4.bias"):
        model.load_state_dict(state)
    state = model.state_dict()
    state["layers.9.weight"] = np.zeros(3)
    with pytest.raises(CheckpointError, match="unexpected layers.9.weight"):
        model.load_state_dict(state)
    state = model.state_dict()
    state["layers.2.weight"] = state["layers.2.weight"].T
    with pytest.raises(CheckpointError, match="shape"):
        model.load_state_dict(state)
    # loading copies: changing the source afterwards changes nothing
    state = model.state_dict()
    model.load_state_dict(state)
    state["layers.0.weight"][...] = 0
    assert np.any(model.state_dict()["layers.0.weight"] != 0)


def test_config_round_trip_and_validation():
    config = ModelConfig("mlp", vocab_size=27, context=8, n_embd=24, n_hidden=128)
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert set(MODELS) >= {"bigram", "mlp"}
    with pytest.raises(ConfigError, match="unknown model"):
        ModelConfig("lstm", vocab_size=27)
    for field, value in [("vocab_size", 0), ("context", -1), ("n_hidden", 2.5), ("n_embd", True)]:
        with pytest.raises(ConfigError, match=field):
            ModelConfig.from_dict({"model": "mlp", "vocab_size": 27, field: value})
    with pytest.raises(ConfigError, match="reg"):
        ModelConfig("bigram", vocab_size=27, reg=-1.0)
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field\(s\): colour"):
        ModelConfig.from_dict({**config.to_dict(), "colour": "blue"})
    with pytest.raises(ConfigError, match="vocab_size"):
        ModelConfig.from_dict({"model": "mlp"})
    with pytest.raises(ConfigError):
        ModelConfig.from_dict(["mlp"])


def test_build_model_refuses_unknown_backend_and_init():
    with pytest.raises(ConfigError, match="backend"):
        build_model(ModelConfig("mlp", vocab_size=27), "jax", RNG(1))
    with pytest.raises(ConfigError, match="init"):
        build_model(ModelConfig("mlp", vocab_size=27, init="kaiming"), "numpy", RNG(1))


def test_a_few_steps_of_training_lower_the_loss():
    from tinylm.optim import make_optimizer

    rs = np.random.RandomState(0)
    X = rs.randint(0, 10, size=(64, 3))
    Y = (X.sum(axis=1) % 10)  # a learnable rule
    model = build_model(ModelConfig("mlp", vocab_size=10, n_embd=4, n_hidden=32), "numpy", RNG(2))
    opt = make_optimizer(model, "adamw", lr=1e-2)
    first = model.forward(X, Y)[1]
    for _ in range(100):
        model.forward(X, Y)
        model.backward()
        opt.step()
    assert model.forward(X, Y)[1] < first - 1.0


@pytest.mark.parametrize("name", ["transformer", "rnn", "gru"])
def test_sequence_checkpoints_load_into_every_backend(name):
    """A sequence model's state dict, from any backend, loads into any other (PyTorch's
    dotted names, no "layers." prefix) and gives the same logits at every position."""
    pytest.importorskip("torch")
    config = ModelConfig(name, vocab_size=13, block_size=7, n_embd=8, n_heads=2, n_layers=2,
                         n_embd2=6)
    trained = build_model(config, "numpy", RNG(3))
    state = trained.state_dict()
    rs = np.random.RandomState(0)
    for key in state:
        state[key] = state[key] + 0.1 * rs.randn(*state[key].shape).astype(np.float32)
    trained.load_state_dict(state)
    idx = rs.randint(0, 13, size=(3, 7))
    reference, _ = trained.forward(idx)
    if name == "transformer":
        assert "blocks.1.attn.qkv.weight" in state and "lm_head.weight" in state
    for backend in ("torch", "torch-module"):
        model = build_model(config, backend, RNG(99))
        model.load_state_dict(state)
        logits, _ = model.forward(idx)
        np.testing.assert_allclose(logits.detach().numpy(), reference, rtol=1e-5, atol=1e-5)
        back = build_model(config, "numpy", RNG(5))
        back.load_state_dict(model.state_dict())
        assert all(np.array_equal(back.state_dict()[k], state[k]) for k in state)
