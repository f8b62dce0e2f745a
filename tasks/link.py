"""Whether this api process reaches its Redis, known to every route without a round trip.

"Its Redis" is the broker (Celery queues) and the result backend (tensors, replies, registry, jobs):
one server, or two (or two dbs of one), all needed to serve. A probe thread PINGs each every
PROBE_INTERVAL_S on a connection of its own that gives up after PROBE_TIMEOUT_S, so a Redis that is
gone (connection refused) or paused (no answer) is noticed within about a second. While the link
is down, readiness is false and every route that needs Redis fails at once with UNAVAILABLE / 503
instead of waiting for a socket timeout; the `on_down` callbacks (the dispatcher failing the
requests that wait for replies) run once per outage. A Redis call that fails
on a route maps to UNAVAILABLE here too (`failed`), and makes the probe look again at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from inference.errors import Unavailable
from tasks.connections import redact, redis_client

log = logging.getLogger("serving")

REDIS_TIMEOUT_S = 2.0  # socket timeout of the api's Redis clients: no call waits longer on a paused Redis
# Longest one blocking Redis call (BLPOP) waits: below every client's socket timeout (the api's 2 s above,
# redis-py's default 5 s), so a long wait never reads as a Redis that stopped answering.
BLOCKING_WAIT_S = 1.0
PROBE_INTERVAL_S = 0.25
PROBE_TIMEOUT_S = 1.0
# Redis cannot serve a command now: no connection, no answer in time, loading, read-only or out of memory.
OUTAGES = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, redis.OutOfMemoryError)


class RedisLink:
    def __init__(self, *urls: str) -> None:
        """`urls`: every Redis the api needs (the same URL given twice is probed once)."""
        self._probes = {
            url: redis_client(url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S)
            for url in dict.fromkeys(urls)
        }
        self._reason: str | None = None  # why Redis is unreachable; None while it answers
        self.up_since = 0.0  # time.monotonic() when Redis last came back (a restarted one may be empty)
        self._lock = threading.Lock()
        self._on_down: list[Callable[[Unavailable], None]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ovms-redis-probe", daemon=True)

    @property
    def up(self) -> bool:
        return self._reason is None

    def on_down(self, callback: Callable[[Unavailable], None]) -> None:
        """Call `callback` with the error clients get, each time Redis becomes unreachable."""
        self._on_down.append(callback)

    def start(self) -> None:
        self._probe_once()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=PROBE_TIMEOUT_S + 1)
        for probe in self._probes.values():
            probe.close()

    def check(self) -> None:
        """UNAVAILABLE at once while Redis is unreachable."""
        reason = self._reason
        if reason is not None:
            raise _unavailable(reason)

    @contextmanager
    def required(self) -> Iterator[None]:
        """Around work that reads or writes Redis: UNAVAILABLE at once while Redis is unreachable, and
        for an outage met on the way (never a 500, never a wait for a socket timeout)."""
        self.check()
        try:
            yield
        except OUTAGES as exc:
            raise self.failed(exc) from None

    def failed(self, error: redis.RedisError | OSError) -> Unavailable:
        """The error a client gets for a Redis call that failed with `error` (see OUTAGES); the probe
        checks the link at once."""
        self._wake.set()
        return _unavailable(f"{type(error).__name__}: {error}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(PROBE_INTERVAL_S)
            self._wake.clear()
            if not self._stop.is_set():
                self._probe_once()

    def _probe_once(self) -> None:
        for url, probe in self._probes.items():
            try:
                probe.ping()
            except (redis.RedisError, OSError) as exc:
                self._went_down(url, f"{type(exc).__name__}: {exc}")
                return
        self._came_back()

    def _went_down(self, url: str, reason: str) -> None:
        with self._lock:
            was_up, self._reason = self._reason is None, reason
        if was_up:
            log.error("Redis %s is unreachable (%s): answering UNAVAILABLE until it is back", redact(url), reason)
            error = _unavailable(reason)
            for callback in self._on_down:
                callback(error)

    def _came_back(self) -> None:
        with self._lock:
            was_down, self._reason = self._reason is not None, None
            if was_down:
                self.up_since = time.monotonic()
        if was_down:
            log.info("Redis %s is reachable again", ", ".join(redact(url) for url in self._probes))


def _unavailable(reason: str) -> Unavailable:
    return Unavailable(f"Redis unavailable ({reason}); retry")


def blocking_pop(client: redis.Redis, key: str, timeout_s: float) -> tuple[bytes, bytes] | None:
    """BLPOP `key` for up to `timeout_s`, in waits of at most BLOCKING_WAIT_S."""
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        # never below 10 ms: Redis reads a timeout under 1 ms as 0, which blocks for good
        item = client.blpop([key], timeout=max(min(remaining, BLOCKING_WAIT_S), 0.01))
        if item is not None:
            return item
    return None
