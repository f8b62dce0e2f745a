"""Api side of the queue: publish predict messages and route their results back to the waiters.

One listener thread per api process blocks on this process's reply list and resolves the futures
of the requests each result answers, so any number of request threads can wait at once without
touching a shared pub/sub connection. A completed message frees its lane's slot, and the listener
publishes what waited for it (tasks.lanes). A message holds requests of one kind: one priority level (the
request's, or its model's default, never above its tenant's best level) and one tenant, with the tenant's
weight (`weights`).

When workers stop serving (tasks.registry), nothing waits for its deadline in vain: a message a lost
worker held (tasks.claims) is run once more by another worker, else fails UNAVAILABLE; a message
still queued where no worker consumes any more is taken back and fails UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import redis

from inference.errors import (
    DEADLINE_PASSED,
    NO_LIVE_WORKER,
    WORKER_LOST,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    ServingError,
    Unavailable,
)
from inference.priorities import HIGHEST_PRIORITY, Priority
from inference.request import InferenceRequest, InferenceResult
from tasks.app import app
from tasks.claims import holders, release
from tasks.heartbeat import HEARTBEAT_INTERVAL_S, HEARTBEAT_TTL_S
from tasks.lanes import Lane, Taken
from tasks.link import RedisLink
from tasks.messages import ComputedOutputs, PredictReply, describe_failure, pack_requests
from tasks.publisher import PredictPublisher
from tasks.registry import Target
from tasks.routing import reply_key

log = logging.getLogger("serving")

MAX_RUNS = 2  # a message whose worker died is run once more: a request that kills workers stops there
# A worker whose heartbeat lapsed stopped at least this long ago: later messages cannot be with it.
LOST_WORKER_SILENCE_S = HEARTBEAT_TTL_S - HEARTBEAT_INTERVAL_S - 0.5


class _Pending:
    """The requests of one published message, waiting for its result."""

    def __init__(self, target: Target, lane: Lane, taken: Taken) -> None:
        self.target = target
        self.lane = lane
        self.priority = taken.priority
        self.kind = taken.kind
        self.futures = {request.request_id: future for request, future in taken.entries}
        self.published_at = time.time()
        self.queued_in = ""  # the Redis list it was queued in, once published
        self.message_text = ""  # the message as queued, once published
        self.runs = 1


class Dispatcher:
    """Publishes predict requests, coalesced per model version (see tasks.lanes), and routes results back."""

    def __init__(
        self,
        store: redis.Redis,
        broker: redis.Redis,
        link: RedisLink,
        max_requests_per_message: int = 64,
        weights: Mapping[str, int] | None = None,
        best_levels: Mapping[str, int] | None = None,
    ) -> None:
        """`store`: the result backend (tensors, replies, claims); `broker`: the Celery queues; `weights`: each
        tenant's weight in the fair share of a model (read at every request, so the mapping may change; a
        tenant not in it weighs 1); `best_levels`: the highest level each tenant's requests may have (0: the
        model's default level; a tenant not in it, e.g. none without a token file, may ask for any)."""
        self._store = store
        self._weights: Mapping[str, int] = weights if weights is not None else {}
        self._best_levels: Mapping[str, int] = best_levels if best_levels is not None else {}
        self._link = link
        link.on_down(self._fail_all_pending)  # a paused Redis may never answer: fail now, not at the deadline
        self._publisher = PredictPublisher(app, store, broker)
        self._max_per_message = max_requests_per_message
        self.reply_to = reply_key(uuid.uuid4().hex)
        self._pending: dict[str, _Pending] = {}
        self._lanes: dict[tuple[str, int], Lane] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="ovms-results", daemon=True)

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        self._stop.set()
        self._listener.join(timeout=3)

    def infer(self, target: Target, request: InferenceRequest) -> InferenceResult:
        """Publish a request (possibly with others) and wait for its answer until its deadline."""
        future = self.submit(target, request)
        try:
            return future.result(timeout=max(request.deadline - time.time(), 0))
        except FutureTimeout:
            if not future.cancel():  # the answer is being delivered right now
                return future.result()
            self._forget(request)
            raise DeadlineExceeded(DEADLINE_PASSED) from None

    def submit(self, target: Target, request: InferenceRequest) -> Future[InferenceResult]:
        """Publish a request (possibly with others) without waiting: the listener resolves the future.
        Raises ResourceExhausted when too many requests already wait for the model, and DeadlineExceeded
        when the deadline passed already (while the request was decoded and validated): such a request is
        not published, so no worker spends a message on it and its error is always this one, never the
        worker's that could otherwise overtake the waiter (outcome())."""
        future, publish = self.enqueue(target, request)
        if publish:
            self.publish_waiting(target)
        return future

    def trigger(self, target: Target, request: InferenceRequest) -> None:
        """Publish a request nobody waits for: it makes a worker load its version (inference.manager.acquire).
        A request that must wait in its lane is dropped there: the messages ahead of it reach a worker too."""
        future = self.submit(target, request)
        if future.cancel():
            self._forget(request)

    def enqueue(self, target: Target, request: InferenceRequest) -> tuple[Future[InferenceResult], bool]:
        """submit() without the Redis round trip: the request waits in its lane. Returns its future and
        whether the caller must now call publish_waiting() (otherwise a message in progress, or a reply
        freeing a slot, takes it along). Never blocks, so an event loop may call it."""
        if request.deadline <= time.time():
            raise DeadlineExceeded(DEADLINE_PASSED)
        future: Future[InferenceResult] = Future()
        request.queued_at = time.time()  # where its time queued begins, in the workers' statistics
        lane = self._lane(target)
        best = self._best_levels.get(request.tenant, HIGHEST_PRIORITY) or target.default_priority
        level = max(request.priority or target.default_priority, best)  # a level asked above it is lowered to it
        priority = Priority(level, request.tenant, self._weights.get(request.tenant, 1))
        lane.add((request, future), priority, target.workers, target.max_queue_size)
        return future, lane.may_publish()

    def publish_waiting(self, target: Target) -> None:
        """Publish what waits in the target's lane while it may have more messages in flight (Redis I/O:
        not on an event loop). Never raises: a message that could not be published fails its requests."""
        self._pump(target, self._lane(target))

    async def outcome(self, request: InferenceRequest, future: Future[InferenceResult]) -> InferenceResult:
        """infer()'s wait for a submitted request, for asyncio callers: it holds no thread. A caller that
        goes away (its task cancelled) stops waiting like one whose deadline passed."""
        answer = asyncio.wrap_future(future)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait({answer}, timeout=max(request.deadline - time.time(), 0))
        except asyncio.CancelledError:
            if future.cancel():
                loop.run_in_executor(None, self._forget, request)  # it may publish: not on the event loop
            raise
        if not answer.done() and future.cancel():
            loop.run_in_executor(None, self._forget, request)
            raise DeadlineExceeded(DEADLINE_PASSED)
        return await answer  # the answer, or the one being delivered right now

    def _lane(self, target: Target) -> Lane:
        key = (target.queue, target.version)
        lane = self._lanes.get(key)
        if lane is None:
            with self._lock:
                lane = self._lanes.setdefault(key, Lane(self._max_per_message))
        return lane

    def _pump(self, target: Target, lane: Lane) -> None:
        """Publish the lane's waiting requests while it may have more messages in flight."""
        while (taken := lane.take()) is not None:
            try:
                self._publish(target, lane, taken)
            finally:
                lane.published()

    def _publish(self, target: Target, lane: Lane, taken: Taken) -> None:
        task_id = uuid.uuid4().hex
        requests = [request for request, _ in taken.entries]
        for index, request in enumerate(requests):
            request.request_id = f"{task_id}.{index}"
        pending = _Pending(target, lane, taken)
        with self._lock:
            self._pending[task_id] = pending
        try:
            precisions = {n: s.precision for n, s in target.signature.inputs.items()}
            envelope, payload = pack_requests(requests, precisions, taken.priority)
            self._link.check()
            pending.queued_in, pending.message_text = self._publisher.publish(
                task_id, envelope, payload, target.queue, self.reply_to, max(envelope.deadline - time.time(), 0.001)
            )
        except Unavailable as error:
            self._resolve_all(task_id, error)
        except (redis.RedisError, OSError) as exc:
            self._resolve_all(task_id, self._link.failed(exc))
        except Exception as exc:  # on the listener thread (a reply freed the slot) it must not stop the listener
            log.exception("Publishing message %s for %s failed", task_id, target.model)
            self._resolve_all(task_id, Internal(f"Publishing the request failed: {exc}"))

    def workers_gone(self, lost: set[str], queues: set[str]) -> None:
        """Some workers stopped serving (see tasks.registry): `lost` ones died with whatever they held;
        `queues` are still consumed by someone."""
        self._abandon_unconsumed(queues)
        try:
            held = holders(self._store, self.reply_to)
            silent_since = time.time() - LOST_WORKER_SILENCE_S
            with self._lock:
                waiting = [(task_id, p) for task_id, p in self._pending.items() if p.message_text]
            for task_id, pending in waiting:
                queue, queued_in, text = pending.target.queue, pending.queued_in, pending.message_text
                holder = held.get(task_id)
                if holder in lost or (
                    holder is None
                    and lost
                    and pending.published_at < silent_since
                    and not self._publisher.is_queued(queued_in, text)
                ):
                    self._rerun_or_fail(task_id, pending, holder or "unknown", queue in queues)
                elif holder is None and queue not in queues and self._publisher.withdraw(queued_in, text):
                    self._resolve_all(task_id, Unavailable(NO_LIVE_WORKER))
        except (redis.RedisError, OSError) as exc:
            log.warning("Could not check the messages of stopped workers %s: %s", sorted(lost), exc)

    def _abandon_unconsumed(self, queues: set[str]) -> None:
        """Requests waiting in a lane whose queue nobody consumes any more fail now."""
        with self._lock:
            orphaned = [lane for (queue, _), lane in self._lanes.items() if queue not in queues]
        for lane in orphaned:
            for _, future in lane.abandon():
                if future.set_running_or_notify_cancel():
                    future.set_exception(Unavailable(NO_LIVE_WORKER))

    def _fail_all_pending(self, error: ServingError) -> None:
        """Replies may never come (a restarted Redis forgets queues and reply lists): fail fast, the
        client may retry."""
        with self._lock:
            task_ids = list(self._pending)
        for task_id in task_ids:
            self._resolve_all(task_id, error)

    def _rerun_or_fail(self, task_id: str, pending: _Pending, worker: str, consumed: bool) -> None:
        if pending.runs >= MAX_RUNS or not consumed:
            log.warning("Message %s for %s was lost with worker %s", task_id, pending.target.model, worker)
            self._resolve_all(task_id, Unavailable(WORKER_LOST))
            return
        pending.runs += 1
        pending.published_at = time.time()
        release(self._store, self.reply_to, task_id)
        self._publisher.requeue(pending.queued_in, pending.message_text)
        log.warning("Running message %s for %s again: worker %s was lost", task_id, pending.target.model, worker)

    def _forget(self, request: InferenceRequest) -> None:
        """Stop waiting for a published request whose deadline passed; its message may still be answered."""
        task_id = request.request_id.partition(".")[0]
        with self._lock:
            pending = self._pending.get(task_id)
            if pending is None:
                return
            pending.futures.pop(request.request_id, None)
            if pending.futures:
                return
            del self._pending[task_id]
        self._completed(pending)

    def _completed(self, pending: _Pending) -> None:
        """A message is done with: free its lane slot and publish what waited for it."""
        pending.lane.completed(pending.kind)
        self._pump(pending.target, pending.lane)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._store.brpop([self.reply_to], timeout=1)
            except (redis.RedisError, OSError) as exc:
                log.warning("Result listener lost Redis, retrying: %s", exc)
                self._fail_all_pending(self._link.failed(exc))
                time.sleep(0.5)
                continue
            if item is not None:
                self._route(item[1])

    def _route(self, raw: bytes) -> None:
        try:
            meta = app.backend.decode(raw)
        except Exception as exc:  # a foreign or corrupt reply must not stop the listener
            log.error("Dropping an undecodable result: %s", exc)
            return
        task_id = meta.get("task_id")
        status = meta.get("status")
        if status == "SUCCESS":
            try:
                reply = PredictReply.from_wire(meta.get("result"))
            except InvalidArgument as error:
                self._resolve_all(task_id, Internal(error.message))
            else:
                self._deliver(task_id, reply)
        elif status == "REVOKED":
            self._resolve_all(task_id, DeadlineExceeded("Deadline exceeded before the request reached a worker"))
        else:
            self._resolve_all(task_id, Internal(f"Inference task failed: {describe_failure(meta.get('result'))}"))

    def _deliver(self, task_id: str, reply: PredictReply) -> None:
        with self._lock:
            pending = self._pending.pop(task_id, None)
        if pending is None:
            return  # its requests already gave up
        for request_id, future in pending.futures.items():
            entry = reply.results.get(request_id)
            if not future.set_running_or_notify_cancel():
                continue  # gave up at its deadline
            if isinstance(entry, ComputedOutputs):
                result = entry.to_result(reply.worker, pending.published_at)
                result.priority = pending.priority.level
                future.set_result(result)
            else:
                future.set_exception(
                    entry.error if entry is not None else Internal("The worker returned no result for this request")
                )
        self._completed(pending)

    def _resolve_all(self, task_id: str, error: ServingError) -> None:
        with self._lock:
            pending = self._pending.pop(task_id, None)
        if pending is None:
            return
        for future in pending.futures.values():
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
        self._completed(pending)
