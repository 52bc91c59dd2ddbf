"""tinylm.rng: the check values, the distributions, and the vectorised path's bit-identity."""

import math

import numpy as np
import pytest

from tinylm.rng import RNG


def test_check_values():
    rng = RNG(42)
    assert [rng.random_u32() for _ in range(3)] == [1456360119, 3359763283, 3393612768]


def test_random_is_24_bit_in_unit_interval():
    rng = RNG(1337)
    xs = [rng.random() for _ in range(10_000)]
    assert all(0.0 <= x < 1.0 for x in xs)
    assert all((x * 16777216.0).is_integer() for x in xs)
    assert abs(sum(xs) / len(xs) - 0.5) < 0.01


def test_uniform_and_rand_follow_the_formulas():
    a, b = RNG(5), RNG(5)
    assert a.uniform(-2.0, 3.0) == -2.0 + 5.0 * b.random()
    a, b = RNG(5), RNG(5)
    assert a.rand(4, -1.0, 1.0) == [b.random() * 2.0 - 1.0 for _ in range(4)]


def test_randn_is_box_muller_on_pairs_and_cropped():
    a, b = RNG(9), RNG(9)
    zs = a.randn(3, mu=1.0, sigma=2.0)
    u1, u2, u3, u4 = (b.random() for _ in range(4))
    r1, r2 = math.sqrt(-2 * math.log(u1)), math.sqrt(-2 * math.log(u3))
    expected = [r1 * math.cos(2 * math.pi * u2) * 2 + 1, r1 * math.sin(2 * math.pi * u2) * 2 + 1,
                r2 * math.cos(2 * math.pi * u4) * 2 + 1]
    assert zs == pytest.approx(expected, abs=0, rel=1e-15)
    assert a.state == b.state  # an odd n still consumes a whole pair


def test_randn_statistics():
    z = np.array(RNG(3).randn(200_000))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01


def test_randn_guards_u1_zero(monkeypatch):
    rng = RNG(1)
    values = iter([0.0, 0.25])
    monkeypatch.setattr(rng, "random", lambda: next(values))
    z1, z2 = rng.randn(2)
    assert math.isfinite(z1) and math.isfinite(z2)


@pytest.mark.parametrize("n", [0, 1, 2, 63, 64, 65, 127, 128, 129, 999, 4096, 100_003])
def test_array_path_is_bit_identical(n):
    a, b = RNG(42), RNG(42)
    assert b.random_u32_array(n).tolist() == [a.random_u32() for _ in range(n)]
    assert a.state == b.state
    assert a.random() == b.random()  # and both go on identically


def test_rand_array_matches_scalar_in_float32():
    a, b = RNG(77), RNG(77)
    expected = np.array(a.rand(5000, -0.3, 0.3), dtype=np.float32)
    got = b.rand_array(5000, -0.3, 0.3)
    assert got.dtype == np.float32 and np.array_equal(got, expected)


def test_randn_array_matches_scalar_path():
    a, b = RNG(11), RNG(11)
    expected = np.array(a.randn(100_001, 0.5, 2.0))
    got64 = b.randn_array64(100_001, 0.5, 2.0)
    np.testing.assert_allclose(got64, expected, rtol=1e-14, atol=1e-14)
    assert np.array_equal(got64.astype(np.float32), expected.astype(np.float32))
    assert a.state == b.state


def test_state_round_trip_and_bad_seeds():
    rng = RNG(123)
    rng.random_u32()
    saved = rng.get_state()
    first = [rng.random() for _ in range(5)]
    other = RNG(1)
    other.set_state(saved)
    assert [other.random() for _ in range(5)] == first
    for bad in (0, -1, 2**64):
        with pytest.raises(ValueError):
            RNG(bad)
    with pytest.raises(TypeError):
        RNG(1.5)
