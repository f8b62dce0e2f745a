"""Asynchronous jobs: many samples split into chunks that run as ordinary predict tasks on the model's
queue (so they batch with everything else), with their results kept in the Celery result backend.

A job's record lives in Redis (`ovms:job:<id>`, plus the `ovms:jobs` index), so any api process —
including one started after the job was submitted — can report on it. With bearer tokens, a job belongs
to the token that submitted it: its record names the token's owner id (api.auth.owner_id) and the
owner's index (`ovms:jobs:<owner>`) lists it; any other caller is told it does not exist. Job ids are
32 lowercase hex digits, checked before they make a Redis key; each chunk task has an id of its own, so
that Flower and logs, which show task ids, show no job id. Workers claim a job's chunks in
its claims hash (tasks.claims); a chunk whose worker died is queued again by whichever api
notices first, once — a second loss fails it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
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
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex
META_BATCH = 16  # chunk results read per Redis round trip by status: never the whole result at once


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

    def submit(self, target: Target, inputs: dict[str, np.ndarray], owner: str | None = None) -> str:
        """Split validated inputs (a leading sample dimension) into chunks and queue them; `owner`: the
        submitting token's owner id, with bearer tokens."""
        job_id = uuid.uuid4().hex
        total = int(next(iter(inputs.values())).shape[0])
        precisions = {name: spec.precision for name, spec in target.signature.inputs.items()}
        deadline = time.time() + JOB_TIMEOUT_S
        chunks = []
        for start in range(0, total, CHUNK_ROWS):
            task_id = chunk_task_id()
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
            "owner": owner,
        }
        with self._client.pipeline(transaction=False) as pipe:
            pipe.set(JOB_PREFIX + job_id, json.dumps(record), ex=self._ttl_s)
            for index in {JOB_INDEX, _index(owner)}:
                pipe.zadd(index, {job_id: record["created"]})
                pipe.zremrangebyscore(index, 0, time.time() - self._ttl_s)
                pipe.expire(index, self._ttl_s)
            pipe.execute()
        return job_id

    def status(self, job_id: str, owner: str | None = None) -> JobStatus:
        """The job's state; with `owner`, only if it is that owner's (else NotFound, as for no such job)."""
        record = self._record(job_id, owner)
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

    def result(self, job_id: str, owner: str | None = None) -> JobResult:
        """The outputs of a job that succeeded, to be read chunk by chunk (see JobResult)."""
        return JobResult(self._client, self._record(job_id, owner))

    def cancel(self, job_id: str, owner: str | None = None) -> None:
        """Revoke the chunks not run yet; a job that already ended keeps its state."""
        if self.status(job_id, owner).state in ("SUCCESS", "FAILURE"):
            return
        record = self._record(job_id, owner)
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

    def recent(self, limit: int = 50, owner: str | None = None) -> list[str]:
        """The latest jobs: every job, or with `owner` that owner's only."""
        return [job_id.decode() for job_id in self._client.zrevrange(_index(owner), 0, limit - 1)]

    def _record(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        """A job's record; NotFound for a malformed id (before it makes a key) and, with `owner`, for
        another owner's job, in the same words as for no such job."""
        raw = self._client.get(JOB_PREFIX + job_id) if JOB_ID.fullmatch(job_id) else None
        record = json.loads(raw) if raw is not None else None
        if record is None or (owner is not None and record.get("owner") != owner):
            raise NotFound(f"Job {job_id[:64]} is not found: unknown id, expired, or lost when Redis restarted empty")
        return record

    def _chunk_metas(self, record: dict[str, Any]) -> list[dict[str, Any] | None]:
        """Each chunk's result meta without its output tensors, read a few chunks at a time."""
        keys = [app.backend.get_key_for_task(chunk["task"]) for chunk in record["chunks"]]
        metas: list[dict[str, Any] | None] = []
        for start in range(0, len(keys), META_BATCH):
            raws = self._client.mget(keys[start : start + META_BATCH])
            metas += [_without_tensors(app.backend.decode(raw)) if raw else None for raw in raws]
        return metas


class JobResult:
    """A finished job's outputs, read from Redis one chunk at a time (a download streams them, and never
    holds the whole result). Each output is its chunks' rows in order, as np.concatenate would join them."""

    def __init__(self, client: redis.Redis, record: dict[str, Any]) -> None:
        self._client = client
        self._chunks = [(chunk["task"], chunk["rows"]) for chunk in record["chunks"]]  # not their messages
        first = self._outputs(self._chunks[0][0])
        rows = sum(rows for _, rows in self._chunks)
        self.layout = {name: (array.dtype, (rows, *array.shape[1:])) for name, array in first.items()}

    def parts(self, name: str) -> Iterator[np.ndarray]:
        """Output `name` of each chunk in turn."""
        dtype, shape = self.layout[name]
        for task_id, rows in self._chunks:
            part = self._outputs(task_id)[name]
            if part.dtype != dtype or part.shape != (rows, *shape[1:]):
                raise RuntimeError(f"Output {name} of chunk {task_id} is {part.dtype}{part.shape}, not rows of {shape}")
            yield part

    def _outputs(self, task_id: str) -> dict[str, np.ndarray]:
        raw = self._client.get(app.backend.get_key_for_task(task_id))
        if raw is None:
            raise NotFound("The job's result has expired")
        outputs, _ = unpack_result(app.backend.decode(raw)["result"]["results"][f"{task_id}.0"])
        return outputs


def chunk_task_id() -> str:
    """A job chunk's task id: random, not derived from its job's id, since Flower and logs show task ids
    and a job id is what gives access to the job. The job record lists its chunks' ids."""
    return uuid.uuid4().hex


def _index(owner: str | None) -> str:
    """The sorted set of job ids by creation time: every job's, or one owner's."""
    return JOB_INDEX if owner is None else f"{JOB_INDEX}:{owner}"


def _without_tensors(meta: dict[str, Any]) -> dict[str, Any]:
    """A chunk's result meta with only what status needs (state, errors, date): no output bytes."""
    if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), dict):
        for entry in meta["result"].get("results", {}).values():
            entry.pop("outputs", None)
    return {key: meta.get(key) for key in ("status", "result", "date_done")}


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
