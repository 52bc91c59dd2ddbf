"""Thread defaults: one thread unless --threads or the environment says otherwise."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_info

from tinylm import threads


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_the_default_is_one_thread_unless_the_environment_chose(monkeypatch):
    for name in threads.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert threads.chosen(0) == 1 and threads.chosen(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.chosen(0) is None and threads.chosen(3) == 3


def test_limited_sets_blas_and_torch_and_puts_them_back(monkeypatch):
    torch = pytest.importorskip("torch")
    for name in threads.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    torch_before, blas_before = torch.get_num_threads(), blas_threads()
    with threads.limited(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
        assert blas_threads() <= {2}
    with threads.limited(0) as n:
        assert n == 1 and torch.get_num_threads() == 1
        assert blas_threads() <= {1}
    assert torch.get_num_threads() == torch_before and blas_threads() == blas_before


def test_effective_is_the_count_a_run_computes_with(monkeypatch):
    for name in threads.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert threads.effective(0) == 1 and threads.effective(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    # the environment decides: what the BLAS pools took from it when numpy loaded them
    assert threads.effective(0) == max(blas_threads()) and threads.effective(3) == 3
