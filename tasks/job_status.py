"""Where a job stands, read from its record and its chunks' results in the Celery result backend (never their
output bytes): its state, progress, errors, dead letters and callback delivery, as the REST API shows them.

A job ends: SUCCESS, FAILURE at the first failed chunk (with its error), FAILURE at its deadline
(`--job_timeout_s`), or REVOKED; a job with dead letters ends PARTIAL once every chunk ended and some failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from celery import states

from inference.errors import InvalidArgument
from tasks import dead_letters, job_hooks
from tasks.app import app
from tasks.job_queue import stop_key
from tasks.job_states import COMPLETED, JobState
from tasks.messages import ComputedOutputs, JobRecord, PredictReply, RequestFailure, describe_failure
from tasks.settings import JobSettings

META_BATCH = 16  # chunk results read per Redis round trip by status: never the whole result at once
EXISTS_BATCH = 1000  # chunk results looked for per EXISTS by `ended`


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    model: str
    version: int  # named at submission, or the default then
    versions: list[int]  # that computed its samples so far
    pinned: bool  # the job named its version
    state: JobState
    done: int  # samples with results
    total: int
    created: float
    finished: float | None
    errors: list[str]
    failed: int = 0  # samples of the chunks that failed
    failed_chunks: int = 0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)  # {"chunk", "samples", "error", "attempts"}
    callback: dict[str, Any] | None = None  # job_hooks.Delivery.to_dict(), with "url"
    tenant: str = ""  # the submitting token's tenant ("": no token file)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "model": self.model,
            "version": self.version,
            "versions": self.versions,
            "pinned": self.pinned,
            "state": self.state,
            "progress": {"done": self.done, "total": self.total, "failed": self.failed},
            "created": self.created,
            "finished": self.finished,
            "errors": self.errors,
            "dead_letters": self.dead_letters,
            "callback": self.callback,
            "tenant": self.tenant,
        }


@dataclass(frozen=True)
class ChunkOutcome:
    """What a job's status needs of a chunk's stored result (Celery's meta): no output bytes."""

    ok: bool  # every sample was computed
    versions: frozenset[int]  # that computed them
    error: str  # why it failed ("" if it did not)
    date_done: Any  # as Celery stores it

    @staticmethod
    def of(meta: dict[str, Any]) -> ChunkOutcome:
        date_done = meta.get("date_done")
        if meta.get("status") != states.SUCCESS:
            return ChunkOutcome(False, frozenset(), describe_failure(meta.get("result")), date_done)
        try:
            entries = PredictReply.from_wire(meta.get("result")).results.values()
        except InvalidArgument as error:
            return ChunkOutcome(False, frozenset(), error.message, date_done)
        errors = [entry.error.message for entry in entries if isinstance(entry, RequestFailure)]
        versions = frozenset(entry.version for entry in entries if isinstance(entry, ComputedOutputs))
        return ChunkOutcome(not errors, versions, "; ".join(errors), date_done)


def chunk_outcomes(client: redis.Redis, record: JobRecord) -> list[ChunkOutcome | None]:
    """Each chunk's outcome (None while it has none), read a few chunks at a time."""
    keys = [app.backend.get_key_for_task(chunk.task_id) for chunk in record.chunks]
    outcomes: list[ChunkOutcome | None] = []
    for start in range(0, len(keys), META_BATCH):
        raws = client.mget(keys[start : start + META_BATCH])
        outcomes += [ChunkOutcome.of(app.backend.decode(raw)) if raw else None for raw in raws]
    return outcomes


def ended(client: redis.Redis, job_id: str, record: JobRecord) -> bool:
    """Whether the job has ended, without reading its chunks' results: one EXISTS of them, cheap enough for a
    job's callback to ask every job_hooks.HOOK_CHECK_S."""
    if record.revoked or time.time() > _deadline(record):
        return True
    keys = [app.backend.get_key_for_task(chunk.task_id) for chunk in record.chunks]
    ran = sum(client.exists(*keys[start : start + EXISTS_BATCH]) for start in range(0, len(keys), EXISTS_BATCH))
    stopped = not record.dead_letters and client.exists(stop_key(job_id))  # a chunk failed
    return ran == len(keys) or bool(stopped)


def of(client: redis.Redis, job_id: str, record: JobRecord) -> JobStatus:
    """The job's status, from its record (tasks.job_records) and its chunks' results."""
    outcomes = chunk_outcomes(client, record)
    ran = [outcome for outcome in outcomes if outcome is not None]
    pairs = list(zip(record.chunks, outcomes, strict=True))
    done = sum(chunk.rows for chunk, outcome in pairs if outcome and outcome.ok)
    failures = [chunk for chunk, outcome in pairs if outcome and not outcome.ok]
    errors = sorted({outcome.error for outcome in ran if not outcome.ok} - {""})
    finished = [outcome.date_done for outcome in ran]
    deadline = _deadline(record)
    if record.revoked:
        state = JobState.REVOKED
    elif errors and not record.dead_letters:
        state = JobState.FAILURE
    elif done == record.total:
        state = JobState.SUCCESS
    elif record.dead_letters and len(ran) == len(outcomes):
        state = JobState.PARTIAL  # every chunk ended, some failed: a retry may run them again
    elif time.time() > deadline:
        state = JobState.FAILURE  # no worker ran the rest in time (none serves the model, or all too busy)
        errors = [*errors, f"The job did not finish within {deadline - record.created:.0f} s (--job_timeout_s)"]
        finished = [deadline]
    else:
        state = JobState.STARTED if ran else JobState.PENDING
    return JobStatus(
        job_id,
        record.model,
        record.version,
        sorted({version for outcome in ran if outcome.ok for version in outcome.versions}),
        record.pinned,
        state,
        done,
        record.total,
        record.created,
        _finished_at(finished) if state in COMPLETED else None,
        errors,
        sum(chunk.rows for chunk in failures),
        len(failures),
        _dead_letters(client, job_id, record, outcomes) if record.dead_letters else [],
        _callback(client, job_id, record),
        record.tenant,
    )


def _dead_letters(
    client: redis.Redis, job_id: str, record: JobRecord, outcomes: list[ChunkOutcome | None]
) -> list[dict[str, Any]]:
    """The chunks that failed, each with its samples [first, end), error and failures so far."""
    buried = dead_letters.buried(client, job_id)
    letters, first = [], 0
    for index, (chunk, outcome) in enumerate(zip(record.chunks, outcomes, strict=True)):
        if outcome is not None and not outcome.ok:
            attempts = buried[chunk.task_id][1] if chunk.task_id in buried else 1
            letters.append({"chunk": index, "samples": [first, first + chunk.rows], "error": outcome.error,
                            "attempts": attempts})  # fmt: skip
        first += chunk.rows
    return letters


def _callback(client: redis.Redis, job_id: str, record: JobRecord) -> dict[str, Any] | None:
    if record.callback is None:
        return None
    delivery = job_hooks.read(client, job_id)
    shown = delivery.to_dict() if delivery else {"state": job_hooks.PENDING, "attempts": 0}
    return {"url": record.callback, **shown}


def _deadline(record: JobRecord) -> float:
    return record.deadline if record.deadline is not None else record.created + JobSettings.job_timeout_s


def _finished_at(dates: list[Any]) -> float | None:
    """The latest of the chunks' `date_done` (ISO 8601, as Celery stores it) as a Unix time."""
    stamps = []
    for date in dates:
        try:
            stamps.append(datetime.fromisoformat(str(date)).timestamp())
        except ValueError:
            continue
    return max(stamps) if stamps else None
