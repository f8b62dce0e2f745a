"""Dynamic batching: requests for one model version share OpenVINO inferences.

Policy, per model version:
- a batch holds at most `max_batch_size` rows (the sum of the requests' batch dimensions);
- it is dispatched as soon as an infer request is free, unless more requests are already on their
  way (announced with `incoming`): then it waits for them, but never longer than `max_queue_delay`
  counted from the oldest waiting request. A lone request on an idle server is never delayed;
- only requests whose non-batch dimensions match are concatenated; others wait for the next batch;
- outputs are split back by rows, so each request gets exactly its own slice. If a batched inference
  fails, its requests are retried one by one, so a bad request fails alone.

Isolation holds by construction, not only because requests were validated: a request's rows are the first
dimension all its inputs share (one that disagrees fails alone, never joins a batch), and a batch's outputs
are split only if each has exactly as many rows as the batch — otherwise the model's outputs are not per
row, its requests are run again one by one, and the version stops batching. A request run alone gets its
outputs whole.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from inference.errors import VERSION_RETIRED, NotFound, ServingError
from inference.model import CompiledVersion
from inference.request import Tensors
from inference.statistics import Execution, InferenceStatistics
from inference.validation import batch_rows

log = logging.getLogger("serving")


@dataclass(frozen=True)
class BatchResult:
    outputs: Tensors  # this request's rows only
    rows: int  # this request's rows
    compiled: CompiledVersion  # the version that computed them
    started_at: float  # time.time() when the batch's compute began (its inputs being joined)
    execution: Execution  # the inference that computed them, with its times

    @property
    def batch_rows(self) -> int:
        """Rows in the inference that computed them."""
        return self.execution.rows

    @property
    def infer_s(self) -> float:
        """How long that inference took."""
        return self.execution.compute_infer_ns / 1e9


@dataclass
class Arrivals:
    """Requests of one message announced to the batcher and not yet submitted."""

    remaining: int


@dataclass
class _Started:
    """When a batch's compute began (wall clock, for the time its requests queued; and monotonic), and when
    its inputs were handed to OpenVINO."""

    at: float
    at_ns: int
    submitted_ns: int = 0


@dataclass
class _Item:
    inputs: Tensors
    rows: int
    key: tuple
    future: Future[BatchResult]
    arrived: float = field(default_factory=time.monotonic)
    solo: bool = False  # retried alone after its batch failed


class DynamicBatcher:
    def __init__(
        self,
        compiled: CompiledVersion,
        max_batch_size: int,
        max_queue_delay_s: float,
        statistics: InferenceStatistics | None = None,
    ) -> None:
        """`statistics`: where each successful inference is counted (inference.statistics)."""
        self.compiled = compiled
        self._statistics = statistics
        self.max_rows = max(1, max_batch_size if compiled.batchable else 1)
        self._max_delay = max_queue_delay_s
        self._pending: deque[_Item] = deque()
        self._expected = 0
        self._free = compiled.nireq
        self._unfinished = 0  # inferences whose requests are not yet answered or queued again
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"batcher-{compiled.name}", daemon=True)
        self._thread.start()

    @contextmanager
    def incoming(self, count: int) -> Iterator[Arrivals]:
        """Announce `count` requests about to be submitted (pass the ticket to `submit`), so that a
        partial batch waits for them instead of leaving without them."""
        arrivals = Arrivals(count)
        with self._cond:
            self._expected += count
        try:
            yield arrivals
        finally:
            with self._cond:
                self._expected -= arrivals.remaining
                arrivals.remaining = 0
                self._cond.notify_all()

    def submit(self, inputs: Tensors, arrivals: Arrivals | None = None) -> Future[BatchResult]:
        """Queue one validated request (arrays with a leading batch dimension).

        On an idle model (a free infer request, nothing queued or announced) the request is dispatched
        right here, saving the hand-over to the batching thread.
        """
        try:
            item = _Item(inputs, self._rows(inputs), _shape_key(inputs), Future())
        except ServingError as error:
            item = _Item(inputs, 0, (), Future())
            item.future.set_exception(error)
        with self._cond:
            if self._closed:
                raise NotFound(VERSION_RETIRED)
            if arrivals is not None and arrivals.remaining:
                arrivals.remaining -= 1
                self._expected -= 1
            if item.future.done():  # refused: it never joins a batch
                return item.future
            direct = self._free > 0 and not self._pending and self._expected == 0
            if direct:
                self._free -= 1
                self._unfinished += 1
            else:
                self._pending.append(item)
                self._cond.notify_all()
        if direct:
            self._dispatch([item])
        return item.future

    def _rows(self, inputs: Tensors) -> int:
        """The rows a request adds to a batch: the first dimension all its inputs share. A model that does
        not batch runs each request alone, whatever its inputs' shapes."""
        if self.compiled.batchable:
            return batch_rows({name: array.shape for name, array in inputs.items()})
        first = next(iter(inputs.values()))
        return int(first.shape[0]) if first.ndim else 1

    def close(self) -> None:
        """Finish what is queued and running (a failed batch's requests are still retried one by one), then
        stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self.compiled.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
                self._free -= 1
                self._unfinished += 1
            self._dispatch(batch)
            del batch  # not kept alive while waiting for the next one: its inputs may be large

    def _next_batch(self) -> list[_Item] | None:
        """Wait (holding the lock) for a free infer request and work, then form a batch."""
        while not self._closed and (not self._pending or self._free == 0):
            self._cond.wait()
        while self._closed and not self._pending:
            if self._unfinished == 0:
                return None
            self._cond.wait()  # a running batch may fail and come back to be retried
        while self._expected > 0 and self._pending_rows() < self.max_rows:
            remaining = self._pending[0].arrived + self._max_delay - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        return self._take()

    def _pending_rows(self) -> int:
        key = self._pending[0].key
        return sum(item.rows for item in self._pending if item.key == key)

    def _take(self) -> list[_Item]:
        first = self._pending.popleft()
        batch, rows, skipped = [first], first.rows, []
        while self._pending and rows < self.max_rows and not first.solo:
            item = self._pending.popleft()
            if item.key == first.key and not item.solo and rows + item.rows <= self.max_rows:
                batch.append(item)
                rows += item.rows
            else:
                skipped.append(item)
        self._pending.extendleft(reversed(skipped))
        return batch

    def _dispatch(self, batch: list[_Item]) -> None:
        started = _Started(time.time(), time.perf_counter_ns())
        inputs = batch[0].inputs if len(batch) == 1 else _concatenate(batch)
        future = self.compiled.infer_async(inputs)
        started.submitted_ns = time.perf_counter_ns()
        future.add_done_callback(lambda done: self._finish(batch, done, started))

    def _finish(self, batch: list[_Item], done: Future[Tensors], started: _Started) -> None:
        finished_ns = time.perf_counter_ns()
        with self._cond:
            self._free += 1
            self._cond.notify_all()
        try:
            self._answer(batch, done, started, finished_ns)
        finally:
            with self._cond:
                self._unfinished -= 1
                self._cond.notify_all()

    def _answer(self, batch: list[_Item], done: Future[Tensors], started: _Started, finished_ns: int) -> None:
        error = done.exception()
        if error is not None and len(batch) == 1:
            batch[0].future.set_exception(error)
        elif error is not None:
            log.warning("A batch of %d requests failed (%s); retrying them one by one", len(batch), error)
            self._retry_alone(batch)
        elif len(batch) == 1 or _per_row(done.result(), batch):
            parts = _split(batch, done.result())
            execution = Execution(
                sum(item.rows for item in batch),
                started.submitted_ns - started.at_ns,
                finished_ns - started.submitted_ns,
                time.perf_counter_ns() - finished_ns,
            )
            if self._statistics is not None:
                self._statistics.executed(self.compiled.name, self.compiled.version, execution)
            for item, outputs in zip(batch, parts, strict=True):
                item.future.set_result(BatchResult(outputs, item.rows, self.compiled, started.at, execution))
        else:
            self._stop_batching(batch, done.result())

    def _stop_batching(self, batch: list[_Item], outputs: Tensors) -> None:
        """The model's outputs are not one row per input row: splitting them would hand out other requests'
        rows. Run this batch's requests again one by one, and batch this version no more."""
        log.warning(
            "Model %s version %d: the outputs of a %d-row batch are not per row (%s); its requests run again "
            "one by one, and this version no longer batches",
            self.compiled.name,
            self.compiled.version,
            sum(item.rows for item in batch),
            ", ".join(f"{name}: {tuple(array.shape)}" for name, array in outputs.items()),
        )
        with self._cond:
            self.max_rows = 1
        self._retry_alone(batch)

    def _retry_alone(self, batch: list[_Item]) -> None:
        for item in batch:
            item.solo = True
        with self._cond:
            self._pending.extendleft(reversed(batch))
            self._cond.notify_all()


def _shape_key(inputs: Tensors) -> tuple:
    return tuple((name, array.shape[1:], array.dtype.str) for name, array in inputs.items())


def _concatenate(batch: list[_Item]) -> Tensors:
    return {name: np.concatenate([item.inputs[name] for item in batch]) for name in batch[0].inputs}


def _per_row(outputs: Tensors, batch: list[_Item]) -> bool:
    """Whether every output has one row per row of the batch, so that it can be split back by rows."""
    total = sum(item.rows for item in batch)
    return all(array.ndim and array.shape[0] == total for array in outputs.values())


def _split(batch: list[_Item], outputs: Tensors) -> list[Tensors]:
    """Each request's own rows of the batch's outputs (checked by _per_row), in batch order; a request that
    ran alone gets them whole, whatever their shapes."""
    if len(batch) == 1:
        return [outputs]
    parts = []
    start = 0
    for item in batch:
        end = start + item.rows
        parts.append({name: array[start:end] for name, array in outputs.items()})
        start = end
    return parts
