"""One mlp-classic training step written the plain way, the reference that bench_mlp.py times.

This is how the classic MLP is usually first written: each batch gathered
from Python lists one window at a time (consecutive windows over the token
stream, as the stream loader takes them), and the embedding gradient added
one example at a time. ``NaiveNumpyStep`` does the rest in numpy with the
backward pass and Adam written out; ``NaiveTorchStep`` leaves the MLP's
backward pass to autograd and the update to ``torch.optim.AdamW``. Both
start from the weights they are given (bench_mlp.py passes those of tinylm's
own model) and follow the recipe's cosine schedule; each call is one step.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Mapping

import numpy as np

# state-dict names of the mlp model's parameters: embedding, hidden Linear, output Linear
MLP_NAMES = ("layers.0.weight", "layers.2.weight", "layers.2.bias", "layers.4.weight",
             "layers.4.bias")


def list_batches(tokens: list[int], context: int, batch_size: int,
                 to_array: Callable) -> Iterator[tuple]:
    """Consecutive windows, each batch gathered in Python lists, wrapping at the end."""
    pos, xs, ys = 0, [], []
    while True:
        xs.append(tokens[pos:pos + context])
        ys.append(tokens[pos + context])
        if len(xs) == batch_size:
            yield to_array(xs), to_array(ys)
            xs, ys = [], []
        pos += 1
        if pos + context >= len(tokens):
            pos = 0


def cosine_lr(lr: float, step: int, steps: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * step / steps))


class NaiveNumpyStep:
    """Forward, backward and Adam with weight decay in plain numpy, fresh arrays every step."""

    def __init__(self, tokens: list[int], weights: Mapping[str, np.ndarray], context: int,
                 batch_size: int, lr: float, weight_decay: float, steps: int) -> None:
        self.params = [np.array(weights[name], dtype=np.float32) for name in MLP_NAMES]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.batches = list_batches(tokens, context, batch_size, np.array)
        self.context, self.batch_size = context, batch_size
        self.lr, self.weight_decay, self.steps = lr, weight_decay, steps
        self.step = 0

    def __call__(self) -> None:
        C, W1, b1, W2, b2 = self.params
        T, B = self.context, self.batch_size
        E = C.shape[1]
        lr = cosine_lr(self.lr, self.step % self.steps, self.steps)
        X, Y = next(self.batches)
        emb = C[X].reshape(B, -1)
        h = np.tanh(emb @ W1.T + b1)
        logits = h @ W2.T + b2
        logits = logits - logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        float(-np.log(p[np.arange(B), Y]).mean())  # the loss a loop would print
        dlogits = p
        dlogits[np.arange(B), Y] -= 1
        dlogits /= B
        dW2, db2 = dlogits.T @ h, dlogits.sum(0)
        dpre = (dlogits @ W2) * (1 - h**2)
        dW1, db1 = dpre.T @ emb, dpre.sum(0)
        demb = (dpre @ W1).reshape(B, T, E)
        dC = np.zeros_like(C)
        for i in range(B):  # one example at a time
            for t in range(T):
                dC[X[i, t]] += demb[i, t]
        self.step += 1
        for k, (p_, g) in enumerate(zip(self.params, [dC, dW1, db1, dW2, db2])):
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
            mh = self.m[k] / (1 - 0.9 ** self.step)
            vh = self.v[k] / (1 - 0.999 ** self.step)
            p_ -= lr * (mh / (np.sqrt(vh) + 1e-8) + self.weight_decay * p_)


class NaiveTorchStep:
    """The same step in PyTorch: autograd for the MLP, the embedding gradient by hand."""

    def __init__(self, tokens: list[int], weights: Mapping[str, np.ndarray], context: int,
                 batch_size: int, lr: float, weight_decay: float, steps: int) -> None:
        import torch

        self.torch = torch
        self.params = [torch.tensor(np.array(weights[name], dtype=np.float32), requires_grad=True)
                       for name in MLP_NAMES]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.batches = list_batches(tokens, context, batch_size, torch.tensor)
        self.context, self.batch_size = context, batch_size
        self.lr, self.steps = lr, steps
        self.step = 0

    def __call__(self) -> None:
        torch = self.torch
        F = torch.nn.functional
        C, W1, b1, W2, b2 = self.params
        T, B = self.context, self.batch_size
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(self.lr, self.step % self.steps, self.steps)
        X, Y = next(self.batches)
        emb = C.detach()[X].requires_grad_(True)
        h = torch.tanh(emb.view(B, -1) @ W1.T + b1)
        loss = F.cross_entropy(h @ W2.T + b2, Y)
        self.opt.zero_grad()
        loss.backward()
        loss.item()  # the loss a loop would print
        dC = torch.zeros_like(C)
        for i in range(B):  # one example at a time
            for t in range(T):
                dC[X[i, t]] += emb.grad[i, t]
        C.grad = dC
        self.opt.step()
        self.step += 1
