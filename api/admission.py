"""Admission of inference work into the api, so that a SIGTERM drains it instead of cutting it off."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from inference.errors import Unavailable

SHUTTING_DOWN = "The server is shutting down; retry on another instance"


class Admission:
    """Counts the requests in progress; once closed, admits nothing new and lets the rest finish."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._in_progress = 0
        self.closed = False

    @contextmanager
    def admit(self) -> Iterator[None]:
        with self._condition:
            if self.closed:
                raise Unavailable(SHUTTING_DOWN)
            self._in_progress += 1
        try:
            yield
        finally:
            with self._condition:
                self._in_progress -= 1
                self._condition.notify_all()

    def close(self) -> int:
        """Admit nothing more; returns how many requests are still in progress."""
        with self._condition:
            self.closed = True
            return self._in_progress

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until every admitted request finished (True) or `timeout_s` passed (False)."""
        with self._condition:
            return self._condition.wait_for(lambda: self._in_progress == 0, timeout=timeout_s)
