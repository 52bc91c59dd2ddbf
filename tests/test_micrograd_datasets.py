"""The 2D toy datasets: splits, labels by their rules, the RNG order, reproducibility."""

from __future__ import annotations

import math

import pytest

from tinylm.micrograd.datasets import DATASETS, NUM_CLASSES, circles, moons, simple, split, yinyang
from tinylm.rng import RNG


@pytest.mark.parametrize("n, sizes", [(100, (80, 10, 10)), (10, (8, 1, 1)), (15, (12, 1, 2)), (37, (29, 4, 4))])
def test_split_is_80_10_10_in_order(n, sizes):
    points = [([float(i), 0.0], 0) for i in range(n)]
    parts = split(points)
    assert tuple(map(len, parts)) == sizes
    assert parts.train + parts.val + parts.test == points


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_same_seed_same_points_and_labels_in_range(name):
    a = DATASETS[name](60, RNG(9))
    b = DATASETS[name](60, RNG(9))
    assert a == b
    assert a != DATASETS[name](60, RNG(10))
    for (x, y), label in a.train + a.val + a.test:
        assert isinstance(x, float) and isinstance(y, float)
        assert -2.6 < x < 2.6 and -2.6 < y < 2.6
        assert label in range(NUM_CLASSES[name])
    labels = {label for _, label in a.train}
    assert labels == set(range(NUM_CLASSES[name]))


def test_simple_follows_its_rule_and_draws_x_first():
    rng = RNG(4)
    data = simple(30, RNG(4))
    for (x, y), label in data.train + data.val + data.test:
        assert (x, y) == (rng.uniform(-2, 2), rng.uniform(-2, 2))
        assert label == (0 if x < 0 else 1 if y < 0 else 2)


@pytest.mark.parametrize("make", [circles, moons])
def test_two_class_sets_alternate_their_labels(make):
    data = make(20, RNG(2))
    assert [label for _, label in data.train] == [i % 2 for i in range(16)]


def test_circles_have_two_radii():
    data = circles(200, RNG(2), noise=0.0)
    for (x, y), label in data.train:
        assert math.hypot(x, y) == pytest.approx(1.5 if label == 0 else 0.75)


def test_yinyang_reference_recipe_draws():
    """Replay the rejection sampler by hand: x first, then y, until in-circle and on target."""
    r_small, r_big = 0.1, 0.5
    rng = RNG(42)
    expected = []
    for i in range(100):
        while True:
            x = rng.uniform(0, 2 * r_big)
            y = rng.uniform(0, 2 * r_big)
            d = math.sqrt((x - r_big) ** 2 + (y - r_big) ** 2)
            d_right = math.sqrt((x - 1.5 * r_big) ** 2 + (y - r_big) ** 2)
            d_left = math.sqrt((x - 0.5 * r_big) ** 2 + (y - r_big) ** 2)
            if d_right < r_small or d_left < r_small:
                c = 2
            elif d_right <= r_small or r_small < d_left <= 0.5 * r_big or (y > r_big and d_right > 0.5 * r_big):
                c = 0
            else:
                c = 1
            if d <= r_big and c == i % 3:
                break
        expected.append(([(x / r_big - 1) * 2, (y / r_big - 1) * 2], c))
    data = yinyang(100, RNG(42))
    assert data.train + data.val + data.test == expected
    assert [len(s) for s in data] == [80, 10, 10]
    assert [label for _, label in data.train[:6]] == [0, 1, 2, 0, 1, 2]


def test_yinyang_points_lie_in_the_circle():
    data = yinyang(90, RNG(1))
    for (x, y), _ in data.train + data.val + data.test:
        assert math.hypot(x, y) <= 2.0 + 1e-12
