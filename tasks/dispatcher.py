"""Api side of the queue: publish predict messages and route their results back to the waiters.

One listener thread per api process blocks on this process's reply list and resolves the futures
of the requests each result answers, so any number of request threads can wait at once without
touching a shared pub/sub connection.
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
from tasks.messages import pack_requests, unpack_result
from tasks.publisher import PredictPublisher
from tasks.registry import Target
from tasks.routing import reply_key

log = logging.getLogger("serving")


class _Pending:
    """The requests of one published message, waiting for its result."""

    def __init__(self, version: int, futures: dict[str, Future[InferenceResult]]) -> None:
        self.version = version
        self.futures = futures


class _Lane:
    """Requests for one model version waiting to be published together."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: list[tuple[InferenceRequest, Future[InferenceResult]]] = []
        self.publishing = False


class Dispatcher:
    """Publishes predict requests and routes results back.

    Concurrent requests for the same model version are coalesced: the first one publishes at once
    (a lone request never waits), and the requests that arrive while a publish is under way go
    together in the next message, at most `max_requests_per_message` of them. The worker batches
    them; one message amortises Celery's per-message cost over many requests.
    """

    def __init__(self, store: redis.Redis, max_requests_per_message: int = 64) -> None:
        self._store = store
        self._publisher = PredictPublisher(app, store)
        self._max_per_message = max_requests_per_message
        self.reply_to = reply_key(uuid.uuid4().hex)
        self._pending: dict[str, _Pending] = {}
        self._lanes: dict[tuple[str, int], _Lane] = {}
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
        with lane.lock:
            lane.waiting.append((request, future))
            lead = not lane.publishing
            lane.publishing = True
        if lead:
            self._publish_waiting(target, lane)
        try:
            return future.result(timeout=max(request.deadline - time.time(), 0))
        except FutureTimeout:
            self._forget(request)
            raise DeadlineExceeded(DEADLINE_PASSED) from None

    def _lane(self, target: Target) -> _Lane:
        key = (target.queue, target.version)
        lane = self._lanes.get(key)
        if lane is None:
            with self._lock:
                lane = self._lanes.setdefault(key, _Lane())
        return lane

    def _publish_waiting(self, target: Target, lane: _Lane) -> None:
        """Publish until nothing is waiting; whoever finds the lane idle does this."""
        while True:
            with lane.lock:
                taken = lane.waiting[: self._max_per_message]
                del lane.waiting[: self._max_per_message]
                if not taken:
                    lane.publishing = False
                    return
            self._publish(target, taken)

    def _publish(self, target: Target, entries: list[tuple[InferenceRequest, Future[InferenceResult]]]) -> None:
        task_id = uuid.uuid4().hex
        requests = [request for request, _ in entries]
        for index, request in enumerate(requests):
            request.request_id = f"{task_id}.{index}"
        envelope, payload = pack_requests(requests, {n: s.precision for n, s in target.signature.inputs.items()})
        with self._lock:
            self._pending[task_id] = _Pending(target.version, {r.request_id: f for r, f in entries})
        try:
            self._publisher.publish(
                task_id, envelope, payload, target.queue, self.reply_to, max(envelope["deadline"] - time.time(), 0.001)
            )
        except (redis.RedisError, OSError) as exc:
            self._resolve_all(task_id, Unavailable(f"Broker unavailable: {exc}"))

    def _forget(self, request: InferenceRequest) -> None:
        """Stop waiting for a request whose deadline passed; its message may still be answered."""
        task_id = request.request_id.partition(".")[0]
        with self._lock:
            pending = self._pending.get(task_id)
            if pending is not None:
                pending.futures.pop(request.request_id, None)
                if not pending.futures:
                    del self._pending[task_id]

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
            try:
                if entry is None:
                    raise Internal("The worker returned no result for this request")
                outputs, batch_rows = unpack_result(entry)
            except ServingError as error:
                future.set_exception(error)
            else:
                future.set_result(InferenceResult(pending.version, outputs, reply.get("worker", ""), batch_rows))

    def _resolve_all(self, task_id: str, error: ServingError) -> None:
        with self._lock:
            pending = self._pending.pop(task_id, None)
        if pending is not None:
            for future in pending.futures.values():
                future.set_exception(error)


def _describe(result: Any) -> str:
    if isinstance(result, dict) and "exc_type" in result:
        return f"{result['exc_type']}: {result.get('exc_message')}"
    return str(result)
