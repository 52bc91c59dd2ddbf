"""Shared fixtures: small input files and the bundled split."""

from __future__ import annotations

import pytest

from tinylm import data

try:
    import torch
except ImportError:  # torch is a test extra; the tests that need it import it themselves
    torch = None
else:
    # pytest-xdist or a busy machine makes torch's thread pool thrash on tiny matmuls
    # (hundreds of times slower); the tests compare numbers, not speed.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def names_lines() -> list[str]:
    return data.read_lines(data.default_dataset())


@pytest.fixture(scope="session")
def names_splits(names_lines):
    return data.split_lines(names_lines)


@pytest.fixture
def small_input(tmp_path):
    """A 40-line input file of short words."""
    words = ["ab", "abc", "bca", "cab", "ba", "aab", "cc", "acb", "bab", "ca"] * 4
    path = tmp_path / "words.txt"
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def few_names(tmp_path_factory):
    """A 60-line file of 15 names, enough to train and sample a tiny run in seconds."""
    path = tmp_path_factory.mktemp("few_names") / "names.txt"
    path.write_text("\n".join(["anna", "bob", "carla", "dave", "emma", "frank", "gina", "hugo",
                                "ida", "jon", "kim", "lea", "max", "nia", "otto"] * 4) + "\n")
    return path
