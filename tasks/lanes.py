"""Coalescing at the api: which waiting requests for a model version go into the next message.

A lane holds the requests for one model version that are not yet published. It publishes at once
while fewer than `limit` of its messages are in flight, so a lone request never waits. Once the limit
is reached, new requests wait in the lane and leave together in one message when a reply frees a
slot: under load, each message carries many requests, and Celery's per-message cost (tens of
microseconds of Redis, about a millisecond of Python across api and worker) is paid once for all.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from inference.bytes_tensors import payload_nbytes
from inference.errors import ResourceExhausted
from inference.request import InferenceRequest, InferenceResult

Entry = tuple[InferenceRequest, Future[InferenceResult]]

MESSAGES_IN_FLIGHT_PER_WORKER = 2  # one being computed, one on its way: keeps every worker busy
# Requests stop joining a message once it holds this many tensor bytes: a worker's in-flight budget
# (--worker_max_inflight_mb) then judges large requests one by one, not a pile of them at once.
MAX_COALESCED_BYTES = 16 << 20


class Lane:
    def __init__(self, max_requests_per_message: int) -> None:
        self._lock = threading.Lock()
        self._waiting: list[Entry] = []
        self._in_flight = 0
        self._taking = False
        self._max_per_message = max_requests_per_message
        self.limit = MESSAGES_IN_FLIGHT_PER_WORKER

    def add(self, entry: Entry, workers: int, max_waiting: int) -> None:
        """Queue a request; raises ResourceExhausted when `max_waiting` requests already wait here."""
        with self._lock:
            if len(self._waiting) >= max_waiting:
                raise ResourceExhausted(
                    f"Too many requests waiting for model {entry[0].model} ({len(self._waiting)}); retry later"
                )
            self._waiting.append(entry)
            self.limit = MESSAGES_IN_FLIGHT_PER_WORKER * max(workers, 1)

    def take(self) -> list[Entry] | None:
        """The requests for the next message, or None if nothing may be published now.

        Whoever gets a list must publish it and then call `published()`; one taker at a time keeps
        the requests in arrival order.
        """
        with self._lock:
            if self._taking or self._in_flight >= self.limit:
                return None
            taken: list[Entry] = []
            nbytes = 0
            while self._waiting and len(taken) < self._max_per_message:
                size = _tensor_bytes(self._waiting[0][0])
                if taken and nbytes + size > MAX_COALESCED_BYTES:
                    break
                entry = self._waiting.pop(0)
                if not entry[1].cancelled():  # its deadline passed while it waited here
                    taken.append(entry)
                    nbytes += size
            if not taken:
                return None
            self._taking = True
            self._in_flight += 1
            return taken

    def may_publish(self) -> bool:
        """Whether a `take()` now would give requests: some wait, no one is taking, and a slot is free. When
        it is False, whoever holds the lane (a taker, or a reply freeing a slot) publishes them later."""
        with self._lock:
            return bool(self._waiting) and not self._taking and self._in_flight < self.limit

    def abandon(self) -> list[Entry]:
        """Everything still waiting here, taken out (its queue lost its last worker)."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
            return waiting

    def published(self) -> None:
        with self._lock:
            self._taking = False

    def completed(self) -> None:
        """A message of this lane was answered (or given up on): its slot is free."""
        with self._lock:
            self._in_flight -= 1


def _tensor_bytes(request: InferenceRequest) -> int:
    return sum(payload_nbytes(array) for array in request.inputs.values())
