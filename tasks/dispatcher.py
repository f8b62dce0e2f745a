"""Api side of the queue: publish predict messages and route their results back to the waiters.

One listener thread per api process blocks on this process's reply list and resolves the futures
of the requests each result answers, so any number of request threads can wait at once without
touching a shared pub/sub connection. A completed message frees its lane's slot, and the listener
publishes what waited for it (tasks.lanes).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import redis

from inference.errors import DEADLINE_PASSED, DeadlineExceeded, Internal, ServingError, Unavailable
from inference.request import InferenceRequest, InferenceResult
from tasks.app import app
from tasks.lanes import Entry, Lane
from tasks.messages import pack_requests, unpack_result
from tasks.publisher import PredictPublisher
from tasks.registry import Target
from tasks.routing import reply_key

log = logging.getLogger("serving")


class _Pending:
    """The requests of one published message, waiting for its result."""

    def __init__(self, target: Target, lane: Lane, futures: dict[str, Future[InferenceResult]]) -> None:
        self.target = target
        self.lane = lane
        self.futures = futures
        self.published_at = time.time()


class Dispatcher:
    """Publishes predict requests, coalesced per model version (see tasks.lanes), and routes results back."""

    def __init__(self, store: redis.Redis, max_requests_per_message: int = 64) -> None:
        self._store = store
        self._publisher = PredictPublisher(app, store)
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
        future: Future[InferenceResult] = Future()
        lane = self._lane(target)
        lane.add((request, future), target.workers, target.max_queue_size)
        self._pump(target, lane)
        try:
            return future.result(timeout=max(request.deadline - time.time(), 0))
        except FutureTimeout:
            if not future.cancel():  # the answer is being delivered right now
                return future.result()
            self._forget(request)
            raise DeadlineExceeded(DEADLINE_PASSED) from None

    def _lane(self, target: Target) -> Lane:
        key = (target.queue, target.version)
        lane = self._lanes.get(key)
        if lane is None:
            with self._lock:
                lane = self._lanes.setdefault(key, Lane(self._max_per_message))
        return lane

    def _pump(self, target: Target, lane: Lane) -> None:
        """Publish the lane's waiting requests while it may have more messages in flight."""
        while (entries := lane.take()) is not None:
            try:
                self._publish(target, lane, entries)
            finally:
                lane.published()

    def _publish(self, target: Target, lane: Lane, entries: list[Entry]) -> None:
        task_id = uuid.uuid4().hex
        requests = [request for request, _ in entries]
        for index, request in enumerate(requests):
            request.request_id = f"{task_id}.{index}"
        envelope, payload = pack_requests(requests, {n: s.precision for n, s in target.signature.inputs.items()})
        with self._lock:
            self._pending[task_id] = _Pending(target, lane, {r.request_id: f for r, f in entries})
        try:
            self._publisher.publish(
                task_id, envelope, payload, target.queue, self.reply_to, max(envelope["deadline"] - time.time(), 0.001)
            )
        except (redis.RedisError, OSError) as exc:
            self._resolve_all(task_id, Unavailable(f"Broker unavailable: {exc}"))

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
        pending.lane.completed()
        self._pump(pending.target, pending.lane)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._store.brpop([self.reply_to], timeout=1)
            except (redis.RedisError, OSError) as exc:
                log.warning("Result listener lost Redis, retrying: %s", exc)
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
            self._deliver(task_id, meta["result"])
        elif status == "REVOKED":
            self._resolve_all(task_id, DeadlineExceeded("Deadline exceeded before the request reached a worker"))
        else:
            self._resolve_all(task_id, Internal(f"Inference task failed: {_describe(meta.get('result'))}"))

    def _deliver(self, task_id: str, reply: dict[str, Any]) -> None:
        with self._lock:
            pending = self._pending.pop(task_id, None)
        if pending is None:
            return  # its requests already gave up
        results = reply.get("results", {})
        for request_id, future in pending.futures.items():
            entry = results.get(request_id)
            if not future.set_running_or_notify_cancel():
                continue  # gave up at its deadline
            try:
                if entry is None:
                    raise Internal("The worker returned no result for this request")
                outputs, computed = unpack_result(entry)
            except ServingError as error:
                future.set_exception(error)
            else:
                future.set_result(
                    InferenceResult(
                        computed["version"],
                        outputs,
                        reply.get("worker", ""),
                        computed["batch"],
                        queue_s=max(computed["started"] - pending.published_at, 0.0),
                        infer_s=computed["infer_s"],
                    )
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


def _describe(result: Any) -> str:
    if isinstance(result, dict) and "exc_type" in result:
        return f"{result['exc_type']}: {result.get('exc_message')}"
    return str(result)
