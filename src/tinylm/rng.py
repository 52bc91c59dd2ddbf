"""The one source of randomness in tinylm.

Every implementation of a model (pure Python, numpy, PyTorch, and a C port
someday) must draw bit-identical random numbers, so tinylm never uses
numpy's or PyTorch's generators. ``RNG`` is xorshift64* (Vigna, "An
experimental exploration of Marsaglia's xorshift generators, scrambled",
2016) with a 24-bit float path and basic Box-Muller for normals: simple
enough to port to any language in a dozen lines.

The scalar methods (``random``, ``rand``, ``randn``) define the numbers. The
array methods (``rand_array``, ``randn_array``) produce exactly the same
sequence, vectorised with numpy's uint64 arithmetic, because initialising a
100k-parameter model one Python float at a time is slow.
"""

from __future__ import annotations

import functools
import math

import numpy as np

MASK64 = (1 << 64) - 1
MULTIPLIER = 0x2545F4914F6CDD1D


class RNG:
    """xorshift64* generator; ``state`` is a 64-bit unsigned integer."""

    def __init__(self, seed: int) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if seed < 0 or seed > MASK64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        if seed == 0:
            # xorshift maps 0 to 0 forever: refuse it rather than emit a constant stream.
            raise ValueError("seed must be non-zero (xorshift64* is stuck at state 0)")
        self.state = seed

    # --- the scalar path: this is the definition of every number -------------------

    def random_u32(self) -> int:
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & MASK64
        s ^= s >> 27
        self.state = s
        return ((s * MULTIPLIER) & MASK64) >> 32

    def random(self) -> float:
        """A float in [0, 1) with 24 random bits (exactly representable in float32)."""
        return (self.random_u32() >> 8) / 16777216.0

    def uniform(self, a: float = 0.0, b: float = 1.0) -> float:
        return a + (b - a) * self.random()

    def rand(self, n: int, a: float = 0.0, b: float = 1.0) -> list[float]:
        return [self.random() * (b - a) + a for _ in range(n)]

    def randn(self, n: int, mu: float = 0.0, sigma: float = 1.0) -> list[float]:
        out: list[float] = []
        while len(out) < n:
            u1 = self.random()
            u2 = self.random()
            z1, z2 = _box_muller(u1, u2)
            out.append(z1 * sigma + mu)
            out.append(z2 * sigma + mu)
        return out[:n]

    # --- the vectorised path: same numbers, computed in bulk -----------------------

    def random_u32_array(self, n: int) -> np.ndarray:
        """The next ``n`` values of ``random_u32()``, as a uint64 array."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n < _SCALAR_BELOW:
            # a training batch's draws: the plain loop is faster than setting up lanes
            return np.array([self.random_u32() for _ in range(n)], dtype=np.uint64)
        out = np.empty(n, dtype=np.uint64)
        # xorshift is linear over GF(2), so the state after k steps is a fixed
        # matrix power applied to the state; computing it serially in Python is
        # what we are avoiding. Instead we advance LANES independent copies in
        # lock-step: lane j starts at the state after j*steps_per_lane draws,
        # found cheaply by jumping with precomputed matrices.
        states = _jump_states(self.state, n)
        lanes = len(states)
        steps = -(-n // lanes)
        block = np.empty((steps, lanes), dtype=np.uint64)
        s = states
        with np.errstate(over="ignore"):
            for k in range(steps):
                s = s ^ (s >> np.uint64(12))
                s = s ^ (s << np.uint64(25))
                s = s ^ (s >> np.uint64(27))
                block[k] = (s * np.uint64(MULTIPLIER)) >> np.uint64(32)
        # lane j holds draws j*steps .. j*steps+steps-1: read lanes one after another
        flat = block.T.reshape(-1)
        out[:] = flat[:n]
        # advance our own state past exactly n draws
        self.state = _advance(self.state, n)
        return out

    def random_array(self, n: int) -> np.ndarray:
        """``n`` values of ``random()`` as float64 (exact: 24-bit values)."""
        return (self.random_u32_array(n) >> np.uint64(8)).astype(np.float64) / 16777216.0

    def rand_array(self, n: int, a: float = 0.0, b: float = 1.0) -> np.ndarray:
        """Same numbers as ``rand(n, a, b)``, computed in float64 then cast to float32."""
        return (self.random_array(n) * (b - a) + a).astype(np.float32)

    def randn_array(self, n: int, mu: float = 0.0, sigma: float = 1.0) -> np.ndarray:
        """Same numbers as ``randn(n, mu, sigma)`` (float64 maths), cast to float32.

        numpy's log/cos/sin may differ from libm's in the last bit on some
        platforms, so the float64 values are compared with the scalar path in
        the tests; after the cast to float32 they agree exactly.
        """
        return self.randn_array64(n, mu, sigma).astype(np.float32)

    def randn_array64(self, n: int, mu: float = 0.0, sigma: float = 1.0) -> np.ndarray:
        pairs = -(-n // 2)
        u = self.random_array(2 * pairs)
        u1, u2 = u[0::2], u[1::2]
        with np.errstate(divide="ignore"):
            radius = np.sqrt(-2.0 * np.log(np.where(u1 > 0.0, u1, _TINY)))
        z = np.empty(2 * pairs)
        z[0::2] = radius * np.cos(2.0 * math.pi * u2)
        z[1::2] = radius * np.sin(2.0 * math.pi * u2)
        return (z * sigma + mu)[:n]

    # --- state, for checkpoints ----------------------------------------------------

    def get_state(self) -> int:
        return self.state

    def set_state(self, state: int) -> None:
        if not 0 < state <= MASK64:
            raise ValueError(f"invalid RNG state {state}")
        self.state = state


# Below this many draws ``random_u32_array`` loops over the scalar path (one lane
# would have to be jumped to and stepped serially anyway).
_SCALAR_BELOW = 128

# u1 == 0 happens once in 2**24 draws; log(0) would be -inf. Use the smallest
# positive value the generator can produce instead, a finite radius of ~5.77.
_TINY = 1.0 / 16777216.0


def _box_muller(u1: float, u2: float) -> tuple[float, float]:
    radius = math.sqrt(-2.0 * math.log(u1 if u1 > 0.0 else _TINY))
    angle = 2.0 * math.pi * u2
    return radius * math.cos(angle), radius * math.sin(angle)


# --- jumping ahead ------------------------------------------------------------------
#
# One xorshift step is a linear map M on the 64 bits of the state (over GF(2)).
# The state after k steps is M^k s. We represent a linear map by the images of
# the 64 basis vectors (a list of 64 ints), and square it to get M^(2^i).

def _step(s: int) -> int:
    s ^= s >> 12
    s ^= (s << 25) & MASK64
    s ^= s >> 27
    return s


def _apply(matrix: list[int], s: int) -> int:
    out = 0
    bit = 0
    while s:
        if s & 1:
            out ^= matrix[bit]
        s >>= 1
        bit += 1
    return out


def _compose(a: list[int], b: list[int]) -> list[int]:
    """The map ``a`` after ``b``."""
    return [_apply(a, col) for col in b]


_POWERS: list[list[int]] = [[_step(1 << i) for i in range(64)]]


def _power(i: int) -> list[int]:
    """M^(2^i), cached."""
    while len(_POWERS) <= i:
        _POWERS.append(_compose(_POWERS[-1], _POWERS[-1]))
    return _POWERS[i]


def _advance(s: int, k: int) -> int:
    i = 0
    while k:
        if k & 1:
            s = _apply(_power(i), s)
        k >>= 1
        i += 1
    return s


def _matrix_power(k: int) -> list[int]:
    """M^k as a matrix, so that many jumps of k steps cost one product each."""
    result = [1 << i for i in range(64)]
    i = 0
    while k:
        if k & 1:
            result = _compose(_power(i), result)
        k >>= 1
        i += 1
    return result


def _jump_states(state: int, n: int) -> np.ndarray:
    """Starting states for the lanes of ``random_u32_array``: lane j at J^j state, J the
    jump of one lane's draws, found for all lanes in log2(lanes) vectorised doublings."""
    lanes = max(1, min(LANES, n // 64))
    steps = -(-n // lanes)
    starts = np.array([state], dtype=np.uint64)
    for jump in _lane_jumps(steps, (lanes - 1).bit_length()):
        starts = np.concatenate([starts, _apply_to_lanes(jump, starts)])  # twice as many
    return starts[:lanes]


LANES = 4096
_BITS = np.arange(64, dtype=np.uint64)


@functools.lru_cache(maxsize=32)
def _lane_jumps(steps: int, doublings: int) -> tuple[np.ndarray, ...]:
    """The columns of J^(2^k), J = M^steps, for k < doublings (cached: a run asks for
    the same sizes again and again, one dropout mask after another)."""
    jump, out = _matrix_power(steps), []
    for _ in range(doublings):
        out.append(np.array(jump, dtype=np.uint64))
        jump = _compose(jump, jump)
    return tuple(out)


def _apply_to_lanes(matrix: np.ndarray, states: np.ndarray) -> np.ndarray:
    """``_apply`` to every state at once: the XOR of the columns whose bit is set."""
    bits = (states[:, None] >> _BITS) & np.uint64(1)          # (lanes, 64)
    return np.bitwise_xor.reduce(bits * matrix, axis=1)       # (lanes,)
