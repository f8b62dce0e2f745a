"""Waiting for SIGINT / SIGTERM, as the api and all-in-one roles do."""

from __future__ import annotations

import signal
import threading
import time


class StopSignals:
    """SIGINT / SIGTERM, caught as a flag that every thread sees as soon as the handler has run: the
    supervisor's watcher reads it before restarting a child, since a signal sent to a whole process
    group or cgroup (a terminal's Ctrl-C, `kill -- -pgid`, systemd) stops the children too.

    The handlers only append to a list: taking a lock (Event.set) inside a signal handler deadlocks when
    a second signal arrives while the first handler holds it."""

    def __init__(self) -> None:
        self._received: list[int] = []

    def install(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda signum, _frame: self._received.append(signum))
        return self

    @property
    def received(self) -> bool:
        return bool(self._received)

    def wait(self, extra_check: threading.Event | None = None) -> None:
        """Block until a signal came (or `extra_check` is set)."""
        while not self._received and not (extra_check is not None and extra_check.is_set()):
            time.sleep(0.2)


def wait_for_stop_signal() -> None:
    """Block until SIGINT/SIGTERM."""
    StopSignals().install().wait()
