"""An in-flight byte budget: how much request data a process holds at once before it refuses more.

A request is admitted when its bytes fit beside what is already held, or when nothing is held (so a
single request within --max_request_mb is always served on an idle process); otherwise it is refused
at once with RESOURCE_EXHAUSTED / 429, never queued, so a burst of large requests cannot grow memory
without bound and nothing waits for room.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from inference.errors import ResourceExhausted


class ByteBudget:
    def __init__(self, limit_bytes: int, what: str) -> None:
        """`what` names the holder and its flag in the refusal, e.g. "this api (--max_inflight_mb)"."""
        self.limit_bytes = limit_bytes
        self._what = what
        self._lock = threading.Lock()
        self.held_bytes = 0

    @contextmanager
    def hold(self, nbytes: int, already_mine: int = 0) -> Iterator[None]:
        """Hold `nbytes` for the duration of the block; raises ResourceExhausted if they do not fit."""
        self.reserve(nbytes, already_mine=already_mine)
        try:
            yield
        finally:
            self.release(nbytes)

    def reserve(self, nbytes: int, refuse: bool = True, already_mine: int = 0) -> None:
        """Hold `nbytes` until `release`; raises ResourceExhausted if they do not fit (and `refuse`).
        `already_mine`: bytes the same holder reserved before (a body received in parts), which do not
        count as held by others: a holder alone is always admitted."""
        with self._lock:
            if refuse and nbytes and self.held_bytes > already_mine and self.held_bytes + nbytes > self.limit_bytes:
                raise ResourceExhausted(
                    f"Too much request data in flight on {self._what}: {_mib(self.held_bytes)} MiB held, "
                    f"{_mib(nbytes)} MiB more would pass the limit of {_mib(self.limit_bytes)} MiB; retry later"
                )
            self.held_bytes += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.held_bytes -= nbytes


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f}"
