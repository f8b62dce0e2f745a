"""Asynchronous jobs: many samples split into chunks that the model's workers run between predicts
(tasks.job_queue, tasks.job_feeder), with their results kept in the Celery result backend.

A job's record lives in Redis (`ovms:job:<id>`, plus the `ovms:jobs` index), so any api process —
including one started after the job was submitted — can report on it. Every chunk is queued or taken
by exactly one worker until its result is stored; a chunk whose worker died is queued again by
whichever api notices first, once — a second loss fails it. A job ends: SUCCESS, FAILURE at the first
failed chunk (with its error), FAILURE at its deadline (`--job_timeout_s`), or REVOKED.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import redis

from inference.errors import WORKER_LOST, NotFound, ResourceExhausted, Unavailable
from inference.request import InferenceRequest
from inference.settings import DEFAULT_JOB_BACKLOG_MB, DEFAULT_JOB_MAX_MB, DEFAULT_JOB_TIMEOUT_S, ServerSettings
from tasks import job_backlog, job_queue
from tasks.app import app
from tasks.job_queue import Chunk, stop_key
from tasks.messages import describe_failure, pack_requests, unpack_result
from tasks.registry import Target
from tasks.routing import job_queue_for, worker_key

log = logging.getLogger("serving")

JOB_PREFIX = "ovms:job:"
JOB_INDEX = "ovms:jobs"
CHUNK_ROWS = 256
CHUNK_BYTES = 2 << 20  # a chunk's tensors: a predict waits at most for one chunk's inference
PAYLOAD_GRACE_S = 5  # tensors outlive the job's deadline a little, for a worker already running them
BACKLOG_RETRY_AFTER_S = 10
SWEEP_INTERVAL_S = 1.0


class JobTooLarge(ResourceExhausted):
    """One job over --job_max_mb: retrying cannot help."""

    http_status = 413


class JobBacklogFull(ResourceExhausted):
    """The server's queued jobs would pass --job_backlog_mb: retry once some have run."""

    retry_after_s = BACKLOG_RETRY_AFTER_S


@dataclass(frozen=True)
class JobLimits:
    max_job_bytes: int = DEFAULT_JOB_MAX_MB << 20
    max_backlog_bytes: int = DEFAULT_JOB_BACKLOG_MB << 20
    timeout_s: int = DEFAULT_JOB_TIMEOUT_S

    @staticmethod
    def from_settings(settings: ServerSettings) -> JobLimits:
        return JobLimits(settings.job_max_mb << 20, settings.job_backlog_mb << 20, settings.job_timeout_s)


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    model: str
    version: int
    state: str  # PENDING, STARTED, SUCCESS, FAILURE, REVOKED
    done: int  # samples with results
    total: int
    created: float
    finished: float | None
    errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "model": self.model,
            "version": self.version,
            "state": self.state,
            "progress": {"done": self.done, "total": self.total},
            "created": self.created,
            "finished": self.finished,
            "errors": self.errors,
        }


class JobStore:
    def __init__(self, client: redis.Redis, ttl_s: int, limits: JobLimits) -> None:
        self._client = client
        self._ttl_s = ttl_s  # the workers keep chunk results as long (Celery result_expires)
        self._limits = limits
        self._swept_at = 0.0

    def submit(self, target: Target, inputs: dict[str, np.ndarray]) -> str:
        """Split validated inputs (a leading sample dimension) into chunks and queue them: JobTooLarge
        (413) beyond --job_max_mb, JobBacklogFull (429) if the server's queued jobs would pass
        --job_backlog_mb."""
        nbytes = sum(array.nbytes for array in inputs.values())
        limit, flag = min(
            (self._limits.max_job_bytes, "--job_max_mb"), (self._limits.max_backlog_bytes, "--job_backlog_mb")
        )
        if nbytes > limit:
            raise JobTooLarge(f"The job's tensors take {_mib(nbytes)} MiB; the limit is {_mib(limit)} MiB ({flag})")
        job_id = uuid.uuid4().hex
        created = time.time()
        deadline = created + self._limits.timeout_s
        chunks = list(_split(job_id, target, inputs, deadline))
        cap = self._limits.max_backlog_bytes
        used = job_backlog.admit(self._client, [(chunk.task_id, chunk.nbytes) for chunk, _, _ in chunks], deadline, cap)
        if used is not None:
            raise JobBacklogFull(
                f"The server's job backlog is full: {_mib(used)} MiB queued, this job {_mib(nbytes)} MiB, "
                f"the limit {_mib(cap)} MiB (--job_backlog_mb); retry later"
            )
        record = {
            "model": target.model,
            "version": target.version,
            "total": int(next(iter(inputs.values())).shape[0]),
            "queue": target.queue,
            "created": created,
            "deadline": deadline,
            "chunks": [{"task": chunk.task_id, "rows": rows} for chunk, rows, _ in chunks],
            "revoked": False,
        }
        queue = job_queue_for(target.queue)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.set(JOB_PREFIX + job_id, json.dumps(record), ex=self._ttl_s)
                pipe.zadd(JOB_INDEX, {job_id: created})
                pipe.zremrangebyscore(JOB_INDEX, 0, created - self._ttl_s)
                for chunk, _, payload in chunks:
                    job_queue.publish(pipe, queue, chunk, payload, deadline + PAYLOAD_GRACE_S - created)
                pipe.execute()
        except (redis.RedisError, OSError):
            job_backlog.release(self._client, [chunk.task_id for chunk, _, _ in chunks])
            raise
        return job_id

    def status(self, job_id: str) -> JobStatus:
        record = self._record(job_id)
        metas = self._chunk_metas(record)
        done = sum(chunk["rows"] for chunk, meta in zip(record["chunks"], metas, strict=True) if _ok(meta))
        errors = sorted({_error(meta) for meta in metas if meta and not _ok(meta)} - {""})
        finished = [meta.get("date_done") for meta in metas if meta]
        deadline = record.get("deadline", record["created"] + JobLimits.timeout_s)
        if record["revoked"]:
            state = "REVOKED"
        elif errors:
            state = "FAILURE"
        elif done == record["total"]:
            state = "SUCCESS"
        elif time.time() > deadline:
            state = "FAILURE"  # no worker ran the rest in time (none serves the model, or all too busy)
            errors = [f"The job did not finish within {deadline - record['created']:.0f} s (--job_timeout_s)"]
            finished = [deadline]
        else:
            state = "STARTED" if any(metas) else "PENDING"
            self._sweep()
        return JobStatus(
            job_id,
            record["model"],
            record["version"],
            state,
            done,
            record["total"],
            record["created"],
            _finished_at(finished) if state in ("SUCCESS", "FAILURE") else None,
            errors,
        )

    def result(self, job_id: str) -> dict[str, np.ndarray]:
        """Every output, concatenated over the chunks in order (the job must have succeeded)."""
        record = self._record(job_id)
        parts: dict[str, list[np.ndarray]] = {}
        for chunk, meta in zip(record["chunks"], self._chunk_metas(record), strict=True):
            outputs, _ = unpack_result(meta["result"]["results"][f"{chunk['task']}.0"])
            for name, array in outputs.items():
                parts.setdefault(name, []).append(array)
        return {name: np.concatenate(arrays) for name, arrays in parts.items()}

    def cancel(self, job_id: str) -> None:
        """Drop the chunks not run yet (workers skip them); a job that already ended keeps its state."""
        if self.status(job_id).state in ("SUCCESS", "FAILURE"):
            return
        record = self._record(job_id)
        record["revoked"] = True
        with self._client.pipeline(transaction=False) as pipe:
            pipe.set(JOB_PREFIX + job_id, json.dumps(record), keepttl=True)
            pipe.set(stop_key(job_id), "revoked", ex=self._limits.timeout_s + PAYLOAD_GRACE_S)
            pipe.execute()

    def _sweep(self) -> None:
        """Look for dead workers' chunks now and then while someone watches an unfinished job: a loss
        no api saw (or could not act on) is repaired within a poll or two."""
        now = time.monotonic()
        if now - self._swept_at >= SWEEP_INTERVAL_S:
            self._swept_at = now
            self.recover()

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
            while (moved := job_queue.take_back(self._client, taken_key, prefix, self._limits.timeout_s)) is not None:
                chunk, outcome = moved
                log.warning("Job chunk %s was lost with worker %s: %s", chunk.task_id, worker, outcome)
                if outcome == "lost":
                    app.backend.mark_as_failure(chunk.task_id, Unavailable(WORKER_LOST))
                    self._client.set(stop_key(chunk.job_id), "failed", ex=self._limits.timeout_s)
                if outcome != "queued":
                    job_backlog.release(self._client, [chunk.task_id])
            if not heartbeat:
                job_queue.forget_taker(self._client, taken_key)

    def recent(self, limit: int = 50) -> list[str]:
        return [job_id.decode() for job_id in self._client.zrevrange(JOB_INDEX, 0, limit - 1)]

    def _record(self, job_id: str) -> dict[str, Any]:
        raw = self._client.get(JOB_PREFIX + job_id)
        if raw is None:
            raise NotFound(f"Job {job_id} is not found")
        return json.loads(raw)

    def _chunk_metas(self, record: dict[str, Any]) -> list[dict[str, Any] | None]:
        keys = [app.backend.get_key_for_task(chunk["task"]) for chunk in record["chunks"]]
        return [app.backend.decode(raw) if raw else None for raw in self._client.mget(keys)]


def _split(
    job_id: str, target: Target, inputs: dict[str, np.ndarray], deadline: float
) -> Iterator[tuple[Chunk, int, bytes]]:
    """The job's chunks (at most CHUNK_ROWS samples and, above one sample, CHUNK_BYTES), each with its
    number of samples and its tensor payload."""
    total = int(next(iter(inputs.values())).shape[0])
    sample_bytes = sum(array[:1].nbytes for array in inputs.values())
    rows = max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(sample_bytes, 1)))
    precisions = {name: spec.precision for name, spec in target.signature.inputs.items()}
    for index, start in enumerate(range(0, total, rows)):
        task_id = f"{job_id}-{index}"
        part = {name: array[start : start + rows] for name, array in inputs.items()}
        request = InferenceRequest(target.model, target.version, part, None, deadline, f"{task_id}.0", any_batch=True)
        envelope, payload = pack_requests([request], precisions)
        nbytes = sum(array.nbytes for array in part.values())
        yield Chunk(task_id, job_id, nbytes, envelope), int(next(iter(part.values())).shape[0]), payload


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f}".removesuffix(".0")


def _ok(meta: dict[str, Any] | None) -> bool:
    if not meta or meta["status"] != "SUCCESS":
        return False
    return all("error" not in entry for entry in meta["result"]["results"].values())


def _error(meta: dict[str, Any]) -> str:
    if meta["status"] == "SUCCESS":
        return "; ".join(entry["error"][1] for entry in meta["result"]["results"].values() if "error" in entry)
    return describe_failure(meta.get("result"))


def _finished_at(dates: list[Any]) -> float | None:
    """The latest of the chunks' `date_done` (ISO 8601, as Celery stores it) as a Unix time."""
    stamps = []
    for date in dates:
        try:
            stamps.append(datetime.fromisoformat(str(date)).timestamp())
        except ValueError:
            continue
    return max(stamps) if stamps else None
