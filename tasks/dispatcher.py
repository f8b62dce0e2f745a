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
from tasks.predict import predict
from tasks.registry import Target
from tasks.routing import payload_key, reply_key

log = logging.getLogger("serving")

_PAYLOAD_GRACE_MS = 5000  # tensors outlive the deadline a little, for a worker already running them


class _Pending:
    """The requests of one published message, waiting for its result."""

    def __init__(self, version: int, futures: dict[str, Future[InferenceResult]]) -> None:
        self.version = version
        self.futures = futures


class Dispatcher:
    def __init__(self, store: redis.Redis) -> None:
        self._store = store
        self.reply_to = reply_key(uuid.uuid4().hex)
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="ovms-results", daemon=True)

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        self._stop.set()
        self._listener.join(timeout=3)

    def infer(self, target: Target, request: InferenceRequest) -> InferenceResult:
        """Publish one request and wait for its answer until its deadline."""
        task_id, futures = self.submit(target, [request])
        try:
            return futures[0].result(timeout=max(request.deadline - time.time(), 0))
        except FutureTimeout:
            self._resolve_all(task_id, DeadlineExceeded(DEADLINE_PASSED))
            raise DeadlineExceeded(DEADLINE_PASSED) from None

    def submit(self, target: Target, requests: list[InferenceRequest]) -> tuple[str, list[Future[InferenceResult]]]:
        """Publish requests for one model version as one message: its task id and a future per request."""
        task_id = uuid.uuid4().hex
        for index, request in enumerate(requests):
            request.request_id = str(index)
        precisions = {name: spec.precision for name, spec in target.signature.inputs.items()}
        envelope, payload = pack_requests(requests, precisions)
        futures: dict[str, Future[InferenceResult]] = {r.request_id: Future() for r in requests}
        with self._lock:
            self._pending[task_id] = _Pending(target.version, futures)
        seconds_left = envelope["deadline"] - time.time()
        try:
            self._store.set(payload_key(task_id), payload, px=int(seconds_left * 1000) + _PAYLOAD_GRACE_MS)
            predict.apply_async(
                args=(envelope,),
                task_id=task_id,
                queue=target.queue,  # Celery publishes it straight to the queue's list (anonymous exchange)
                reply_to=self.reply_to,
                expires=max(seconds_left, 0.001),
            )
        except (redis.RedisError, OSError) as exc:
            self._resolve_all(task_id, Unavailable(f"Broker unavailable: {exc}"))
        return task_id, list(futures.values())

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
