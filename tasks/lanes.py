"""Coalescing at the api: which waiting requests for a model version go into the next message.

A lane holds the requests for one model version that are not yet published, by kind: their priority level
and tenant (inference.priorities). Each kind publishes at once while fewer than `limit` of its messages are in
flight, so a lone request never waits. Once its limit is reached, its new requests wait in the lane and leave
together in one message when a reply frees one of its slots: under load, each message carries many requests,
and Celery's per-message cost (tens of microseconds of Redis, about a millisecond of Python across api and
worker) is paid once for all.

A message holds one kind, and kinds do not wait for each other's slots: a request of the highest level, or
of a tenant that sends little, is published at once beside a flood of other requests, rather than after a
whole message of them. Who goes first among everything published is decided where the requests meet, in the
worker's batcher (inference.fair_queue): the highest level first, with ageing, and fair shares between tenants.
When several kinds may publish at the same moment, the highest level goes first, and tenants of one level
take turns.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from inference.bytes_tensors import payload_nbytes
from inference.errors import ResourceExhausted
from inference.priorities import Priority
from inference.request import InferenceRequest, InferenceResult

Entry = tuple[InferenceRequest, Future[InferenceResult]]
Kind = tuple[int, str]  # (priority level, tenant)

MESSAGES_IN_FLIGHT_PER_WORKER = 2  # one being computed, one on its way: keeps every worker busy
# Requests stop joining a message once it holds this many tensor bytes: a worker's in-flight budget
# (--worker_max_inflight_mb) then judges large requests one by one, not a pile of them at once.
MAX_COALESCED_BYTES = 16 << 20


@dataclass
class _Waiting:
    """One kind's requests waiting here, and its messages in flight."""

    priority: Priority
    entries: deque[Entry] = field(default_factory=deque)
    in_flight: int = 0
    turn: int = 0  # when it last published: tenants of a level take turns


@dataclass(frozen=True)
class Taken:
    """The requests of the next message, all of one kind."""

    entries: list[Entry]
    priority: Priority

    @property
    def kind(self) -> Kind:
        return self.priority.level, self.priority.tenant


class Lane:
    def __init__(self, max_requests_per_message: int) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[Kind, _Waiting] = {}
        self._taking = False
        self._turns = itertools.count(1)
        self._max_per_message = max_requests_per_message
        self.limit = MESSAGES_IN_FLIGHT_PER_WORKER

    def add(self, entry: Entry, priority: Priority, workers: int, max_waiting: int) -> None:
        """Queue a request of `priority`; raises ResourceExhausted when `max_waiting` requests of its kind
        already wait here."""
        with self._lock:
            waiting = self._kinds.get((priority.level, priority.tenant))
            if waiting is None:
                waiting = self._kinds[priority.level, priority.tenant] = _Waiting(priority)
            if len(waiting.entries) >= max_waiting:
                raise ResourceExhausted(
                    f"Too many requests waiting for model {entry[0].model} ({len(waiting.entries)}); retry later"
                )
            waiting.priority = priority  # the tenant's weight as now configured
            waiting.entries.append(entry)
            self.limit = MESSAGES_IN_FLIGHT_PER_WORKER * max(workers, 1)

    def take(self) -> Taken | None:
        """The requests for the next message, or None if nothing may be published now.

        Whoever gets them must publish them and then call `published()`; one taker at a time keeps each
        kind's requests in arrival order.
        """
        with self._lock:
            if self._taking:
                return None
            for waiting in sorted(self._ready(), key=lambda w: (w.priority.level, w.turn)):
                taken = self._take(waiting)
                if taken:
                    self._taking = True
                    waiting.in_flight += 1
                    waiting.turn = next(self._turns)
                    return Taken(taken, waiting.priority)
                self._forget_if_idle(waiting)
            return None

    def _ready(self) -> list[_Waiting]:
        return [w for w in self._kinds.values() if w.entries and w.in_flight < self.limit]

    def _take(self, waiting: _Waiting) -> list[Entry]:
        taken: list[Entry] = []
        nbytes = 0
        entries = waiting.entries
        while entries and len(taken) < self._max_per_message:
            size = _tensor_bytes(entries[0][0])
            if taken and nbytes + size > MAX_COALESCED_BYTES:
                break
            entry = entries.popleft()
            if not entry[1].cancelled():  # its deadline passed while it waited here
                taken.append(entry)
                nbytes += size
        return taken

    def may_publish(self) -> bool:
        """Whether a `take()` now could give requests: some wait with a slot of their kind free, and no one is
        taking. When it is False, whoever holds the lane (a taker, or a reply freeing a slot) publishes them
        later."""
        with self._lock:
            return not self._taking and bool(self._ready())

    def abandon(self) -> list[Entry]:
        """Everything still waiting here, taken out (its queue lost its last worker)."""
        with self._lock:
            waiting = [entry for kind in self._kinds.values() for entry in kind.entries]
            for kind in list(self._kinds.values()):
                kind.entries.clear()
                self._forget_if_idle(kind)
            return waiting

    def published(self) -> None:
        with self._lock:
            self._taking = False

    def completed(self, kind: Kind) -> None:
        """A message of this kind was answered (or given up on): its slot is free."""
        with self._lock:
            waiting = self._kinds[kind]
            waiting.in_flight -= 1
            self._forget_if_idle(waiting)

    def _forget_if_idle(self, waiting: _Waiting) -> None:
        """A kind with nothing waiting or in flight is dropped: tenants come and go."""
        if not waiting.entries and not waiting.in_flight:
            del self._kinds[waiting.priority.level, waiting.priority.tenant]


def _tensor_bytes(request: InferenceRequest) -> int:
    return sum(payload_nbytes(array) for array in request.inputs.values())
