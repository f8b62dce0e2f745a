"""Dynamic batching: requests for one model version share OpenVINO inferences.

Policy, per model version:
- a batch holds at most `max_batch_size` rows (the sum of the requests' batch dimensions);
- it is dispatched as soon as an infer request is free, unless more requests are already on their
  way (announced with `incoming`): then it waits for them, but never longer than `max_queue_delay`
  counted from the oldest waiting request. A lone request on an idle server is never delayed;
- only requests whose non-batch dimensions match are concatenated; others wait for the next batch;
- waiting requests are served by priority: the highest level first (with ageing), and within a level by
  deficit round robin between tenants (inference.fair_queue); a batch holds requests of one level only;
- an inference cannot be interrupted, so a request of one kind (level, tenant; async job chunks are a kind
  of their own) must not find every infer request busy with another kind's work. While more than one kind
  shares the version (sent a request within SHARED_WINDOW_S):
  - with more infer requests than `reserved` (a model's `reserved_infer_requests`, default 1), the last
    `reserved` free ones are kept for the kinds present that are waiting (their tenant runs nothing at their
    level or a higher one): a kind that is not waiting does not take them while a waiting kind of its level or
    a higher one is present, and a waiting kind does not while a waiting kind of a higher level is. A request of
    a waiting kind then starts at once, and on a device whose infer requests run in parallel (CPU streams) it
    takes about as long as alone; the flooding kind keeps the other infer requests. A tenant flooding at two
    levels is one flood (its lower level is not waiting), and job chunks do not take them from interactive
    requests;
  - otherwise (one infer request, or no fewer reserved than there are), a batch holds no more rows than are
    expected to take GUARD_SLACK_S longer than a lone request (job chunks do not count as a kind here), so a
    request of another kind waits for at most about one lone request's inference. The estimate comes from the
    inferences this version ran (their time by rows);
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
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from inference.errors import VERSION_RETIRED, NotFound, ServingError
from inference.fair_queue import FairQueue
from inference.model import CompiledVersion
from inference.priorities import JOB_LEVEL, PLAIN, Priority
from inference.request import Tensors
from inference.statistics import Execution, InferenceStatistics
from inference.validation import batch_rows

log = logging.getLogger("serving")

SHARED_WINDOW_S = 5.0  # a kind of request (level, tenant) counts as present this long after its last request
GUARD_SLACK_S = 0.001  # a shared batch may take this much longer than a lone request
_EWMA = 0.2  # weight of the newest inference in the time by rows


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
    priority: Priority
    arrived: float = field(default_factory=time.monotonic)  # here: what the batching delay counts from
    waiting_since: float = 0.0  # `arrived`, less the time it waited before (in the api's lane): what ages it
    solo: bool = False  # retried alone after its batch failed

    @property
    def cost(self) -> int:
        """What it costs in its tenant's fair share: its rows."""
        return max(self.rows, 1)

    @property
    def kind(self) -> tuple[int, str]:
        return self.priority.level, self.priority.tenant


class DynamicBatcher:
    def __init__(
        self,
        compiled: CompiledVersion,
        max_batch_size: int,
        max_queue_delay_s: float,
        statistics: InferenceStatistics | None = None,
        reserved: int = 1,
    ) -> None:
        """`statistics`: where each successful inference is counted (inference.statistics); `reserved`: the
        infer requests a kind already running leaves free for other kinds present (see the module)."""
        self.compiled = compiled
        # keeping every infer request for others would idle the model: then none is kept (the row guard applies)
        self._reserved = reserved if compiled.nireq > reserved else 0
        self._statistics = statistics
        self.max_rows = max(1, max_batch_size if compiled.batchable else 1)
        self._max_delay = max_queue_delay_s
        self._pending: FairQueue[_Item] = FairQueue()
        self._present: dict[tuple[int, str], float] = {}  # (level, tenant) -> when its last request came
        self._running: Counter[tuple[int, str]] = Counter()  # (level, tenant) -> its inferences running
        self._infer_ns: dict[int, float] = {}  # rows -> the time of an inference of that many rows (moving average)
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

    def submit(
        self, inputs: Tensors, arrivals: Arrivals | None = None, priority: Priority = PLAIN, waited_s: float = 0.0
    ) -> Future[BatchResult]:
        """Queue one validated request (arrays with a leading batch dimension) with its `priority`; it has waited
        `waited_s` already (since the api queued it), which counts in its ageing.

        On an idle model (a free infer request, nothing queued or announced) the request is dispatched
        right here, saving the hand-over to the batching thread.
        """
        try:
            item = _Item(inputs, self._rows(inputs), _shape_key(inputs), Future(), priority)
        except ServingError as error:
            item = _Item(inputs, 0, (), Future(), priority)
            item.future.set_exception(error)
        item.waiting_since = item.arrived - max(waited_s, 0.0)
        with self._cond:
            if self._closed:
                raise NotFound(VERSION_RETIRED)
            if arrivals is not None and arrivals.remaining:
                arrivals.remaining -= 1
                self._expected -= 1
            if item.future.done():  # refused: it never joins a batch
                return item.future
            self._present[item.kind] = item.arrived
            direct = self._free > 0 and not self._pending and self._expected == 0 and self._may_start(*item.kind)
            if direct:
                self._started([item])
            else:
                self._pending.push(item)
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
                self._started(batch)
            self._dispatch(batch)
            del batch  # not kept alive while waiting for the next one: its inputs may be large

    def _next_batch(self) -> list[_Item] | None:
        """Wait (holding the lock) for a free infer request and work it may take, then form a batch."""
        while True:
            while not self._closed and (self._free == 0 or self._pending.next_level(self._may_start) is None):
                # an inference ending or a request coming changes what may start, and so does a kind leaving
                self._cond.wait(self._until_a_kind_leaves() if self._free and self._pending else None)
            while self._closed and not self._pending:  # closing: what is queued is handed over at once
                if self._unfinished == 0:
                    return None
                self._cond.wait()  # a running batch may fail and come back to be retried
            limit = self._batch_rows()
            while self._expected > 0 and sum(item.rows for item in self._pending) < limit:
                remaining = min(item.arrived for item in self._pending) + self._max_delay - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = self._take(self._batch_rows())
            if batch:  # else a kind that came while it waited for batch-mates holds back what could start
                return batch

    def _may_start(self, level: int, tenant: str) -> bool:
        """Whether a batch of this kind may take a free infer request now. Any may while more than `reserved` are
        free (or while closing: what is queued is handed over whatever it is). The last `reserved` are kept for
        kinds present that are *waiting*, i.e. whose tenant runs nothing at their level or a higher one: a waiting
        kind takes them unless a waiting kind of a higher level is present; a kind not waiting takes them unless
        a waiting kind of its level or a higher one is present."""
        if self._closed or not self._reserved or self._free > self._reserved:
            return True
        waiting = not self._served(level, tenant)
        now = time.monotonic()
        for (other_level, other_tenant), seen in self._present.items():
            if (other_level, other_tenant) == (level, tenant) or now - seen > SHARED_WINDOW_S:
                continue
            if other_level > level or (waiting and other_level == level) or self._served(other_level, other_tenant):
                continue
            return False
        return True

    def _served(self, level: int, tenant: str) -> bool:
        """Whether the tenant runs an inference at this level or a higher one."""
        return any(other == tenant and other_level <= level for other_level, other in self._running)

    def _until_a_kind_leaves(self) -> float | None:
        """Seconds until the next kind present leaves the shared window (which may let a held-back batch start),
        or None."""
        now = time.monotonic()
        left = [seen + SHARED_WINDOW_S - now for seen in self._present.values() if seen + SHARED_WINDOW_S > now]
        return min(left) if left else None

    def _started(self, batch: list[_Item]) -> None:
        """Count a batch about to be dispatched (holding the lock)."""
        self._free -= 1
        self._unfinished += 1
        self._running.update({item.kind for item in batch})

    def _take(self, limit: int) -> list[_Item]:
        """The next batch: the first request of the level served next (inference.fair_queue) among the kinds
        that may start, and after it requests of the same level and shapes (and kinds that may start), in their
        fair order, up to `limit` rows. Empty when no kind may start."""
        level = self._pending.next_level(self._may_start)
        first = self._pending.pop(level, allowed=self._may_start) if level is not None else None
        if first is None:
            return []
        batch, rows = [first], first.rows
        while rows < limit and not first.solo:
            room = limit - rows
            mate = self._pending.pop(
                level,
                lambda item, room=room: item.key == first.key and not item.solo and item.rows <= room,
                self._may_start,
            )
            if mate is None:
                break
            batch.append(mate)
            rows += mate.rows
        return batch

    def _batch_rows(self) -> int:
        """The most rows the next batch may hold: `max_rows`, or, with no infer request reserved while
        several kinds of request (job chunks aside) share the version, the rows expected to take at most
        GUARD_SLACK_S longer than a lone request."""
        now = time.monotonic()
        for kind in [kind for kind, seen in self._present.items() if now - seen > SHARED_WINDOW_S]:
            del self._present[kind]
        if self._reserved or sum(level != JOB_LEVEL for level, _ in self._present) < 2:
            return self.max_rows
        return min(self.max_rows, guard_rows(self._infer_ns))

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
            self._running -= Counter({item.kind for item in batch})
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
            with self._cond:
                last = self._infer_ns.get(execution.rows)
                ns = execution.compute_infer_ns
                self._infer_ns[execution.rows] = ns if last is None else last + _EWMA * (ns - last)
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
            self._pending.push_front(batch)
            self._cond.notify_all()


def guard_rows(infer_ns: dict[int, float]) -> int:
    """The rows an inference may hold to take at most GUARD_SLACK_S longer than one of a single row, from the
    times of the inferences seen by rows: the cost of a row beyond the first is read off the largest batch seen
    and a single row's (without a single row's: the largest batch's time per row, which overstates it). Without
    any batch of several rows seen, no limit."""
    batches = [rows for rows in infer_ns if rows > 1]
    if not batches:
        return 1 << 30
    rows = max(batches)
    single = infer_ns.get(1)
    per_row = (infer_ns[rows] - single) / (rows - 1) if single is not None else infer_ns[rows] / rows
    if per_row <= 0:
        return 1 << 30
    return 1 + int(GUARD_SLACK_S * 1e9 // per_row)


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
