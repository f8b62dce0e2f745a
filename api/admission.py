"""Admission of inference work into the api: a SIGTERM drains it instead of cutting it off, and the
request bytes held at once stay within the in-flight budget (--max_inflight_mb; see tasks.budget)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from inference.bytes_tensors import payload_nbytes
from inference.errors import Unavailable
from inference.validation import RequestTensor
from tasks.budget import ByteBudget
from tasks.memory import TrimSoon

SHUTTING_DOWN = "The server is shutting down; retry on another instance"

# Budget bytes the current request already holds from the moment its head announced its body
# (api.rest_limits), until it is answered: admit() takes only what its tensors need beyond them, so
# receiving, parsing and serving a REST request are one reservation, not two.
PREPAID_BYTES: ContextVar[int] = ContextVar("prepaid_bytes", default=0)


class Admission:
    """Counts the requests in progress and the bytes they hold; once closed, admits nothing new and lets
    the rest finish."""

    def __init__(self, max_inflight_bytes: int) -> None:
        self._condition = threading.Condition()
        self._in_progress = 0
        self.closed = False
        self.budget = ByteBudget(max_inflight_bytes, "this api (--max_inflight_mb)")
        self._trim = TrimSoon()

    @contextmanager
    def admit(self, nbytes: int = 0) -> Iterator[None]:
        """Admit a request holding `nbytes` of tensors until it is answered: UNAVAILABLE when draining,
        RESOURCE_EXHAUSTED when they do not fit the budget."""
        with self._condition:
            if self.closed:
                raise Unavailable(SHUTTING_DOWN)
            self._in_progress += 1
        try:
            prepaid = PREPAID_BYTES.get()
            with self.budget.hold(max(0, nbytes - prepaid), already_mine=prepaid):
                yield
        finally:
            with self._condition:
                self._in_progress -= 1
                self._condition.notify_all()
            self._trim.after(nbytes)  # served or refused, a large request leaves freed memory behind

    def released(self, nbytes: int) -> None:
        """A request's prepaid `nbytes` (see PREPAID_BYTES) are given back: it was answered."""
        self.budget.release(nbytes)
        self._trim.after(nbytes)

    def close(self) -> int:
        """Admit nothing more; returns how many requests are still in progress."""
        with self._condition:
            self.closed = True
            return self._in_progress

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until every admitted request finished (True) or `timeout_s` passed (False)."""
        with self._condition:
            return self._condition.wait_for(lambda: self._in_progress == 0, timeout=timeout_s)


def request_bytes(inputs: dict[str, RequestTensor]) -> int:
    """The tensor bytes a request holds in the api, as sent (raw content) or as decoded (JSON values)."""
    return sum(
        len(tensor.content)
        if tensor.content is not None
        else payload_nbytes(tensor.values)
        if tensor.values is not None
        else 0
        for tensor in inputs.values()
    )
