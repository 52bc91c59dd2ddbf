"""How many threads BLAS and PyTorch may use while tinylm trains or evaluates.

tinylm's matrices are small (a classic MLP step multiplies 128 x 144 by
144 x 512): a second thread gains little on a quiet machine, and on a busy
one, where the cores are shared, a pool of threads waiting for a core costs
many times the work it shares (a classic step 3-4x slower with two other
processes spinning on two cores, ``benchmarks/bench_mlp.py --load 2``). So a run uses one
thread unless told otherwise: ``--threads N``, or the usual environment
variables (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``),
which tinylm then leaves alone. ``threadpoolctl`` sets the BLAS pools that
numpy loaded; PyTorch has ``torch.set_num_threads``.

The thread count is also part of a run's arithmetic: OpenBLAS picks its
kernels and splits its work by the number of threads, so a numpy matmul
with two threads rounds differently from the same matmul with one. A new
run therefore saves the count it computes with (``effective``), and a
resumed run keeps it, so that it goes on with the numbers an uninterrupted
run would have had, whatever the environment says at the time.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from tinylm.errors import ConfigError
from threadpoolctl import threadpool_info, threadpool_limits

DEFAULT = 1
ENVIRONMENT = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def chosen(requested: int) -> int | None:
    """The thread count to set: ``requested`` (0: the default), or None to leave the environment's."""
    if requested:
        return requested
    if any(os.environ.get(name) for name in ENVIRONMENT):
        return None
    return DEFAULT


def check(requested: int) -> None:
    """Refuse a thread count above this machine's cores: threads beyond them only wait for
    each other (three steps took 145 s with --threads 1000)."""
    cores = os.cpu_count() or 1
    if requested > cores:
        raise ConfigError(f"--threads {requested} is more than this machine's {cores} cores; "
                          "threads beyond them only wait for a core")


def effective(requested: int) -> int:
    """The thread count ``limited(requested)`` computes with: ``chosen(requested)``, or, where
    the environment decides, what numpy's BLAS pools took from it."""
    n = chosen(requested)
    if n is not None:
        return n
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts, default=1)


@contextlib.contextmanager
def limited(requested: int) -> Iterator[int | None]:
    """Run the block with BLAS and (if loaded) PyTorch limited to ``chosen(requested)`` threads."""
    n = chosen(requested)
    if n is None:
        yield None
        return
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=n, user_api="blas"):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield n
        finally:
            if torch is not None and before is not None:
                torch.set_num_threads(before)
