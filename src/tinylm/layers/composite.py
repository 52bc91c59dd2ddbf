"""The layers that are made of other layers, each wired once for every backend.

A Transformer block is two LayerNorms, an attention and a small MLP joined
by residual additions; a Transformer is embeddings, blocks and a read-out;
a recurrent language model is an embedding, a recurrent net and a read-out.
That wiring (which children, in which order, under which names, and how the
forward pass joins them) does not depend on the array library, so it is
written here once. A backend module supplies the primitives (``Embedding``,
``Linear``, ``LayerNorm``, ``GELU``, ``Dropout``, ``CausalSelfAttention``'s
arithmetic, ``RNN``, ``GRU``, ``Sequential``, ``positions``) and makes each
composite its own in one line: a subclass that names the backend module as
``L`` and the backend's layer base class (``base.Layer`` or ``nn.Module``)::

    class Block(composite.Block, Layer):   # tinylm.layers.torch_layers
        L = PRIMITIVES

The numpy backend adds each composite's backward pass, the forward pass
read upside down. A composite keeps no ``.out`` of its own (its children
keep theirs, which is what diagnostics read): on an ``nn.Module`` every
attribute set is a ``__setattr__`` call, paid per forward pass and per
sampled token. Every child is built with the keyword arguments the
composite was given (``dtype=np.float64`` for a gradient check), so a
composite holds one precision throughout.

Names follow PyTorch's nesting, and are the same in every backend:
``blocks.0.attn.qkv.weight``, ``blocks.0.mlp.0.weight``, ``rnn.xh_to_h.bias``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from tinylm.layers.base import Cache
from tinylm.layers.shape_checks import check_cell, check_heads


class Composite:
    """What the composites share: ``L``, the backend module their children come from.
    The backend's subclass puts its layer base class after this one, so that
    ``super().__init__()`` sets up a ``base.Layer`` or an ``nn.Module``."""

    L: ModuleType


class Dropout(Composite):
    """Dropout's settings (Srivastava et al., "Dropout: A Simple Way to Prevent Neural
    Networks from Overfitting", JMLR 2014): the probability ``p`` and the run's RNG, which
    ``LanguageModel.draw_dropout_from`` hands to every layer that ``draws_from_rng``, so that
    every backend drops the same elements. ``part`` is set while a batch is computed in
    parts (``LanguageModel.computing_part``). The backend writes the forward pass."""

    draws_from_rng = True

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p
        self.rng: Any = None
        self.part: tuple[slice, int] | None = None  # (rows, n): these rows of a batch of n


class CausalSelfAttention(Composite):
    """The children of masked multi-head self-attention (Vaswani et al., "Attention Is All
    You Need", 2017): one Linear ``qkv`` makes queries, keys and values for all heads at
    once, ``proj`` mixes the heads' outputs, and GPT-2's two dropouts act on the attention
    weights and on the output. The backend writes the attention arithmetic
    (``forward(x, cache)``), which is where the backends differ."""

    child_names = ("qkv", "proj", "attn_dropout", "resid_dropout")

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, **dtype: Any) -> None:
        super().__init__()
        L = self.L
        check_heads(n_embd, n_head)
        self.n_head = n_head
        self.qkv = L.Linear(n_embd, 3 * n_embd, **dtype)
        self.proj = L.Linear(n_embd, n_embd, **dtype)
        self.attn_dropout = L.Dropout(dropout)
        self.resid_dropout = L.Dropout(dropout)


class Block(Composite):
    """The pre-norm Transformer block (Radford et al., "Language Models are Unsupervised
    Multitask Learners", 2019, after Vaswani et al., 2017).

    x + attn(ln1(x)), then that + mlp(ln2(that)): each sub-layer reads a
    normalised copy of the stream and adds its result back (a residual), so
    the gradient reaches early blocks through the additions undiminished.
    The MLP widens every position to 4 * n_embd with a GELU between (and
    ends in dropout, which has no weights: its Linears stay mlp.0 and mlp.2).
    """

    child_names = ("ln1", "attn", "ln2", "mlp")

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, **dtype: Any) -> None:
        super().__init__()
        L = self.L
        self.ln1 = L.LayerNorm(n_embd, **dtype)
        self.attn = L.CausalSelfAttention(n_embd, n_head, dropout, **dtype)
        self.ln2 = L.LayerNorm(n_embd, **dtype)
        self.mlp = L.Sequential([L.Linear(n_embd, 4 * n_embd, **dtype), L.GELU(),
                                 L.Linear(4 * n_embd, n_embd, **dtype), L.Dropout(dropout)])

    def forward(self, x: Any, cache: Cache | None = None) -> Any:
        h = x + self.attn(self.ln1(x), cache)            # (B, T, C)
        return h + self.mlp(self.ln2(h))                 # (B, T, C)


class Transformer(Composite):
    """A decoder-only Transformer language model in the manner of GPT-2 (Radford et al.,
    "Language Models are Unsupervised Multitask Learners", 2019).

    Token and position embeddings are added, ``n_layers`` pre-norm ``Block``s
    transform the stream, a final LayerNorm and ``lm_head`` give logits at
    every position: (B, T) token ids -> (B, T, vocab_size), T <= block_size.
    ``dropout`` acts on the summed embeddings and inside every block. Given a
    ``Cache``, idx holds the tokens after those already read, and their
    positions continue from there.
    """

    child_names = ("wte", "wpe", "drop", "blocks", "ln_f", "lm_head")

    def __init__(self, vocab_size: int, block_size: int, n_embd: int, n_head: int,
                 n_layers: int, dropout: float = 0.0, **dtype: Any) -> None:
        super().__init__()
        L = self.L
        self.block_size = block_size
        self.wte = L.Embedding(vocab_size, n_embd, **dtype)
        self.wpe = L.Embedding(block_size, n_embd, **dtype)
        self.drop = L.Dropout(dropout)
        self.blocks = L.Sequential([L.Block(n_embd, n_head, dropout, **dtype)
                                    for _ in range(n_layers)])
        self.ln_f = L.LayerNorm(n_embd, **dtype)
        self.lm_head = L.Linear(n_embd, vocab_size, bias=False, **dtype)

    def forward(self, idx: Any, cache: Cache | None = None) -> Any:
        pos = self.L.positions(idx, cache, self.block_size)                 # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))     # (B, T, C) + (T, C)
        for block in self.blocks:
            x = block(x, cache)                          # (B, T, C)
        return self.lm_head(self.ln_f(x))                # (B, T, V)


class RecurrentLM(Composite):
    """A recurrent language model: embedding, an ``RNN`` or ``GRU`` over the positions, and
    a Linear read-out of each hidden state: (B, T) -> (B, T, vocab_size). ``dropout``
    acts on the embeddings and on the hidden states read out (not on the recurrence)."""

    child_names = ("wte", "drop_in", "rnn", "drop_out", "lm_head")

    def __init__(self, vocab_size: int, n_embd: int, n_embd2: int, cell: str = "rnn",
                 dropout: float = 0.0, **dtype: Any) -> None:
        super().__init__()
        L = self.L
        self.wte = L.Embedding(vocab_size, n_embd, **dtype)
        self.drop_in = L.Dropout(dropout)
        self.rnn = {"rnn": L.RNN, "gru": L.GRU}[check_cell(cell)](n_embd, n_embd2, **dtype)
        self.drop_out = L.Dropout(dropout)
        self.lm_head = L.Linear(n_embd2, vocab_size, **dtype)

    def forward(self, idx: Any, cache: Cache | None = None) -> Any:
        h = self.rnn(self.drop_in(self.wte(idx)), cache)  # (B, T, H)
        return self.lm_head(self.drop_out(h))             # (B, T, V)
