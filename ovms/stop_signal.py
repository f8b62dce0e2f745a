"""Waiting for SIGINT / SIGTERM, as the api and all-in-one roles do."""

from __future__ import annotations

import signal
import threading
import time


def wait_for_stop_signal(extra_check: threading.Event | None = None) -> None:
    """Block until SIGINT/SIGTERM (or `extra_check` is set).

    The handlers only flip a flag: taking a lock (Event.set) inside a signal handler deadlocks when a
    second signal arrives while the first handler holds it.
    """
    received: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, _frame: received.append(signum))
    while not received and not (extra_check is not None and extra_check.is_set()):
        time.sleep(0.2)
