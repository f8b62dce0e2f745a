"""The job chunks of workers that died: queued again, once, by whichever api notices first (tasks.recovery); a
chunk lost with a second worker fails, so that a chunk that kills workers cannot kill them all. Its job stops
then, or, submitted with dead letters, keeps it for a retry (tasks.dead_letters)."""

from __future__ import annotations

import logging

import redis

from inference.errors import WORKER_LOST, Unavailable
from tasks import dead_letters, job_backlog, job_queue
from tasks.app import app
from tasks.job_queue import stop_key
from tasks.messages import QueuedChunk
from tasks.routing import worker_key

log = logging.getLogger("serving")


class LostChunks:
    def __init__(self, client: redis.Redis, ttl_s: int, timeout_s: int) -> None:
        """`ttl_s`: how long a buried chunk is kept (--job_ttl_s); `timeout_s`: a job's --job_timeout_s."""
        self._client = client
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s

    def recover(self, lost: set[str] = frozenset()) -> None:
        """Queue again the chunks that dead workers had taken: the `lost` ones', and any other's whose
        heartbeat is gone (it died while no api was watching). One api of many gets each chunk."""
        prefix = app.backend.task_keyprefix.decode()
        takers = job_queue.taken_lists(self._client)
        with self._client.pipeline(transaction=False) as pipe:
            for worker in takers.values():
                pipe.exists(worker_key(worker))
            alive = pipe.execute()
        for (taken_key, worker), heartbeat in zip(takers.items(), alive, strict=True):
            if heartbeat and worker not in lost:
                continue
            while (moved := job_queue.take_back(self._client, taken_key, prefix, self._timeout_s)) is not None:
                chunk, outcome = moved
                log.warning("Job chunk %s was lost with worker %s: %s", chunk.task_id, worker, outcome)
                if outcome == "lost":
                    self._lost_twice(chunk)
                elif outcome == "done":
                    job_backlog.release(self._client, [chunk.task_id])
            if not heartbeat:
                job_queue.forget_taker(self._client, taken_key)

    def _lost_twice(self, chunk: QueuedChunk) -> None:
        """A chunk whose worker died twice fails: its job stops, or with dead letters it is buried."""
        if chunk.dead_letters:
            dead_letters.bury(self._client, chunk.to_json(), chunk, WORKER_LOST, self._ttl_s)
        app.backend.mark_as_failure(chunk.task_id, Unavailable(WORKER_LOST))
        if not chunk.dead_letters:
            self._client.set(stop_key(chunk.job_id), "failed", ex=self._timeout_s)
            job_backlog.release(self._client, [chunk.task_id])
