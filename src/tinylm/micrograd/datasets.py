"""Small 2D classification datasets for the scalar-autograd demo.

Each generator takes the number of points and a ``tinylm.rng.RNG`` and
returns ``Splits(train, val, test)``: the first 80 % of the points, the next
10 % and the last 10 %. A point is ``([x, y], label)`` with x and y roughly
in [-2, 2]. The same seed gives the same points on every machine.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

from tinylm.rng import RNG

Point = tuple[list[float], int]


class Splits(NamedTuple):
    train: list[Point]
    val: list[Point]
    test: list[Point]


def split(points: list[Point]) -> Splits:
    """The first 80 %, the next 10 % and the last 10 % (rounded down, in order)."""
    n = len(points)
    a, b = n * 8 // 10, n * 9 // 10
    return Splits(points[:a], points[a:b], points[b:])


def simple(n: int, rng: RNG) -> Splits:
    """Three classes cut by the axes: 0 left of x = 0, else 1 below y = 0, else 2."""
    points = []
    for _ in range(n):
        x = rng.uniform(-2, 2)
        y = rng.uniform(-2, 2)
        label = 0 if x < 0 else 1 if y < 0 else 2
        points.append(([x, y], label))
    return split(points)


def circles(n: int, rng: RNG, noise: float = 0.1) -> Splits:
    """Two noisy concentric rings: class 0 of radius 1.5 around class 1 of radius 0.75.

    Point i belongs to class i % 2; its angle is uniform and each coordinate
    gets Gaussian noise of standard deviation ``noise``.
    """
    points = []
    for i in range(n):
        label = i % 2
        radius = 1.5 if label == 0 else 0.75
        angle = rng.uniform(0, 2 * math.pi)
        dx, dy = rng.randn(2, 0.0, noise)
        points.append(([radius * math.cos(angle) + dx, radius * math.sin(angle) + dy], label))
    return split(points)


def moons(n: int, rng: RNG, noise: float = 0.1) -> Splits:
    """Two interleaving half circles (the shape of scikit-learn's ``make_moons``).

    Point i belongs to class i % 2: class 0 on the upper arc of the unit
    circle, class 1 on the lower arc shifted by (1, 0.5); both are then
    centred and scaled by 1.5 to fill [-2, 2], with Gaussian noise.
    """
    points = []
    for i in range(n):
        label = i % 2
        t = rng.uniform(0, math.pi)
        if label == 0:
            x, y = math.cos(t), math.sin(t)
        else:
            x, y = 1 - math.cos(t), 0.5 - math.sin(t)
        dx, dy = rng.randn(2, 0.0, noise)
        points.append(([(x - 0.5 + dx) * 1.5, (y - 0.25 + dy) * 1.5], label))
    return split(points)


def yinyang(n: int, rng: RNG, r_small: float = 0.1, r_big: float = 0.5) -> Splits:
    """The yin-yang symbol: yin (0), yang (1) and its two dots (2), in equal numbers.

    From Kriener, Göltz and Petrovici, "The Yin-Yang dataset" (2021). Point i
    aims for class i % 3: draw (x, y) uniformly in the square around the big
    circle, x first, until it lies in the circle and has that class.
    """
    points = []
    for i in range(n):
        goal = i % 3
        while True:
            x = rng.uniform(0, 2 * r_big)
            y = rng.uniform(0, 2 * r_big)
            if _dist(x, y, r_big, r_big) <= r_big and _yinyang_class(x, y, r_small, r_big) == goal:
                break
        points.append(([(x / r_big - 1) * 2, (y / r_big - 1) * 2], goal))
    return split(points)


def _yinyang_class(x: float, y: float, r_small: float, r_big: float) -> int:
    d_right = _dist(x, y, 1.5 * r_big, r_big)
    d_left = _dist(x, y, 0.5 * r_big, r_big)
    if d_right < r_small or d_left < r_small:
        return 2
    is_yin = (
        d_right <= r_small
        or r_small < d_left <= 0.5 * r_big
        or (y > r_big and d_right > 0.5 * r_big)
    )
    return 0 if is_yin else 1


def _dist(x: float, y: float, cx: float, cy: float) -> float:
    dx, dy = x - cx, y - cy
    return math.sqrt(dx * dx + dy * dy)


DATASETS: dict[str, Callable[[int, RNG], Splits]] = {
    "simple": simple,
    "circles": circles,
    "moons": moons,
    "yinyang": yinyang,
}
NUM_CLASSES = {"simple": 3, "circles": 2, "moons": 2, "yinyang": 3}
