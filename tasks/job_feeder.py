"""Worker side of async jobs: one thread per model queue runs that model's job chunks, one at a time,
in the gaps between predicts.

Predicts come first: a feeder takes a chunk only when this worker serves no predict message (or after
`MAX_YIELD_S` of continuous predict traffic, so that jobs still progress under full load), and it never
holds more than one chunk; in the batcher a chunk ranks below every priority level (tasks.runtime). So a
predict waits at most for one chunk's inference (chunks are at most a few MiB, see tasks.job_chunks), never
behind a job's backlog. Chunks are not Celery tasks: Celery's consumer prefetches, and it would serve a job
queue in turn with the predict queues.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from celery import states

from inference.errors import Internal
from tasks import dead_letters, job_queue
from tasks.app import app
from tasks.job_queue import stop_key
from tasks.messages import PredictReply, QueuedChunk, RequestFailure
from tasks.routing import job_queue_for
from tasks.runtime import WorkerRuntime

log = logging.getLogger("serving")

MAX_YIELD_S = 1.0  # under continuous predict traffic, still one chunk per second
TAKE_WAIT_S = 1.0  # how long one BLMOVE waits for a chunk (also how soon a stop is noticed)
JOIN_TIMEOUT_S = 30.0


class JobFeeder:
    def __init__(self, runtime: WorkerRuntime, client: redis.Redis, queue: str) -> None:
        self._runtime = runtime
        self._client = client
        self.queue = job_queue_for(queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"jobs-{queue}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Take no more chunks (safe in a signal handler: it only sets a flag)."""
        self._stop.set()

    def join(self) -> None:
        self._thread.join(JOIN_TIMEOUT_S)

    def _run(self) -> None:
        clean = False  # nothing left in the taken list by an earlier failure
        while not self._stop.is_set():
            self._runtime.predicts.wait_until_idle(MAX_YIELD_S)
            try:
                if not clean:
                    job_queue.give_back(self._client, self.queue, self._runtime.worker_id)
                    clean = True
                taken = job_queue.take(self._client, self.queue, self._runtime.worker_id, TAKE_WAIT_S)
                if taken is not None:
                    self._run_chunk(*taken)
            except (redis.RedisError, OSError) as exc:
                log.warning("Job queue %s: %s; retrying", self.queue, exc)
                clean = False
                self._stop.wait(TAKE_WAIT_S)

    def _run_chunk(self, raw: bytes, chunk: QueuedChunk) -> None:
        """Run a chunk unless its job stopped or another copy of it already ran: an api queues a chunk
        again when its worker stalls past the heartbeat expiry, and that worker may still finish it."""
        result_key = app.backend.get_key_for_task(chunk.task_id)
        if self._client.exists(stop_key(chunk.job_id), result_key):
            ran = chunk.dead_letters and self._client.exists(result_key)  # the other copy may have buried it
            self._finish(raw, chunk, keep_payload=bool(ran))
            return
        try:
            reply = self._runtime.serve(chunk.task_id, chunk.envelope)
        except Exception as exc:  # a chunk must fail its job, never this thread
            log.exception("Job chunk %s failed", chunk.task_id)
            self._failed(raw, chunk, f"Job chunk failed: {exc}", None)
            return
        failures = [entry.error.message for entry in reply.results.values() if isinstance(entry, RequestFailure)]
        if failures and self._client.exists(result_key):  # the other copy's result stands
            self._finish(raw, chunk, keep_payload=chunk.dead_letters)
        elif failures:
            self._failed(raw, chunk, "; ".join(failures), reply)
        else:
            app.backend.store_result(chunk.task_id, reply.to_wire(), states.SUCCESS)
            self._finish(raw, chunk)

    def _failed(self, raw: bytes, chunk: QueuedChunk, error: str, reply: PredictReply | None) -> None:
        """Store a failed chunk's result (`reply`, or `error` as an exception): with dead letters it is buried
        first (its tensors kept, tasks.dead_letters), else its job stops (its other chunks are dropped unrun)."""
        if chunk.dead_letters:
            dead_letters.bury(self._client, raw, chunk, error, app.conf.result_expires)
        if reply is None:
            app.backend.mark_as_failure(chunk.task_id, Internal(error))
        else:
            app.backend.store_result(chunk.task_id, reply.to_wire(), states.SUCCESS)
        if not chunk.dead_letters:
            self._client.set(stop_key(chunk.job_id), "failed", ex=_remaining(chunk))
        self._finish(raw, chunk, keep_payload=chunk.dead_letters)

    def _finish(self, raw: bytes, chunk: QueuedChunk, keep_payload: bool = False) -> None:
        job_queue.finish(self._client, self.queue, self._runtime.worker_id, raw, chunk, keep_payload)


def _remaining(chunk: QueuedChunk) -> int:
    """Seconds until the chunk's job deadline (at least 1)."""
    return max(int(chunk.envelope.deadline - time.time()) + 1, 1)


class JobFeeders:
    """The feeders of the queues this worker consumes, kept in step with config reloads."""

    def __init__(self, runtime: WorkerRuntime, client: redis.Redis) -> None:
        self._runtime = runtime
        self._client = client
        self._feeders: dict[str, JobFeeder] = {}

    def sync(self, queues: list[str]) -> None:
        for queue in sorted(set(queues) - set(self._feeders)):
            self._feeders[queue] = JobFeeder(self._runtime, self._client, queue)
            self._feeders[queue].start()
        for queue in sorted(set(self._feeders) - set(queues)):
            self._feeders.pop(queue).stop()

    def stop(self) -> None:
        for feeder in self._feeders.values():
            feeder.stop()

    def join(self) -> None:
        for feeder in self._feeders.values():
            feeder.join()
