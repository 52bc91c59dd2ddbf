"""Backpropagation by hand through a whole BatchNorm MLP, checked against PyTorch.

The network is the 2-layer language model of the deep-MLP chapter::

    emb = C[X]                     (B, T, n_embd)   embedding lookup
    embcat                         (B, T*n_embd)
    hprebn = embcat @ W1 + b1      (B, n_hidden)
    BatchNorm (biased batch variance, as torch normalises)
    h = tanh(hpreact)              (B, n_hidden)
    logits = h @ W2 + b2           (B, vocab_size)
    loss = cross-entropy(logits, Y)

Every intermediate of the forward pass is kept, the gradient of the loss
with respect to each is derived by hand in numpy (float64), and each one is
compared with the gradient PyTorch autograd computes for the same tensor.
The BatchNorm and cross-entropy steps are then redone in their compact
closed forms and compared with the step-by-step chain.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

VOCAB, CONTEXT, N_EMBD, N_HIDDEN, B = 27, 3, 10, 64, 32
EPS = 1e-5


def _params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    # Non-trivial gain/bias and biases so that no gradient is accidentally zero.
    fan_in = CONTEXT * N_EMBD
    return {
        "C": rng.standard_normal((VOCAB, N_EMBD)),
        "W1": rng.standard_normal((fan_in, N_HIDDEN)) * (5 / 3) / fan_in**0.5,
        "b1": rng.standard_normal(N_HIDDEN) * 0.1,
        "W2": rng.standard_normal((N_HIDDEN, VOCAB)) * 0.1,
        "b2": rng.standard_normal(VOCAB) * 0.1,
        "bngain": 1.0 + rng.standard_normal(N_HIDDEN) * 0.1,
        "bnbias": rng.standard_normal(N_HIDDEN) * 0.1,
    }


def _torch_forward(p: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray):
    """The forward pass in float64 torch, every intermediate a leaf of retained grad."""
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p.items()}
    Xt, Yt = torch.tensor(X), torch.tensor(Y)
    n = X.shape[0]
    v: dict[str, torch.Tensor] = {}
    v["emb"] = t["C"][Xt]                                     # (B, T, n_embd)
    v["embcat"] = v["emb"].view(n, -1)                        # (B, T*n_embd)
    v["hprebn"] = v["embcat"] @ t["W1"] + t["b1"]             # (B, n_hidden)
    v["bnmeani"] = v["hprebn"].sum(0, keepdim=True) / n       # (1, n_hidden)
    v["bndiff"] = v["hprebn"] - v["bnmeani"]                  # (B, n_hidden)
    v["bndiff2"] = v["bndiff"] ** 2                           # (B, n_hidden)
    v["bnvar"] = v["bndiff2"].sum(0, keepdim=True) / n        # (1, n_hidden) biased
    v["bnvar_inv"] = (v["bnvar"] + EPS) ** -0.5               # (1, n_hidden)
    v["bnraw"] = v["bndiff"] * v["bnvar_inv"]                 # (B, n_hidden)
    v["hpreact"] = t["bngain"] * v["bnraw"] + t["bnbias"]     # (B, n_hidden)
    v["h"] = torch.tanh(v["hpreact"])                         # (B, n_hidden)
    v["logits"] = v["h"] @ t["W2"] + t["b2"]                  # (B, vocab)
    v["logit_maxes"] = v["logits"].max(1, keepdim=True).values  # (B, 1)
    v["norm_logits"] = v["logits"] - v["logit_maxes"]         # (B, vocab)
    v["counts"] = v["norm_logits"].exp()                      # (B, vocab)
    v["counts_sum"] = v["counts"].sum(1, keepdim=True)        # (B, 1)
    v["counts_sum_inv"] = v["counts_sum"] ** -1               # (B, 1)
    v["probs"] = v["counts"] * v["counts_sum_inv"]            # (B, vocab)
    v["logprobs"] = v["probs"].log()                          # (B, vocab)
    loss = -v["logprobs"][torch.arange(n), Yt].mean()
    for x in v.values():
        x.retain_grad()
    loss.backward()
    return t, v, loss


def _manual(p: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray):
    """Forward and hand-derived backward in numpy; returns (values, grads, loss)."""
    n = X.shape[0]
    # forward
    emb = p["C"][X]                                           # (B, T, n_embd)
    embcat = emb.reshape(n, -1)                               # (B, T*n_embd)
    hprebn = embcat @ p["W1"] + p["b1"]                       # (B, n_hidden)
    bnmeani = hprebn.sum(0, keepdims=True) / n                # (1, n_hidden)
    bndiff = hprebn - bnmeani                                 # (B, n_hidden)
    bndiff2 = bndiff**2                                       # (B, n_hidden)
    bnvar = bndiff2.sum(0, keepdims=True) / n                 # (1, n_hidden)
    bnvar_inv = (bnvar + EPS) ** -0.5                         # (1, n_hidden)
    bnraw = bndiff * bnvar_inv                                # (B, n_hidden)
    hpreact = p["bngain"] * bnraw + p["bnbias"]               # (B, n_hidden)
    h = np.tanh(hpreact)                                      # (B, n_hidden)
    logits = h @ p["W2"] + p["b2"]                            # (B, vocab)
    logit_maxes = logits.max(1, keepdims=True)                # (B, 1)
    norm_logits = logits - logit_maxes                        # (B, vocab)
    counts = np.exp(norm_logits)                              # (B, vocab)
    counts_sum = counts.sum(1, keepdims=True)                 # (B, 1)
    counts_sum_inv = counts_sum**-1                           # (B, 1)
    probs = counts * counts_sum_inv                           # (B, vocab)
    logprobs = np.log(probs)                                  # (B, vocab)
    rows = np.arange(n)
    loss = -logprobs[rows, Y].mean()

    # backward, one line per forward line, in reverse
    g: dict[str, np.ndarray] = {}
    g["logprobs"] = np.zeros_like(logprobs)
    g["logprobs"][rows, Y] = -1.0 / n                                      # (B, vocab)
    g["probs"] = g["logprobs"] / probs                                     # (B, vocab)
    g["counts_sum_inv"] = (g["probs"] * counts).sum(1, keepdims=True)      # (B, 1)
    g["counts_sum"] = g["counts_sum_inv"] * -(counts_sum**-2)              # (B, 1)
    # counts feeds probs directly and through counts_sum: the two paths add
    g["counts"] = g["probs"] * counts_sum_inv + g["counts_sum"]            # (B, vocab)
    g["norm_logits"] = g["counts"] * counts                                # (B, vocab)
    g["logit_maxes"] = -g["norm_logits"].sum(1, keepdims=True)             # (B, 1)
    # the max only routes gradient to the winning entry of each row
    onehot = np.zeros_like(logits)
    onehot[rows, logits.argmax(1)] = 1.0
    g["logits"] = g["norm_logits"] + onehot * g["logit_maxes"]             # (B, vocab)
    g["h"] = g["logits"] @ p["W2"].T                                       # (B, n_hidden)
    g["W2"] = h.T @ g["logits"]                                            # (n_hidden, vocab)
    g["b2"] = g["logits"].sum(0)                                           # (vocab,)
    g["hpreact"] = (1.0 - h**2) * g["h"]                                   # (B, n_hidden)
    g["bngain"] = (bnraw * g["hpreact"]).sum(0)                            # (n_hidden,)
    g["bnbias"] = g["hpreact"].sum(0)                                      # (n_hidden,)
    g["bnraw"] = p["bngain"] * g["hpreact"]                                # (B, n_hidden)
    g["bnvar_inv"] = (bndiff * g["bnraw"]).sum(0, keepdims=True)           # (1, n_hidden)
    g["bnvar"] = -0.5 * (bnvar + EPS) ** -1.5 * g["bnvar_inv"]             # (1, n_hidden)
    g["bndiff2"] = np.ones_like(bndiff2) / n * g["bnvar"]                  # (B, n_hidden)
    # bndiff feeds bnraw directly and bnvar through bndiff2
    g["bndiff"] = g["bnraw"] * bnvar_inv + 2 * bndiff * g["bndiff2"]       # (B, n_hidden)
    g["bnmeani"] = -g["bndiff"].sum(0, keepdims=True)                      # (1, n_hidden)
    g["hprebn"] = g["bndiff"] + np.ones_like(hprebn) / n * g["bnmeani"]    # (B, n_hidden)
    g["embcat"] = g["hprebn"] @ p["W1"].T                                  # (B, T*n_embd)
    g["W1"] = embcat.T @ g["hprebn"]                                       # (T*n_embd, n_hidden)
    g["b1"] = g["hprebn"].sum(0)                                           # (n_hidden,)
    g["emb"] = g["embcat"].reshape(emb.shape)                              # (B, T, n_embd)
    g["C"] = np.zeros_like(p["C"])
    np.add.at(g["C"], X, g["emb"])                                         # (vocab, n_embd)
    values = dict(logits=logits, probs=probs, hprebn=hprebn, bnraw=bnraw, bnvar=bnvar,
                  bnvar_inv=bnvar_inv, h=h)
    return values, g, loss


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(1234)
    p = _params(rng)
    X = rng.integers(0, VOCAB, size=(B, CONTEXT))
    Y = rng.integers(0, VOCAB, size=B)
    t, v, loss = _torch_forward(p, X, Y)
    values, grads, manual_loss = _manual(p, X, Y)
    return p, X, Y, t, v, loss, values, grads, manual_loss


INTERMEDIATES = ["logprobs", "probs", "counts_sum_inv", "counts_sum", "counts", "norm_logits",
                 "logit_maxes", "logits", "h", "hpreact", "bnraw", "bnvar_inv", "bnvar",
                 "bndiff2", "bndiff", "bnmeani", "hprebn", "embcat", "emb"]
PARAMS = ["W2", "b2", "bngain", "bnbias", "W1", "b1", "C"]


def test_loss_matches(case):
    *_, loss, _, _, manual_loss = case
    assert manual_loss == pytest.approx(loss.item(), rel=1e-12)


@pytest.mark.parametrize("name", INTERMEDIATES)
def test_intermediate_gradient_matches_torch(case, name):
    _, _, _, _, v, _, _, grads, _ = case
    ref = v[name].grad.numpy()
    np.testing.assert_allclose(grads[name], ref, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("name", PARAMS)
def test_parameter_gradient_matches_torch(case, name):
    _, _, _, t, _, _, _, grads, _ = case
    np.testing.assert_allclose(grads[name], t[name].grad.numpy(), rtol=1e-9, atol=1e-12,
                               err_msg=name)


def test_cross_entropy_closed_form(case):
    """dlogits = (softmax(logits) - onehot(Y)) / B, in one step."""
    _, X, Y, _, _, _, values, grads, _ = case
    dlogits = values["probs"].copy()
    dlogits[np.arange(len(Y)), Y] -= 1.0
    dlogits /= len(Y)
    np.testing.assert_allclose(dlogits, grads["logits"], rtol=1e-9, atol=1e-14)


def test_batchnorm_closed_form(case):
    """dx = inv_std / n * (n*dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)), dxhat = gain * dy."""
    p, *_, values, grads, _ = case
    n = values["hprebn"].shape[0]
    xhat, inv = values["bnraw"], values["bnvar_inv"]
    dxhat = p["bngain"] * grads["hpreact"]
    dx = inv / n * (n * dxhat - dxhat.sum(0) - xhat * (dxhat * xhat).sum(0))
    np.testing.assert_allclose(dx, grads["hprebn"], rtol=1e-8, atol=1e-13)
