"""The merge engine of ``tinylm.bpe``: a token sequence held in numpy arrays, on which a
merge costs time in proportion to its own occurrences, not to the length of the text.

One engine serves both directions. Training (``learn``) asks it for the most frequent
pair, merges it and repeats; encoding (``apply``) feeds it a trained merge list in order.
Both produce the same sequence from the same text and merges, which is what makes
"encoding the training text gives the training's final sequence" true by construction.

**The sequence.** Position ``p`` is byte ``p`` of the text. ``tok[p]`` is the token that
starts there, or -1 once ``p`` has been swallowed by a merge to its left; ``nxt[p]`` and
``prv[p]`` link the live positions, -1 where a chunk ends or begins (a pre-split chunk
boundary is a link that was never made). The arrays have one extra slot at the end,
``tok[n] = -1``, so that ``tok[nxt[p]]`` is a valid read for a position without a next
(index -1 is that slot) and simply matches no token.

**Pairs.** A pair (left, right) is one int64 key, ``left * K + right`` (``K`` is larger
than every id), so keys sort as the pairs do. ``where[key]`` is a list of position
arrays that contains every position where the pair occurs, and possibly positions where
it used to: entries go stale when their neighbourhood merges, and are checked when the
pair's turn comes (``tok[p] == left`` and ``tok[nxt[p]] == right``). A key never
returns to a position once it has left it (a position's left token only grows, and its
right token only grows while the left one stays), so no position is listed twice.

**Counts** (training only). ``counts[key]`` is exact at all times: the number of
positions that hold the pair. A merge of (a, b) into z changes the pairs at three
positions per occurrence: the one before (``L``, which held (x, a)), the occurrence
itself (``P``, (a, b)) and its right half (``Q``, (b, y)); afterwards pairs are held at
two, the new ``prv[P]`` ((x, z)) and ``P`` ((z, y)). Where occurrences touch (``abab``,
a run of ``aaaa``), an ``L`` is another occurrence's ``Q``: the pair between them is
taken away once, and the new pair (z, z) is added once. Every pair taken away or added
shares one side with the merge, so the others are counted with one ``np.bincount`` and
grouped with one radix sort over the neighbours' ids: no Python loop over occurrences,
only over the distinct pairs a merge touches.

**Why it is fast.** Per merge the work is proportional to that merge's occurrences
(and the distinct pairs around them), and the next best pair comes from a heap; the
text is read once, at the start, to count the byte pairs.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable

import numpy as np

Progress = Callable[[int, int], None]  # (merges done, merges asked for)

FIRST_ID = 256  # the byte values come first: merge i makes id 256 + i


class Sequence:
    """A text's bytes as a linked token sequence, cut at ``starts`` (the byte offsets where
    a pre-split chunk begins), with the positions of each pair and, if ``count``, their
    exact counts. ``K`` bounds the ids the sequence will ever hold."""

    def __init__(self, data: bytes, starts: np.ndarray | None, K: int, count: bool,
                 keep: Callable[[int], bool] | None = None) -> None:
        n = len(data)
        self.K = K
        self.count = count
        # encoding stores only the pairs some later merge will look for
        self.keep = keep
        self.index = np.int32 if n < np.iinfo(np.int32).max - 1 else np.int64
        tok = np.empty(n + 1, np.int32)
        tok[:n] = np.frombuffer(data, np.uint8)
        tok[n] = -1
        nxt = np.arange(1, n + 2, dtype=self.index)
        prv = np.arange(-1, n, dtype=self.index)
        nxt[n - 1:] = -1  # the last byte has no next (and, with n == 0, the slot none)
        prv[n] = -1
        if starts is not None and len(starts):
            starts = starts[(starts > 0) & (starts < n)]
            nxt[starts - 1] = -1
            prv[starts] = -1
        self.tok, self.nxt, self.prv = tok, nxt, prv
        self.where: dict[int, list[np.ndarray]] = {}
        self.counts: dict[int, int] = {}
        p = np.flatnonzero(nxt[:n] >= 0).astype(self.index)
        # the first pairs are two bytes: a 16-bit key, which numpy's stable sort radix-sorts
        k16 = (tok[p] << 8 | tok[p + 1]).astype(np.uint16)
        order = np.argsort(k16, kind="stable")
        self._file(k16[order], p[order], lambda k: (k >> 8) * K + (k & 255))

    def _file(self, sorted_keys: np.ndarray, positions: np.ndarray,
              to_key: Callable[[np.ndarray], np.ndarray]) -> list[int]:
        """Add ``positions`` (grouped by their ``sorted_keys``, which ``to_key`` makes pair
        keys) to ``where`` and to the counts; the pair keys it touched."""
        if not len(sorted_keys):
            return []
        firsts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[firsts[1:], len(sorted_keys)]
        keys_list = to_key(sorted_keys[firsts].astype(np.int64)).tolist()
        where, counts, keep = self.where, self.counts, self.keep
        for key, lo, hi in zip(keys_list, firsts.tolist(), ends.tolist()):
            if keep is not None and not keep(key):
                continue
            listed = where.get(key)
            if listed is None:
                where[key] = [positions[lo:hi]]
            else:
                listed.append(positions[lo:hi])
            if self.count:
                counts[key] = counts.get(key, 0) + hi - lo
        return keys_list

    def _file_by(self, neighbours: np.ndarray, positions: np.ndarray,
                 to_key: Callable[[np.ndarray], np.ndarray]) -> list[int]:
        """``_file`` for pairs that share one side: grouped by the other side's token."""
        # ids below 2**16 sort as uint16, which numpy's stable sort radix-sorts in O(n)
        narrow = neighbours.astype(np.uint16) if self.K <= 1 << 16 else neighbours
        order = np.argsort(narrow, kind="stable")
        return self._file(neighbours[order], positions[order], to_key)

    def _lose(self, neighbours: np.ndarray, to_key: Callable[[np.ndarray], np.ndarray]
              ) -> list[int]:
        """Take one off the count of the pair ``to_key(x)`` for each x in ``neighbours``."""
        if not len(neighbours):
            return []
        times = np.bincount(neighbours)
        present = np.flatnonzero(times)
        keys = to_key(present).tolist()
        counts = self.counts
        for key, k in zip(keys, times[present].tolist()):
            counts[key] -= k
        return keys

    def merge(self, left: int, right: int, new: int) -> list[int]:
        """Replace the occurrences of (left, right) by ``new``, left to right without
        overlap; the keys whose counts changed (training), or the keys made (encoding)."""
        K = self.K
        listed = self.where.pop(left * K + right, None)
        if listed is None:
            return []
        tok, nxt, prv = self.tok, self.nxt, self.prv
        P = listed[0] if len(listed) == 1 else np.concatenate(listed)
        P = P[tok[P] == left]
        P = P[tok[nxt[P]] == right]
        if left == right and len(P) > 1:
            P = _every_other(np.sort(P), nxt)
        if not len(P):
            return []
        Q = nxt[P]
        L = prv[P]
        R = nxt[Q]
        with_r = R >= 0
        # Q dies first: an L that is another occurrence's Q (the b of "ab|ab") then reads -1,
        # so the pair (b, a) between two occurrences is taken away once, as an R's pair
        tok[Q] = -1
        touched: list[int] = []
        if self.count:
            self.counts[left * K + right] -= len(P)
            touched = [left * K + right]
            before, after = tok[L], tok[R]  # an R that is another occurrence's P reads left
            touched += self._lose(before[before >= 0], lambda x: x * K + left)
            touched += self._lose(after[after >= 0], lambda y: right * K + y)
        tok[P] = new
        nxt[P] = R
        prv[R[with_r]] = P[with_r]
        # the pairs now: (x, new) at each new prv[P], unless that is an occurrence itself,
        # whose pair (new, new) is filed as the (new, y) at its own position
        L = prv[P]
        L = L[L >= 0]
        L = L[tok[L] != new]
        P = P[with_r]
        touched += self._file_by(tok[L], L, lambda x: x * K + new)
        touched += self._file_by(tok[nxt[P]], P, lambda y: new * K + y)
        return touched

    def tokens(self) -> np.ndarray:
        """The token sequence now, chunk after chunk (int32)."""
        tok = self.tok[:-1]
        return tok[tok >= 0]


def _every_other(P: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Of the sorted positions of a pair (a, a), those a left-to-right pass merges: in each
    run of occurrences that overlap one another (``aaaa``), the 1st, 3rd, 5th..."""
    joined = np.zeros(len(P), bool)
    joined[1:] = nxt[P[:-1]] == P[1:]
    run_start = np.flatnonzero(~joined)
    run = np.cumsum(~joined) - 1
    return P[(np.arange(len(P)) - run_start[run]) % 2 == 0]


def learn(seq: Sequence, n_merges: int, progress: Progress | None = None
          ) -> list[tuple[int, int]]:
    """Merge the most frequent pair of ``seq`` (ties: the smallest (left, right)) up to
    ``n_merges`` times, or until no pair is left; the merges, in order.

    The priority structure is a heap of ``-count * K**2 + key`` (one int sorts as
    (-count, left, right)) with lazy deletion: a count change pushes a new entry and the
    old one stays until popped, when it no longer matches ``counts`` and is dropped."""
    K2 = seq.K * seq.K
    counts = seq.counts
    heap = [-c * K2 + key for key, c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while heap and len(merges) < n_merges:
        entry = heapq.heappop(heap)
        minus, key = divmod(entry, K2)
        if counts.get(key) != -minus:
            continue  # stale: the pair's count changed since this entry was pushed
        left, right = divmod(key, seq.K)
        for changed in set(seq.merge(left, right, FIRST_ID + len(merges))):
            c = counts.get(changed, 0)
            if c > 0:
                heapq.heappush(heap, -c * K2 + changed)
            else:
                counts.pop(changed, None)
        merges.append((left, right))
        if progress is not None:
            progress(len(merges), n_merges)
    return merges


def apply(seq: Sequence, merges: Iterable[tuple[int, int]]) -> None:
    """Merge ``merges`` into ``seq`` in their order (encoding): merge i makes id 256 + i."""
    for i, (left, right) in enumerate(merges):
        seq.merge(left, right, FIRST_ID + i)
