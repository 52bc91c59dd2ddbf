"""Every layer of the vocabulary, on every backend that has it, against one reference.

One row of ``ROWS`` per layer configuration: how to build it from a backend
module, its input, train or eval mode, the backends that have it, and a
PyTorch float64 reference written with ``torch.nn.functional`` from the
row's weights alone (independent of tinylm's own torch layers, so that a
bug shared by the backends still shows). For every row:

* each backend (float32; micrograd: float64 Values from the same float32
  weights), given the same weights by state-dict name, gives the
  reference's output within float32 tolerances (and BatchNorm's updated
  running statistics);
* the numpy layer in float64: its hand-written backward against torch
  float64 autograd of the reference and against central finite differences.

Then the branches a layer-by-layer row does not reach: the embedding's
scatter-add for large vocabularies, attention over cached keys with several
new tokens at once (layer and model), evaluation over several chunks of
unevenly padded rows; the losses; and the vocabulary each backend exports.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinylm import batches
from tinylm.batches import eval_batches, eval_rows, make_split
from tinylm.data import IGNORE, Tokenizer
from tinylm.layers import base
from tinylm.layers import micrograd_layers as ml
from tinylm.layers import numpy_layers as nl
from tinylm.layers import torch_layers as tl
from tinylm.layers import torch_modules as tm
from tinylm.layers.base import Cache
from tinylm.micrograd.engine import Value
from tinylm.models import ModelConfig, build_model
from tinylm.rng import RNG

from gradcheck import finite_difference

MODULES = {"numpy": nl, "torch": tl, "torch-module": tm, "micrograd": ml}
SEQUENCE_BACKENDS = ("numpy", "torch", "torch-module")
FIXED_BACKENDS = SEQUENCE_BACKENDS + ("micrograd",)

# float32 against float64: a few units in the last place of float32, summed over a small net
RTOL32, ATOL32 = 2e-5, 2e-5


# --- the float64 references, from the weights by state-dict name --------------------------------

def ref_linear(P, x, prefix=""):
    return F.linear(x, P[prefix + "weight"], P.get(prefix + "bias"))


def ref_layer_norm(P, x, prefix=""):
    return F.layer_norm(x, x.shape[-1:], P[prefix + "weight"], P[prefix + "bias"], eps=1e-5)


def ref_batch_norm(P, x, training):
    # F.batch_norm updates P's running statistics in place in training (unbiased variance),
    # which is what the backends' own buffers are compared with afterwards
    flat = x.reshape(-1, x.shape[-1])
    out = F.batch_norm(flat, P["running_mean"], P["running_var"], P["weight"], P["bias"],
                       training, 0.1, 1e-5)
    return out.reshape(x.shape)


def ref_flatten_consecutive(x, n):
    # out[b, j] = x[b, j*n], ..., x[b, j*n + n - 1] side by side: slices, not the reshape
    # the layers use
    out = torch.cat([x[:, i::n] for i in range(n)], dim=-1)
    return out[:, 0] if out.shape[1] == 1 else out


def ref_attention(P, x, n_head, prefix="", dropout=None):
    """Causal attention from the weights; with ``dropout`` = (RNG, p), GPT-2's two dropouts,
    their masks drawn from that RNG in forward order (the attention weights', then the
    output's), the softmax written out as SDPA would draw a mask of its own."""
    B, T, C = x.shape
    qkv = F.linear(x, P[prefix + "qkv.weight"], P[prefix + "qkv.bias"])
    q, k, v = (a.reshape(B, T, n_head, C // n_head).transpose(1, 2) for a in qkv.split(C, -1))
    if dropout is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        rng, p = dropout
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(C // n_head)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        att = torch.softmax(scores, dim=-1)
        y = (att * ref_dropout_mask(rng, tuple(att.shape), p)) @ v
    out = F.linear(y.transpose(1, 2).reshape(B, T, C), P[prefix + "proj.weight"],
                   P[prefix + "proj.bias"])
    return out if dropout is None else out * ref_dropout_mask(rng, tuple(out.shape), p)


def ref_block(P, x, n_head, prefix=""):
    h = x + ref_attention(P, ref_layer_norm(P, x, prefix + "ln1."), n_head, prefix + "attn.")
    m = F.gelu(ref_linear(P, ref_layer_norm(P, h, prefix + "ln2."), prefix + "mlp.0."),
               approximate="tanh")
    return h + ref_linear(P, m, prefix + "mlp.2.")


def ref_rnn(P, x, prefix=""):
    h, hs = P[prefix + "start"].expand(x.shape[0], -1), []
    for t in range(x.shape[1]):
        h = torch.tanh(ref_linear(P, torch.cat([x[:, t], h], 1), prefix + "xh_to_h."))
        hs.append(h)
    return torch.stack(hs, 1)


def ref_gru(P, x, prefix=""):
    h, hs = P[prefix + "start"].expand(x.shape[0], -1), []
    for t in range(x.shape[1]):
        xh = torch.cat([x[:, t], h], 1)
        r = torch.sigmoid(ref_linear(P, xh, prefix + "xh_to_r."))
        z = torch.sigmoid(ref_linear(P, xh, prefix + "xh_to_z."))
        hbar = torch.tanh(ref_linear(P, torch.cat([x[:, t], r * h], 1), prefix + "xh_to_hbar."))
        h = (1 - z) * h + z * hbar
        hs.append(h)
    return torch.stack(hs, 1)


def ref_transformer(P, idx, n_head, n_layers):
    T = idx.shape[1]
    x = F.embedding(idx, P["wte.weight"]) + P["wpe.weight"][:T]
    for i in range(n_layers):
        x = ref_block(P, x, n_head, f"blocks.{i}.")
    return F.linear(ref_layer_norm(P, x, "ln_f."), P["lm_head.weight"])


def ref_recurrent_lm(P, idx, cell):
    h = {"rnn": ref_rnn, "gru": ref_gru}[cell](P, F.embedding(idx, P["wte.weight"]), "rnn.")
    return ref_linear(P, h, "lm_head.")


def ref_dropout_mask(rng, shape, p):
    """The documented mask: one ``RNG.random()`` per element in C order, kept when >= p."""
    keep = np.array([rng.random() >= p for _ in range(int(np.prod(shape)))]).reshape(shape)
    return torch.from_numpy(keep / (1 - p))


def token_nll(logits, targets):
    """-log softmax(logits)[target] for every target (float64), 0 where it is IGNORE."""
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    t = torch.as_tensor(np.asarray(targets))
    picked = logp.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(t == IGNORE, torch.zeros_like(picked), -picked)


# --- the table --------------------------------------------------------------------------------

def floats(*shape, scale=1.0):
    return lambda rs: scale * rs.randn(*shape)


def ids(V, *shape):
    return lambda rs: rs.randint(0, V, size=shape)


@dataclass(frozen=True)
class Row:
    """One layer configuration. ``make(L, dt)`` builds it from backend module L, ``dt`` the
    dtype keyword where the layer takes one; ``reference(P, x)`` is its float64 output."""

    name: str
    make: Callable[[Any, dict], Any]
    inputs: Callable[[np.random.RandomState], np.ndarray]
    reference: Callable[[dict, torch.Tensor], torch.Tensor]
    backends: tuple[str, ...] = SEQUENCE_BACKENDS
    training: bool = True
    scale: float = 0.5           # the weights: N(0, scale**2)
    dropout_seed: int | None = None  # Dropout in training: masks from RNG(seed)
    fd_picks: int = 6            # finite differences per array


ROWS = [
    Row("Embedding (B, T)", lambda L, dt: L.Embedding(9, 4, **dt), ids(9, 4, 5),
        lambda P, x: F.embedding(x, P["weight"]), FIXED_BACKENDS, scale=1.0),
    Row("Embedding (B,)", lambda L, dt: L.Embedding(9, 4, **dt), ids(9, 7),
        lambda P, x: F.embedding(x, P["weight"]), FIXED_BACKENDS, scale=1.0),
    Row("Flatten", lambda L, dt: L.Flatten(), floats(3, 4, 2),
        lambda P, x: x.reshape(x.shape[0], -1), FIXED_BACKENDS),
    Row("Linear (B, C)", lambda L, dt: L.Linear(6, 5, **dt), floats(4, 6),
        ref_linear, FIXED_BACKENDS),
    Row("Linear (B, T, C)", lambda L, dt: L.Linear(6, 5, **dt), floats(3, 4, 6),
        ref_linear, FIXED_BACKENDS),
    Row("Linear without bias", lambda L, dt: L.Linear(6, 5, bias=False, **dt), floats(4, 6),
        ref_linear, FIXED_BACKENDS),
    Row("Tanh", lambda L, dt: L.Tanh(), floats(5, 6, scale=2.0),
        lambda P, x: torch.tanh(x), FIXED_BACKENDS),
    Row("Sequential", lambda L, dt: L.Sequential([L.Linear(4, 6, **dt), L.Tanh(),
                                                  L.Linear(6, 3, **dt)]),
        floats(5, 4), lambda P, x: ref_linear(P, torch.tanh(ref_linear(P, x, "0.")), "2."),
        FIXED_BACKENDS),
    Row("BatchNorm1d (B, C) train", lambda L, dt: L.BatchNorm1d(5, **dt), floats(6, 5, scale=2.0),
        lambda P, x: ref_batch_norm(P, x, True)),
    Row("BatchNorm1d (B, T, C) train", lambda L, dt: L.BatchNorm1d(5, **dt),
        floats(3, 4, 5, scale=2.0), lambda P, x: ref_batch_norm(P, x, True)),
    Row("BatchNorm1d (B, T, C) eval", lambda L, dt: L.BatchNorm1d(5, **dt),
        floats(3, 4, 5, scale=2.0), lambda P, x: ref_batch_norm(P, x, False), training=False),
    Row("FlattenConsecutive(2)", lambda L, dt: L.FlattenConsecutive(2), floats(3, 6, 4),
        lambda P, x: ref_flatten_consecutive(x, 2)),
    Row("FlattenConsecutive(2), one group left", lambda L, dt: L.FlattenConsecutive(2),
        floats(3, 2, 4), lambda P, x: ref_flatten_consecutive(x, 2)),
    Row("LayerNorm (B, C)", lambda L, dt: L.LayerNorm(6, **dt), floats(4, 6, scale=3.0),
        ref_layer_norm),
    Row("LayerNorm (B, T, C)", lambda L, dt: L.LayerNorm(6, **dt), floats(3, 5, 6, scale=3.0),
        ref_layer_norm),
    Row("GELU", lambda L, dt: L.GELU(), floats(6, 7, scale=3.0),
        lambda P, x: F.gelu(x, approximate="tanh")),
    Row("Dropout p=0 train", lambda L, dt: L.Dropout(0.0), floats(4, 5), lambda P, x: x),
    Row("Dropout p=0 eval", lambda L, dt: L.Dropout(0.0), floats(4, 5), lambda P, x: x,
        training=False),
    Row("Dropout p=0.3 eval", lambda L, dt: L.Dropout(0.3), floats(4, 5), lambda P, x: x,
        training=False),
    Row("Dropout p=0.3 train", lambda L, dt: L.Dropout(0.3), floats(6, 7),
        lambda P, x: x * ref_dropout_mask(RNG(11), tuple(x.shape), 0.3), dropout_seed=11),
    Row("CausalSelfAttention 1 head", lambda L, dt: L.CausalSelfAttention(8, 1, **dt),
        floats(3, 5, 8), lambda P, x: ref_attention(P, x, 1)),
    Row("CausalSelfAttention 2 heads", lambda L, dt: L.CausalSelfAttention(8, 2, **dt),
        floats(2, 6, 8), lambda P, x: ref_attention(P, x, 2)),
    Row("CausalSelfAttention one position", lambda L, dt: L.CausalSelfAttention(8, 2, **dt),
        floats(3, 1, 8), lambda P, x: ref_attention(P, x, 2)),
    # dropout on the attention weights: torch.nn's attention writes its softmax out here
    Row("CausalSelfAttention dropout train", lambda L, dt: L.CausalSelfAttention(8, 2, 0.25, **dt),
        floats(2, 5, 8), lambda P, x: ref_attention(P, x, 2, dropout=(RNG(12), 0.25)),
        dropout_seed=12),
    Row("Block", lambda L, dt: L.Block(8, 2, **dt), floats(2, 5, 8),
        lambda P, x: ref_block(P, x, 2), fd_picks=3),
    Row("RNN", lambda L, dt: L.RNN(5, 4, **dt), floats(3, 6, 5), ref_rnn, scale=0.7),
    Row("GRU", lambda L, dt: L.GRU(5, 4, **dt), floats(3, 6, 5), ref_gru, scale=0.7),
    # T = 6 of a block of 8: the position embeddings of the first T positions only
    Row("Transformer", lambda L, dt: L.Transformer(11, 8, 8, 2, 2, **dt), ids(11, 3, 6),
        lambda P, x: ref_transformer(P, x, 2, 2), scale=0.4, fd_picks=2),
    Row("RecurrentLM rnn", lambda L, dt: L.RecurrentLM(11, 5, 6, "rnn", **dt), ids(11, 3, 6),
        lambda P, x: ref_recurrent_lm(P, x, "rnn"), scale=0.5, fd_picks=3),
    Row("RecurrentLM gru", lambda L, dt: L.RecurrentLM(11, 5, 6, "gru", **dt), ids(11, 3, 6),
        lambda P, x: ref_recurrent_lm(P, x, "gru"), scale=0.5, fd_picks=3),
]
ROW = {row.name: row for row in ROWS}


def dtype_kw(backend: str, float64: bool = False) -> dict:
    """The dtype keyword a backend's layer takes (nn.Modules and micrograd take none)."""
    if float64:
        return {"numpy": {"dtype": np.float64}, "torch": {"dtype": torch.float64}}[backend]
    return {}


def _rs(row: Row, salt: str = "") -> np.random.RandomState:
    return np.random.RandomState(zlib.crc32((row.name + salt).encode()))


def row_state(row: Row) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The row's weights and buffers by state-dict name, float32 (so that every backend holds
    them exactly and the float64 reference sees the very same numbers)."""
    layer = row.make(nl, {})
    rs = _rs(row, "weights")
    params = {name: (row.scale * rs.randn(*p.data.shape)).astype(np.float32)
              for name, p in layer.named_parameters()}
    buffers = {}
    for name, b in layer.named_buffers():  # BatchNorm's running statistics, away from 0 and 1
        value = np.abs(rs.randn(*b.shape)) + 0.5 if name.endswith("var") else rs.randn(*b.shape)
        buffers[name] = value.astype(np.float32)
    return params, buffers


def _owner(layer, dotted: str):
    *path, attr = dotted.split(".")
    for part in path:
        layer = layer.layers[int(part)] if part.isdigit() else getattr(layer, part)
    return layer, attr


def load(layer, backend: str, params: dict, buffers: dict) -> None:
    """Copy the weights into ``layer`` through its own ``named_parameters()``, checking that
    it names them as the numpy layer does."""
    own = dict(layer.named_parameters())
    assert list(own) == list(params), f"{backend} names its parameters differently"
    for name, value in params.items():
        p = own[name]
        if backend == "numpy":
            p.data[...] = value
        elif backend == "micrograd":
            for v, x in zip(ml.leaves(p), value.reshape(-1).tolist()):
                v.data = float(x)
        else:
            with torch.no_grad():
                p.copy_(torch.from_numpy(value))
    assert [name for name, _ in layer.named_buffers()] == list(buffers)
    for name, value in buffers.items():
        if backend == "torch-module":
            layer.get_buffer(name).copy_(torch.from_numpy(value))
        elif backend == "torch":
            getattr(*_owner(layer, name)).copy_(torch.from_numpy(value))
        else:
            owner, attr = _owner(layer, name)
            setattr(owner, attr, value.astype(getattr(owner, attr).dtype))


def read_buffers(layer, backend: str) -> dict[str, np.ndarray]:
    return {name: (b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b))
            for name, b in layer.named_buffers()}


def seed_dropout(layer, seed: int | None) -> None:
    """A fresh RNG(seed) for every Dropout inside ``layer`` (tinylm layers or nn.Modules)."""
    if seed is None:
        return
    rng = RNG(seed)
    for sub in (layer.modules() if isinstance(layer, torch.nn.Module) else base.walk(layer)):
        if getattr(sub, "draws_from_rng", False):
            sub.rng = rng


def as_values(a: np.ndarray):
    return [as_values(x) for x in a] if a.ndim > 1 else [Value(float(x)) for x in a]


def run(layer, backend: str, x: np.ndarray) -> np.ndarray:
    """The layer's float32 forward pass (micrograd: Values) as a float64 numpy array."""
    is_ids = x.dtype.kind == "i"
    if backend == "numpy":
        out = layer(x if is_ids else x.astype(np.float32))
        assert out.dtype == np.float32  # computed in the parameters' and the input's dtype
        return out.astype(np.float64)
    if backend == "micrograd":
        out = layer(x if is_ids else as_values(x.astype(np.float32)))
        return np.array([*_data(out)], dtype=np.float64)
    xt = torch.from_numpy(x if is_ids else x.astype(np.float32))
    with torch.no_grad():
        out = layer(xt)
    assert out.dtype == torch.float32
    return out.numpy().astype(np.float64)


def _data(nested):
    return [_data(v) for v in nested] if isinstance(nested, list) else nested.data


def reference(row: Row, x: np.ndarray, params: dict, buffers: dict, grad: bool = False):
    """(P, x tensor, output) of the row's float64 reference."""
    P = {name: torch.tensor(v, dtype=torch.float64, requires_grad=grad)
         for name, v in params.items()}
    P.update({name: torch.tensor(v, dtype=torch.float64) for name, v in buffers.items()})
    if x.dtype.kind == "i":
        xt = torch.from_numpy(x)
    else:
        xt = torch.tensor(x.astype(np.float32), dtype=torch.float64, requires_grad=grad)
    return P, xt, row.reference(P, xt)


CASES = [(row.name, backend) for row in ROWS for backend in row.backends]


@pytest.mark.parametrize("name, backend", CASES)
def test_forward_matches_the_float64_reference(name, backend):
    row = ROW[name]
    params, buffers = row_state(row)
    x = row.inputs(_rs(row, "x"))
    layer = row.make(MODULES[backend], dtype_kw(backend))
    load(layer, backend, params, buffers)
    layer.train(row.training)
    seed_dropout(layer, row.dropout_seed)
    out = run(layer, backend, x)
    P, _, ref = reference(row, x, params, buffers)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out, ref.numpy(), rtol=RTOL32, atol=ATOL32)
    # BatchNorm in training: its running statistics moved as PyTorch's do (unbiased variance)
    for bname, value in read_buffers(layer, backend).items():
        np.testing.assert_allclose(value, P[bname].numpy(), rtol=RTOL32, atol=ATOL32,
                                   err_msg=bname)


NUMPY_ROWS = [row.name for row in ROWS]


@pytest.mark.parametrize("name", NUMPY_ROWS)
def test_numpy_backward_matches_autograd_and_finite_differences(name):
    """float64: the hand-written backward of every numpy layer against torch autograd of the
    reference and against central finite differences, for the input and every weight."""
    row = ROW[name]
    params, buffers = row_state(row)
    x = row.inputs(_rs(row, "x"))
    x64 = x if x.dtype.kind == "i" else x.astype(np.float32).astype(np.float64)
    layer = row.make(nl, dtype_kw("numpy", float64=True))
    load(layer, "numpy", params, buffers)
    layer.train(row.training)
    assert all(p.data.dtype == np.float64 for p in layer.parameters())

    def forward():
        # the running statistics move with every training pass; the output does not read them
        seed_dropout(layer, row.dropout_seed)
        return layer(x64)

    out = forward()
    R = _rs(row, "R").randn(*out.shape)
    dx = layer.backward(R)
    grads = {pname: p.grad.copy() for pname, p in layer.named_parameters()}

    P, xt, ref = reference(row, x64, params, buffers, grad=True)
    (ref * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    if x.dtype.kind == "i":
        assert dx is None  # token ids are not differentiable
    else:
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    for pname, g in grads.items():
        np.testing.assert_allclose(g, P[pname].grad.numpy(), rtol=1e-9, atol=1e-11,
                                   err_msg=pname)

    loss = lambda: float((forward() * R).sum())  # noqa: E731
    arrays = [(x64, dx)] if x.dtype.kind == "f" else []
    arrays += [(p.data, grads[pname]) for pname, p in layer.named_parameters()]
    for array, grad in arrays:
        picks, fd = finite_difference(loss, array, n=row.fd_picks)
        np.testing.assert_allclose(grad.reshape(-1)[picks], fd, rtol=1e-5, atol=1e-7)


MICROGRAD_ROWS = [row.name for row in ROWS if "micrograd" in row.backends]


@pytest.mark.parametrize("name", MICROGRAD_ROWS)
def test_micrograd_gradients_match_autograd(name):
    """The scalar engine computes in float64: its weight gradients are autograd's to 1e-10."""
    row = ROW[name]
    params, buffers = row_state(row)
    x = row.inputs(_rs(row, "x"))
    layer = row.make(ml, {})
    load(layer, "micrograd", params, buffers)
    out = layer(x if x.dtype.kind == "i" else as_values(x.astype(np.float32)))
    flat = list(ml.leaves(out))
    R = _rs(row, "R").randn(len(flat))
    sum((v * float(r) for v, r in zip(flat, R)), Value(0.0)).backward()
    P, _, ref = reference(row, x, params, buffers, grad=True)
    (ref.reshape(-1) * torch.from_numpy(R)).sum().backward()
    for pname, p in layer.named_parameters():
        got = np.array([v.grad for v in ml.leaves(p)]).reshape(params[pname].shape)
        np.testing.assert_allclose(got, P[pname].grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=pname)


# --- the losses -------------------------------------------------------------------------------

def _loss_batch(scale: float = 3.0):
    rs = np.random.RandomState(21)
    logits = (scale * rs.randn(8, 11)).astype(np.float32)
    return logits, rs.randint(0, 11, size=8)


# logits of a few thousand overflow exp() unless the loss shifts them first
@pytest.mark.parametrize("scale", [3.0, 3000.0], ids=["logits", "huge logits"])
@pytest.mark.parametrize("backend", FIXED_BACKENDS)
def test_cross_entropy_matches_the_mean_negative_log_likelihood(backend, scale):
    logits, targets = _loss_batch(scale)
    L = MODULES[backend]
    with np.errstate(over="raise", invalid="raise"):
        if backend == "numpy":
            got = L.cross_entropy(logits, targets)
        elif backend == "micrograd":
            got = L.cross_entropy(as_values(logits), targets).data
        else:
            got = L.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    assert got == pytest.approx(float(token_nll(logits, targets).mean()), rel=1e-6)


def _padded_sequence_batch():
    rs = np.random.RandomState(22)
    logits = (2 * rs.randn(3, 5, 7)).astype(np.float32)
    targets = rs.randint(0, 7, size=(3, 5))
    targets[0, 1:] = IGNORE      # one scored target
    targets[1, 4:] = IGNORE      # four; the last row scores all five
    return logits, targets


@pytest.mark.parametrize("backend", SEQUENCE_BACKENDS)
def test_sequence_cross_entropy_is_the_mean_over_the_scored_targets(backend):
    logits, targets = _padded_sequence_batch()
    nll = token_nll(logits, targets).numpy()
    scored = (targets != IGNORE).sum(axis=1)
    want = nll.sum() / scored.sum()
    assert want != pytest.approx((nll.sum(axis=1) / scored).mean(), rel=1e-3)  # rows' means differ
    L = MODULES[backend]
    if backend == "numpy":
        got = L.sequence_cross_entropy(logits, targets)
    else:
        got = L.sequence_cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("kind", ["cross_entropy", "sequence_cross_entropy"])
def test_numpy_loss_backward_matches_autograd_and_finite_differences(kind):
    if kind == "cross_entropy":
        logits, targets = _loss_batch()
        criterion = nl.CrossEntropy()
    else:
        logits, targets = _padded_sequence_batch()
        criterion = nl.SequenceCrossEntropy()
    logits = logits.astype(np.float64)
    loss = criterion.forward(logits, targets)
    dlogits = criterion.backward()
    lt = torch.tensor(logits, requires_grad=True)
    t = torch.from_numpy(targets)
    ref = F.cross_entropy(lt.reshape(-1, lt.shape[-1]), t.reshape(-1), ignore_index=IGNORE)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(dlogits, lt.grad.numpy(), rtol=1e-10, atol=1e-14)
    if kind == "sequence_cross_entropy":
        assert not dlogits[targets == IGNORE].any()  # padding gets no gradient
    f = nl.cross_entropy if kind == "cross_entropy" else nl.sequence_cross_entropy
    picks, fd = finite_difference(lambda: f(logits, targets), logits, n=20)
    np.testing.assert_allclose(dlogits.reshape(-1)[picks], fd, rtol=1e-6, atol=1e-9)


# --- 1. the embedding's scatter-add, for vocabularies too large for a one-hot matmul -----------

@pytest.mark.parametrize("limit", [None, 0], ids=["one-hot matmul", "scatter-add"])
def test_embedding_backward_sums_repeated_ids_on_either_branch(monkeypatch, limit):
    """Rows used several times get the sum of their gradients, whichever way backward
    computes it; ``ONEHOT_LIMIT`` lowered sends this small vocabulary down the large one's
    path, so the check stays cheap."""
    if limit is not None:
        monkeypatch.setattr(nl, "ONEHOT_LIMIT", limit)
    V, C = 13, 3
    idx = np.array([[0, 5, 5, 5], [12, 5, 0, 7], [7, 7, 7, 7]])  # repeats within and across rows
    assert (V * idx.size > nl.ONEHOT_LIMIT) == (limit is not None)
    layer = nl.Embedding(V, C, dtype=np.float64)
    layer.weight.data[...] = np.random.RandomState(3).randn(V, C)
    R = np.random.RandomState(4).randn(*idx.shape, C)
    layer(idx)
    assert layer.backward(R) is None

    W = torch.tensor(layer.weight.data, requires_grad=True)
    (F.embedding(torch.from_numpy(idx), W) * torch.from_numpy(R)).sum().backward()
    np.testing.assert_allclose(layer.weight.grad, W.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad[7], R[idx == 7].sum(axis=0), rtol=1e-12)
    assert not layer.weight.grad[[1, 2, 3, 4, 6, 8, 9, 10, 11]].any()
    picks, fd = finite_difference(lambda: float((layer.forward(idx) * R).sum()),
                                  layer.weight.data, n=V * C)
    np.testing.assert_allclose(layer.weight.grad.reshape(-1)[picks], fd, rtol=1e-6, atol=1e-8)


def test_embedding_backward_of_a_vocabulary_past_the_limit_without_patching():
    """A real vocabulary above ``ONEHOT_LIMIT`` (float32, as in training)."""
    idx = np.array([[3, 99_999, 3], [3, 0, 99_999], [50_000, 3, 3], [0, 0, 3]])
    V = 100_000
    assert V * idx.size > nl.ONEHOT_LIMIT and idx.max() < V
    layer = nl.Embedding(V, 2)
    R = np.random.RandomState(5).randn(*idx.shape, 2).astype(np.float32)
    layer(idx)
    layer.backward(R)
    used = np.unique(idx)
    for i in used:
        np.testing.assert_allclose(layer.weight.grad[i], R[idx == i].sum(axis=0), rtol=1e-6)
    assert np.count_nonzero(layer.weight.grad.any(axis=1)) == len(used)


# --- 2. attention over cached keys, several new tokens at once ----------------------------------

# a prompt, one token, several tokens after past keys, one more: every branch of the mask
PIECES = [(0, 3), (3, 4), (4, 8), (8, 9)]


def _cached_pieces(forward, x, advance):
    cache = Cache()
    outs = []
    for lo, hi in PIECES:
        outs.append(forward(x[:, lo:hi], cache))
        if advance:  # a layer's caller moves the cache on, as the SequenceLMs do
            cache.length += hi - lo
    assert cache.length == PIECES[-1][1]
    return outs


@pytest.mark.parametrize("backend", SEQUENCE_BACKENDS)
def test_attention_over_cached_keys_gives_the_full_pass(backend):
    row = ROW["CausalSelfAttention 2 heads"]
    params, _ = row_state(row)
    x = np.random.RandomState(6).randn(2, 9, 8).astype(np.float32)
    layer = row.make(MODULES[backend], {})
    load(layer, backend, params, {})
    layer.eval()
    full = run(layer, backend, x)
    _, _, ref = reference(row, x, params, {})
    np.testing.assert_allclose(full, ref.numpy(), rtol=RTOL32, atol=ATOL32)

    if backend == "numpy":
        forward = lambda piece, cache: layer(piece, cache)  # noqa: E731
    else:
        def forward(piece, cache):
            with torch.no_grad():
                return layer(torch.from_numpy(piece), cache).numpy()
    pieces = np.concatenate(_cached_pieces(forward, x, advance=True), axis=1)
    np.testing.assert_allclose(pieces, ref.numpy(), rtol=RTOL32, atol=ATOL32)


def _sequence_model(name: str, backend: str, block_size: int = 9):
    """A small model on ``backend`` with weights far from their initial ones, and its state."""
    config = ModelConfig(name, vocab_size=11, block_size=block_size, n_embd=8, n_heads=2,
                         n_layers=2, n_embd2=6)
    state = build_model(config, "numpy", RNG(3)).state_dict()
    rs = np.random.RandomState(8)
    state = {k: (v + 0.3 * rs.randn(*v.shape)).astype(np.float32) for k, v in state.items()}
    model = build_model(config, backend, RNG(1))
    model.load_state_dict(state)
    return model.eval(), state


def _ref_model(name: str, state: dict, idx: np.ndarray) -> np.ndarray:
    P = {k: torch.tensor(v, dtype=torch.float64) for k, v in state.items()}
    t = torch.from_numpy(idx)
    out = ref_transformer(P, t, 2, 2) if name == "transformer" else ref_recurrent_lm(P, t, name)
    return out.numpy()


def _logits(model, idx, cache=None):
    logits, _ = model.forward(idx, cache=cache)
    return logits.detach().numpy() if isinstance(logits, torch.Tensor) else logits


@pytest.mark.parametrize("backend", SEQUENCE_BACKENDS)
@pytest.mark.parametrize("name", ["transformer", "rnn", "gru"])
def test_a_model_fed_in_pieces_through_a_cache_gives_the_full_logits(name, backend):
    """The model's own forward(idx, cache=...) moves the cache on; pieces of several tokens
    after earlier ones give the logits of the whole sequence, and those are the reference's."""
    model, state = _sequence_model(name, backend)
    idx = np.random.RandomState(9).randint(0, 11, size=(2, 9))
    want = _ref_model(name, state, idx)
    with torch.no_grad():
        full = _logits(model, idx)
        pieces = _cached_pieces(lambda piece, cache: _logits(model, piece, cache), idx,
                                advance=False)
    np.testing.assert_allclose(full, want, rtol=RTOL32, atol=ATOL32)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), want, rtol=RTOL32, atol=ATOL32)


# --- 3. evaluation over several chunks of unevenly padded rows ---------------------------------

# items of very different lengths, in runs, so that the chunks score very different numbers of
# targets per row (a chunk of one-letter items scores 2 a row, one of long items 15)
EVAL_LINES = (["a", "b", "c", "a", "b"] + ["abcabcabcabcab", "cbacbacbacbacb", "bbbbaaaaccccab"]
              + ["ab", "ba"] * 3 + ["cabcabcabcabca"] + ["c", "a", "bc", "cab"])
BLOCK = 16
ROWS_A_CHUNK = 4


def _slow_loss(name: str, state: dict, split, n: int | None = None) -> float:
    """Sum of every scored target's negative log-likelihood over the count, one row at a time,
    from the float64 reference."""
    total, count = 0.0, 0
    for i in range(len(split) if n is None else n):
        X, Y = split.X[i:i + 1], split.Y[i:i + 1]
        total += float(token_nll(_ref_model(name, state, X), Y).sum())
        count += int((Y != IGNORE).sum())
    return total / count


@pytest.mark.parametrize("bound", ["EVAL_CHUNK", "EVAL_POSITIONS", "EVAL_PAIRS"])
@pytest.mark.parametrize("backend", SEQUENCE_BACKENDS)
def test_evaluation_over_several_chunks_is_the_mean_over_every_scored_target(
        monkeypatch, backend, bound):
    """evaluate() over a split that spans several chunks (each bound on a chunk made small in
    turn) of rows that score from 2 to 15 targets: the exact mean per scored target."""
    from tinylm.train import evaluate

    monkeypatch.setattr(batches, bound, {"EVAL_CHUNK": ROWS_A_CHUNK,
                                         "EVAL_POSITIONS": ROWS_A_CHUNK * BLOCK + 3,
                                         "EVAL_PAIRS": ROWS_A_CHUNK * BLOCK * BLOCK + 7}[bound])
    assert eval_rows(BLOCK) == ROWS_A_CHUNK
    tok = Tokenizer.from_lines(EVAL_LINES)
    split = make_split("val", EVAL_LINES, tok, 0, "words", block_size=BLOCK)
    chunks = list(eval_batches(split, 8))
    assert len(chunks) == math.ceil(len(split) / ROWS_A_CHUNK)
    assert any(X.shape[1] < BLOCK for X, _, _ in chunks)  # some chunks cut their padding
    config = ModelConfig("transformer", vocab_size=tok.vocab_size, block_size=BLOCK, n_embd=8,
                         n_heads=2, n_layers=2)
    model = build_model(config, "numpy", RNG(3))
    rs = np.random.RandomState(10)
    state = {k: (v + 0.5 * rs.randn(*v.shape)).astype(np.float32)
             for k, v in model.state_dict().items()}
    model = build_model(config, backend, RNG(1))
    model.load_state_dict(state)

    want = _slow_loss("transformer", state, split)
    # the data tells the two weightings apart: chunks weighted by rows would be far off
    per_chunk = [(float(token_nll(_ref_model("transformer", state, X), Y).sum())
                  / (Y != IGNORE).sum(), len(Y)) for X, Y, _ in chunks]
    by_rows = sum(m * r for m, r in per_chunk) / sum(r for _, r in per_chunk)
    assert abs(by_rows - want) > 1e-3 * want
    assert evaluate(model, split, 8) == pytest.approx(want, rel=1e-5)
    assert model.training  # evaluate leaves the mode as it found it
    # the first batches only: their rows' targets, over several chunks still
    assert evaluate(model, split, 5, max_batches=2) == pytest.approx(
        _slow_loss("transformer", state, split, n=10), rel=1e-5)


def test_evaluation_of_a_recurrent_model_over_several_chunks(monkeypatch):
    """The same for a GRU (no positions to cut), on the numpy backend only."""
    from tinylm.train import evaluate

    monkeypatch.setattr(batches, "EVAL_CHUNK", 3)
    tok = Tokenizer.from_lines(EVAL_LINES)
    split = make_split("val", EVAL_LINES, tok, 0, "words", block_size=BLOCK)
    config = ModelConfig("gru", vocab_size=tok.vocab_size, block_size=BLOCK, n_embd=5, n_embd2=6)
    model = build_model(config, "numpy", RNG(4))
    rs = np.random.RandomState(11)
    state = {k: (v + 0.5 * rs.randn(*v.shape)).astype(np.float32)
             for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert evaluate(model, split, 8) == pytest.approx(_slow_loss("gru", state, split), rel=1e-5)


def test_stream_evaluation_is_the_mean_of_len_tokens_over_batch_size_fresh_batches():
    """A fixed-window stream split's protocol (the classic reference figures'): from start 0,
    len(tokens) // batch_size batches of consecutive windows, wrapping past the last window,
    the mean of their means. The batch size is chosen so that counting the windows instead
    of the tokens would give one batch fewer."""
    from tinylm.data import stream_tokens
    from tinylm.train import evaluate

    tok = Tokenizer.from_lines(EVAL_LINES)
    context = 3
    split = make_split("val", EVAL_LINES, tok, context, "stream")
    n_tokens = len(stream_tokens(EVAL_LINES, tok))
    B = n_tokens // 2
    assert n_tokens // B == 2 and len(split) // B == 1 and 2 * B > len(split)  # it wraps
    model = build_model(ModelConfig("mlp", vocab_size=tok.vocab_size, context=context, n_embd=4,
                                    n_hidden=16), "numpy", RNG(6))
    nll = token_nll(model.forward(split.X)[0], split.Y).numpy()  # (N,) every window's
    want = np.mean([nll[(b * B + np.arange(B)) % len(split)].mean()
                    for b in range(n_tokens // B)])
    assert evaluate(model, split, B) == pytest.approx(want, rel=1e-6)


# --- the vocabulary ---------------------------------------------------------------------------

# the layers, losses and containers every model is built from (the package declares the full
# list in tinylm.layers; these must be part of it)
FIXED_WINDOW_NAMES = {"Embedding", "Flatten", "Linear", "Tanh", "Sequential", "cross_entropy", "LM"}
SEQUENCE_NAMES = {"BatchNorm1d", "FlattenConsecutive", "LayerNorm", "GELU", "Dropout",
                  "CausalSelfAttention", "Block", "RNN", "GRU", "Transformer", "RecurrentLM",
                  "sequence_cross_entropy", "SequenceLM"}


def _layer_classes(module) -> set[str]:
    """The public layer classes a backend module defines itself."""
    kinds = (torch.nn.Module, base.Layer)
    return {name for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, kinds) and not name.startswith("_")
            and obj.__module__ == module.__name__}


def test_every_backend_exposes_the_same_layer_vocabulary():
    """numpy, raw torch and torch.nn have every layer, loss and container of the vocabulary;
    micrograd has the fixed-window part and nothing more, so that a sequence model asked
    of it is refused rather than half built."""
    import tinylm.layers as package

    vocabulary = set(package.VOCABULARY)
    fixed = set(package.FIXED_WINDOW_VOCABULARY)
    assert FIXED_WINDOW_NAMES <= fixed and fixed | SEQUENCE_NAMES <= vocabulary
    for module in (nl, tl, tm):
        missing = {name for name in vocabulary if not callable(getattr(module, name, None))}
        assert not missing, f"{module.__name__} lacks {sorted(missing)}"
        if hasattr(module, "__all__"):
            assert set(module.__all__) == vocabulary, module.__name__
        # no layer class on one backend only (the containers and the losses' classes aside)
        extra = {name for name in _layer_classes(module) - vocabulary if not name.endswith("LM")}
        assert not extra, f"{module.__name__} has layers no other backend has: {sorted(extra)}"
    assert all(callable(getattr(ml, name, None)) for name in fixed)
    assert not {name for name in vocabulary - fixed if hasattr(ml, name)}
    assert set(ml.__all__) == fixed
    # the table above has a row for every layer of the vocabulary
    layers = {n for n in vocabulary if n[0].isupper()} - {"LM", "SequenceLM"}
    assert layers <= {re.match(r"\w+", row.name).group() for row in ROWS}
