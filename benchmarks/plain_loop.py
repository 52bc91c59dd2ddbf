"""A plain PyTorch training loop for a GPT: the yardstick tinylm's torch backends are held against.

    python benchmarks/plain_loop.py TOKENS.npy UNITS.npy STEPS EVAL_EVERY L H C T B LR

The model has the arithmetic of tinylm's Transformer (pre-norm blocks, one
``qkv`` Linear, ``F.scaled_dot_product_attention`` with the causal mask, a
4x MLP with GELU's tanh form, a final LayerNorm and an untied, bias-free
head), written the way one writes it with ``torch.nn`` alone; it trains with
``torch.optim.AdamW`` on random windows of a memory-mapped token array.

As a script (what ``bench_text.py side-by-side`` runs in a child process, on
one thread): TOKENS.npy is the whole text as one token array (train, then
val, then test); UNITS.npy's first row is ``[0, end of train, 0]`` and every
other row an evaluation window ``[split (0 train, 1 val, 2 test), end,
targets scored]``. It trains for STEPS steps, evaluates train and val every
EVAL_EVERY steps and at the last, and prints the final val and test losses.

As a module (what ``bench_sequence.py`` times beside tinylm's steps):
``make`` builds the model and its optimizer, ``train_step`` takes one step
(the windows come from ``windows.batch``), ``generate`` samples with or without
a key-value cache.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from windows import batch


class Block(nn.Module):
    """x + proj(attention(ln1(x))), then + mlp(ln2(.))."""

    def __init__(self, C: int, H: int) -> None:
        super().__init__()
        self.C, self.H = C, H
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * C, C))

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        C, H = self.C, self.H
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, H, C // H).permute(2, 0, 3, 1, 4)
        if cache is not None:  # sampling: the keys and values of the tokens read before
            if self in cache:
                k, v = torch.cat([cache[self][0], k], 2), torch.cat([cache[self][1], v], 2)
            cache[self] = k, v
        # after the first call a cache is fed one token, whose query reads every key: no mask
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1).transpose(1, 2).reshape(b, t, C)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token and position embeddings, L blocks, a final LayerNorm, the head: (B, T) -> (B, T, V)."""

    def __init__(self, V: int, T: int, C: int, H: int, L: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.Sequential(*[Block(C, H) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)

    def forward(self, idx: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        past = 0 if cache is None else cache.setdefault("length", 0)
        x = self.wte(idx) + self.wpe(torch.arange(past, past + idx.shape[1]))
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache["length"] += idx.shape[1]
        return self.head(self.ln_f(x))


@torch.inference_mode()
def generate(model: GPT, idx: list[int], n: int, cached: bool = True, seed: int = 5) -> list[int]:
    """``idx`` and ``n`` tokens after it, each drawn by ``torch.multinomial`` from the softmax
    of the last position's logits; with ``cached`` (the usual key-value cache) every new
    token is fed alone, without it the whole tape is read again."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    tape = new = torch.tensor([idx])
    cache: dict | None = {} if cached else None
    for _ in range(n):
        logits = model(new if cached else tape, cache)                  # (1, T, V)
        new = torch.multinomial(torch.softmax(logits[0, -1], -1), 1, generator=g).view(1, 1)
        tape = torch.cat([tape, new], 1)
    return tape[0].tolist()


def make(V: int, T: int, C: int, H: int, L: int, lr: float, seed: int = 42):
    """(model, optimizer): the GPT drawn after ``torch.manual_seed(seed)``, and AdamW
    (weight decay 0.01)."""
    torch.manual_seed(seed)
    model = GPT(V, T, C, H, L)
    return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def train_step(model: GPT, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
    """One step: the mean cross-entropy at every position, its backward pass, AdamW's update."""
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def evaluate(model: GPT, data, rows: np.ndarray, T: int, V: int) -> float:
    """The mean loss over evaluation windows, rows of (end, targets scored), 128 at a time:
    each window ends at ``end`` and scores only its last ``scored`` targets."""
    model.eval()
    total, n = 0.0, 0
    with torch.inference_mode():
        for lo in range(0, len(rows), 128):
            e, k = rows[lo:lo + 128, 0], rows[lo:lo + 128, 1]
            idx = torch.from_numpy(np.stack([data[x - T - 1:x - 1] for x in e]).astype(np.int64))
            tgt = torch.from_numpy(np.stack([data[x - T:x] for x in e]).astype(np.int64))
            tgt[torch.arange(T)[None, :] < torch.from_numpy(T - k)[:, None]] = -1
            total += F.cross_entropy(model(idx).reshape(-1, V), tgt.reshape(-1), ignore_index=-1,
                                     reduction="sum").item()
            n += int(k.sum())
    model.train()
    return total / n


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    tokens_path, units_path, steps, eval_every, L, H, C, T, B, lr = argv
    steps, eval_every, L, H, C, T, B = map(int, (steps, eval_every, L, H, C, T, B))
    data = np.load(tokens_path, mmap_mode="r")          # the whole text, uint16
    units = np.load(units_path)
    train_end = int(units[0, 1])
    units = units[1:]
    V = int(data.max()) + 1
    model, opt = make(V, T, C, H, L, float(lr))
    g = np.random.default_rng(42)

    def split_loss(split: int) -> float:
        return evaluate(model, data, units[units[:, 0] == split][:, 1:], T, V)

    for step in range(steps):
        if step % eval_every == 0 or step == steps - 1:
            split_loss(0)                  # train, measured as tinylm's run measures it
            val = split_loss(1)
        x, y = batch(data, g, train_end, T, B)
        train_step(model, opt, torch.from_numpy(x), torch.from_numpy(y))
    print(f"val {val:.4f}, test {split_loss(2):.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
