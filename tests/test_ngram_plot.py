"""The bigram heat map: every cell labelled, and a bounded picture for any alphabet."""

from __future__ import annotations

import numpy as np
import pytest

from tinylm import ngram_plot


def test_most_frequent_keeps_the_end_token_and_the_busiest_characters():
    itos = ["\n", "a", "b", "c", "d"]
    counts = np.array([[0, 1, 0, 0, 0],
                       [0, 9, 9, 0, 0],
                       [0, 9, 0, 0, 5],
                       [0, 0, 0, 0, 0],
                       [0, 0, 0, 1, 0]])
    sub, chars = ngram_plot.most_frequent(counts, itos, 3)
    assert chars == ["\n", "a", "b"]
    assert np.array_equal(sub, counts[np.ix_([0, 1, 2], [0, 1, 2])])


def test_a_large_alphabet_gives_a_bounded_picture():
    pytest.importorskip("matplotlib")
    V = 400  # the whole grid would be 240 inches square
    counts = np.random.default_rng(0).integers(0, 5, size=(V, V))
    itos = ["\n"] + [chr(0x4E00 + i) for i in range(V - 1)]
    png = ngram_plot.bigram_heatmap_png(counts, itos)
    width = int.from_bytes(png[16:20], "big")  # the PNG header's IHDR width
    assert png[:4] == b"\x89PNG" and width <= 0.6 * ngram_plot.MAX_CHARS * 80 + 100
