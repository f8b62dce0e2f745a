"""Asynchronous jobs: many samples split into chunks that run as ordinary predict tasks on the model's
queue (so they batch with everything else), with their results kept in the Celery result backend.

A job's record lives in Redis (`ovms:job:<id>`, plus the `ovms:jobs` index), so any api process —
including one started after the job was submitted — can report on it. Workers claim its chunks in
the job's claims hash (tasks.claims); a chunk whose worker died is queued again by whichever api
notices first, once — a second loss fails it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import redis

from inference.errors import WORKER_LOST, NotFound, Unavailable
from inference.request import InferenceRequest
from tasks.app import app
from tasks.claims import holders, release
from tasks.messages import describe_failure, pack_requests, unpack_result
from tasks.publisher import PredictPublisher
from tasks.registry import Target
from tasks.routing import claims_key

log = logging.getLogger("serving")

JOB_PREFIX = "ovms:job:"
JOB_INDEX = "ovms:jobs"
CHUNK_ROWS = 256
JOB_TIMEOUT_S = 3600  # a chunk not run within this is dropped
RERUNS_KEY = "ovms:job-reruns"  # chunk task id -> times it was queued again after its worker died


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
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s  # the workers keep chunk results as long (Celery result_expires)
        self._publisher = PredictPublisher(app, client)

    def submit(self, target: Target, inputs: dict[str, np.ndarray]) -> str:
        """Split validated inputs (a leading sample dimension) into chunks and queue them."""
        job_id = uuid.uuid4().hex
        total = int(next(iter(inputs.values())).shape[0])
        precisions = {name: spec.precision for name, spec in target.signature.inputs.items()}
        deadline = time.time() + JOB_TIMEOUT_S
        chunks = []
        for start in range(0, total, CHUNK_ROWS):
            task_id = f"{job_id}-{len(chunks)}"
            rows = {name: array[start : start + CHUNK_ROWS] for name, array in inputs.items()}
            request = InferenceRequest(
                target.model, target.version, rows, None, deadline, f"{task_id}.0", any_batch=True
            )
            envelope, payload = pack_requests([request], precisions)
            message = self._publisher.publish(
                task_id,
                envelope,
                payload,
                target.queue,
                reply_to=JOB_PREFIX + job_id,  # where workers claim the chunk; its result is stored as usual
                expires_s=JOB_TIMEOUT_S,
                name=f"job-chunk {target.model} v{target.version}",
            )
            chunks.append({"task": task_id, "rows": int(next(iter(rows.values())).shape[0]), "message": message})
        record = {
            "model": target.model,
            "version": target.version,
            "total": total,
            "queue": target.queue,
            "created": time.time(),
            "chunks": chunks,
            "revoked": False,
        }
        with self._client.pipeline(transaction=False) as pipe:
            pipe.set(JOB_PREFIX + job_id, json.dumps(record), ex=self._ttl_s)
            pipe.zadd(JOB_INDEX, {job_id: record["created"]})
            pipe.zremrangebyscore(JOB_INDEX, 0, time.time() - self._ttl_s)
            pipe.execute()
        return job_id

    def status(self, job_id: str) -> JobStatus:
        record = self._record(job_id)
        metas = self._chunk_metas(record)
        done = sum(chunk["rows"] for chunk, meta in zip(record["chunks"], metas, strict=True) if _ok(meta))
        errors = sorted({_error(meta) for meta in metas if meta and meta["status"] != "SUCCESS"} - {""})
        finished = [meta.get("date_done") for meta in metas if meta]
        if record["revoked"]:
            state = "REVOKED"
        elif errors:
            state = "FAILURE"
        elif done == record["total"]:
            state = "SUCCESS"
        else:
            state = "STARTED" if any(metas) else "PENDING"
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
        """Revoke the chunks not run yet; a job that already ended keeps its state."""
        if self.status(job_id).state in ("SUCCESS", "FAILURE"):
            return
        record = self._record(job_id)
        app.control.revoke([chunk["task"] for chunk in record["chunks"]])
        record["revoked"] = True
        self._client.set(JOB_PREFIX + job_id, json.dumps(record), keepttl=True)

    def recover(self, lost: set[str]) -> None:
        """Queue again the chunks that the `lost` workers held; only the api that drops a claim acts on
        it, and a chunk lost twice fails (a chunk that kills workers must not kill them all)."""
        for key in self._client.scan_iter(match=claims_key(JOB_PREFIX + "*"), count=1000):
            job_key = key.decode().removesuffix(claims_key(""))
            for task_id, worker in holders(self._client, job_key).items():
                if worker in lost and release(self._client, job_key, task_id):
                    log.warning("Job chunk %s was lost with worker %s", task_id, worker)
                    self._run_again(job_key, task_id)

    def _run_again(self, job_key: str, task_id: str) -> None:
        raw = self._client.get(job_key)
        if raw is None:
            return
        record = json.loads(raw)
        chunk = next((c for c in record["chunks"] if c["task"] == task_id), None)
        if chunk is None or record["revoked"]:
            return
        if self._client.hincrby(RERUNS_KEY, task_id, 1) > 1:
            app.backend.mark_as_failure(task_id, Unavailable(WORKER_LOST))
            return
        self._client.expire(RERUNS_KEY, JOB_TIMEOUT_S)
        self._publisher.requeue(record["queue"], chunk["message"])

    def recent(self, limit: int = 50) -> list[str]:
        return [job_id.decode() for job_id in self._client.zrevrange(JOB_INDEX, 0, limit - 1)]

    def _record(self, job_id: str) -> dict[str, Any]:
        raw = self._client.get(JOB_PREFIX + job_id)
        if raw is None:
            raise NotFound(f"Job {job_id} is not found: unknown id, expired, or lost when Redis restarted empty")
        return json.loads(raw)

    def _chunk_metas(self, record: dict[str, Any]) -> list[dict[str, Any] | None]:
        keys = [app.backend.get_key_for_task(chunk["task"]) for chunk in record["chunks"]]
        return [app.backend.decode(raw) if raw else None for raw in self._client.mget(keys)]


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
