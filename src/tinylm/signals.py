"""Ctrl-C and SIGTERM deferred: a request to stop, answered where stopping is safe.

A training run must not stop in the middle of an update (its arrays would
be half-stepped) nor while it commits a checkpoint. ``Deferred`` turns the
first SIGINT or SIGTERM into a flag that the loop checks between two
updates; a second signal of the same kind then acts at once (Ctrl-C raises
``KeyboardInterrupt``, SIGTERM ends the process), which the store's atomic
commits make safe too.

Of several processes (tinylm.distributed), all must stop before the same
step or none: a signal counts once the processes have agreed on it, in a
collective of their own (``check(agree=True)``) or in the all-reduce of an
update's gradients, which carries every process's flag (``agreed``).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from tinylm import distributed

DEFERRED = (signal.SIGINT, signal.SIGTERM)


class Deferred:
    """Within ``with``: the first SIGINT or SIGTERM sets ``signum`` instead of acting.

    The handlers are the main thread's to set; elsewhere (a notebook's
    worker thread) the flag is only ever raised by ``check``'s agreement.
    """

    def __init__(self, world: distributed.World = distributed.World()) -> None:
        self.world = world
        self.signum: int | None = None  # the signal this process received, if any
        self._agreed = False  # several processes: all of them know that one was stopped
        self._previous: dict[int, Any] = {}

    @property
    def received(self) -> bool:
        """Whether this process was asked to stop (what it sends to the others)."""
        return self.signum is not None

    def agreed(self, stops: float) -> None:
        """Take the sum of every process's ``received`` from an all-reduce."""
        self._agreed = self._agreed or stops > 0

    def check(self, agree: bool = True) -> None:
        """Raise ``KeyboardInterrupt`` if the run was asked to stop.

        Of several processes, with ``agree`` the processes agree here (a
        collective every process must reach); without it the last update's
        all-reduce has (``agreed``).
        """
        stop = self.received
        if self.world.distributed:
            if agree:
                self._agreed = distributed.any_process(stop) or self._agreed
            stop = self._agreed
            if stop and self.signum is None:
                self.signum = signal.SIGTERM  # another process was stopped
        if stop:
            raise KeyboardInterrupt

    def __enter__(self) -> Deferred:
        self.signum, self._agreed = None, False
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.getsignal(signum) for signum in DEFERRED}
            for signum in DEFERRED:
                signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signum, self._previous[signum])  # the next one acts at once

    def __exit__(self, *exc: Any) -> None:
        for signum, old in self._previous.items():
            signal.signal(signum, old)
        self._previous = {}
