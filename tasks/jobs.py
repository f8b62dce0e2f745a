"""Asynchronous jobs: many samples split into chunks that the model's workers run between predicts
(tasks.job_queue, tasks.job_feeder), with their results kept in the Celery result backend.

A job's record lives in Redis (`ovms:job:<id>`, plus the `ovms:jobs` index), so any api process —
including one started after the job was submitted — can report on it. Every chunk is queued or taken
by exactly one worker until its result is stored; a chunk whose worker died is queued again by
whichever api notices first, once — a second loss fails it. A job that named no version follows the
model's default version as a predict does: its chunks run on the version that was the default at
submission while it serves, and on the new default once a rollout retires it (the status lists the
versions that computed the job). A job that named its version fails if that version goes.
A job ends: SUCCESS, FAILURE at the first failed chunk (with its error), FAILURE at its deadline
(`--job_timeout_s`), or REVOKED. A job submitted with dead letters keeps each failed chunk for a retry
instead (tasks.dead_letters) and ends PARTIAL if some failed; a job with a callback URL is told of its end
by an api's callback thread (tasks.callback_runner).

With bearer tokens, a job belongs to the token that submitted it: its record names the token's owner id
(api.auth.owner_id) and the owner's index (`ovms:jobs:<owner>`) lists it; any other caller is told it
does not exist. Job ids are 32 lowercase hex digits, checked before they make a Redis key; each chunk
has a random id of its own, so that logs, which show task ids, show no job id.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
import redis
from celery import states

from inference.bytes_tensors import payload_nbytes
from inference.errors import (
    WORKER_LOST,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TenantOverLimit,
    Unavailable,
)
from inference.request import InferenceRequest
from tasks import dead_letters, job_backlog, job_hooks, job_queue
from tasks.app import app
from tasks.job_queue import stop_key
from tasks.job_states import COMPLETED, JobState
from tasks.messages import (
    ChunkRef,
    ComputedOutputs,
    JobRecord,
    Payload,
    PredictReply,
    QueuedChunk,
    RequestFailure,
    describe_failure,
    pack_requests,
)
from tasks.registry import Target
from tasks.routing import job_queue_for, worker_key
from tasks.settings import JobSettings

log = logging.getLogger("serving")

JOB_PREFIX = "ovms:job:"
JOB_INDEX = "ovms:jobs"
CHUNK_ROWS = 256
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex
META_BATCH = 16  # chunk results read per Redis round trip by status: never the whole result at once
CHUNK_BYTES = 2 << 20  # a chunk's tensors: a predict waits at most for one chunk's inference
PAYLOAD_GRACE_S = 5  # tensors outlive the job's deadline a little, for a worker already running them
BACKLOG_RETRY_AFTER_S = 10
SWEEP_INTERVAL_S = 1.0
HOOK_CHECK_S = 1.0  # how often the api that holds a job's callback looks whether it has ended


class JobTooLarge(ResourceExhausted):
    """One job over --job_max_mb: retrying cannot help."""

    http_status = 413


class NothingToRetry(FailedPrecondition):
    """A retry of a job that has no dead letters to run again."""

    http_status = 409


class JobBacklogFull(ResourceExhausted):
    """The server's queued jobs would pass --job_backlog_mb: retry once some have run."""

    retry_after_s = BACKLOG_RETRY_AFTER_S


@dataclass(frozen=True)
class JobLimits:
    max_job_bytes: int
    max_backlog_bytes: int
    timeout_s: int

    @staticmethod
    def from_settings(settings: JobSettings) -> JobLimits:
        return JobLimits(settings.job_max_mb << 20, settings.job_backlog_mb << 20, settings.job_timeout_s)


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
class JobOptions:
    """What a client may ask of a job besides its samples."""

    dead_letters: bool = False  # a failed chunk waits for a retry rather than failing the job
    callback: str | None = None  # a URL the api checked against --callback_allow, told of the job's end
    base_url: str = ""  # the api as the client reached it (http://host:port): the callback's links start so


class JobStore:
    def __init__(self, client: redis.Redis, ttl_s: int, limits: JobLimits) -> None:
        self._client = client
        self._ttl_s = ttl_s  # the workers keep chunk results as long (Celery result_expires)
        self._limits = limits
        self._swept_at = 0.0
        self._watched = False  # an unfinished job's status was read since the last sweep

    def submit(
        self,
        target: Target,
        inputs: dict[str, np.ndarray],
        owner: str | None = None,
        pinned: bool = True,
        tenant: str = "",
        samples: int | None = None,
        options: JobOptions = JobOptions(),
    ) -> str:
        """Split validated inputs (a leading sample dimension) into chunks and queue them: JobTooLarge
        (413) beyond --job_max_mb, JobBacklogFull (429) if the server's queued jobs would pass
        --job_backlog_mb. `owner`: the submitting token's owner id, with bearer tokens; `pinned`: the
        caller named `target.version` (else chunks follow the model's default version); `tenant`: the
        submitting token's tenant, and `samples` its limit of samples in unfinished jobs (TenantOverLimit,
        429, beyond it; JobTooLarge for a job alone beyond it)."""
        nbytes = sum(payload_nbytes(array) for array in inputs.values())
        self.refuse_oversized(nbytes)
        total = int(next(iter(inputs.values())).shape[0])
        if samples is not None and total > samples:
            raise JobTooLarge(f"The job's {total} samples are more than tenant {tenant}'s {samples} (job_samples=)")
        job_id = uuid.uuid4().hex
        created = time.time()
        deadline = created + self._limits.timeout_s
        chunks = list(_split(job_id, target, inputs, deadline, pinned, tenant, options.dead_letters))
        cap = self._limits.max_backlog_bytes
        entries = [(chunk.task_id, chunk.nbytes, rows) for chunk, rows, _ in chunks]
        full = job_backlog.admit(self._client, entries, deadline, cap, tenant, samples)
        if full is not None and full.limit == "samples":
            detail = f" ({full.queued} queued, this job {total})"
            raise TenantOverLimit(tenant, "job_samples", samples or 0, BACKLOG_RETRY_AFTER_S, detail)
        if full is not None:
            raise JobBacklogFull(
                f"The server's job backlog is full: {_mib(full.queued)} MiB queued, this job {_mib(nbytes)} MiB, "
                f"the limit {_mib(cap)} MiB (--job_backlog_mb); retry later"
            )
        record = JobRecord(
            model=target.model,
            version=target.version,
            total=total,
            queue=target.queue,
            created=created,
            chunks=tuple(ChunkRef(chunk.task_id, rows) for chunk, rows, _ in chunks),
            owner=owner,
            pinned=pinned,
            deadline=deadline,
            dead_letters=options.dead_letters,
            callback=options.callback,
            status_url=f"{options.base_url}/v1/jobs/{job_id}" if options.callback else None,
            tenant=tenant,
        )
        queue = job_queue_for(target.queue)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.set(JOB_PREFIX + job_id, record.to_json(), ex=self._ttl_s)
                for index in {JOB_INDEX, _index(owner)}:
                    pipe.zadd(index, {job_id: created})
                    pipe.zremrangebyscore(index, 0, created - self._ttl_s)
                    pipe.expire(index, self._ttl_s)
                if options.callback:  # before its chunks: the end of one nudges it (tasks.job_hooks)
                    job_hooks.arm(pipe, job_id, created + HOOK_CHECK_S, self._ttl_s)
                for chunk, _, payload in chunks:
                    job_queue.publish(pipe, queue, chunk, payload, deadline + PAYLOAD_GRACE_S - created)
                pipe.execute()
        except (redis.RedisError, OSError):
            job_backlog.release(self._client, [chunk.task_id for chunk, _, _ in chunks])
            raise
        return job_id

    def refuse_oversized(self, nbytes: int) -> None:
        """JobTooLarge (413) for a job whose tensors take `nbytes`: over --job_max_mb, or over the whole
        --job_backlog_mb (which it could never fit). Also called with an upload's size, from its headers,
        before it is unpacked."""
        limit, flag = min(
            (self._limits.max_job_bytes, "--job_max_mb"), (self._limits.max_backlog_bytes, "--job_backlog_mb")
        )
        if nbytes > limit:
            raise JobTooLarge(f"The job's tensors take {_mib(nbytes)} MiB; the limit is {_mib(limit)} MiB ({flag})")

    def status(self, job_id: str, owner: str | None = None) -> JobStatus:
        """The job's state; with `owner`, only if it is that owner's (else NotFound, as for no such job)."""
        return self._status(job_id, self._record(job_id, owner))

    def ended(self, job_id: str) -> tuple[JobRecord, bool]:
        """The job's record, and whether it has ended (NotFound if it is gone), without reading its chunks'
        results: one EXISTS of them, cheap enough for a job's callback to ask every HOOK_CHECK_S."""
        record = self._record(job_id)
        if record.revoked or time.time() > _deadline(record):
            return record, True
        keys = [app.backend.get_key_for_task(chunk.task_id) for chunk in record.chunks]
        ran = sum(self._client.exists(*keys[start : start + 1000]) for start in range(0, len(keys), 1000))
        stopped = not record.dead_letters and self._client.exists(stop_key(job_id))  # a chunk failed
        return record, ran == len(keys) or bool(stopped)

    def status_of(self, job_id: str, record: JobRecord) -> JobStatus:
        """The status of a job whose record the caller read (JobStore.ended)."""
        return self._status(job_id, record)

    def _status(self, job_id: str, record: JobRecord) -> JobStatus:
        outcomes = self._chunk_outcomes(record)
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
            self._watched = True
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
            self._dead_letters(job_id, record, outcomes) if record.dead_letters else [],
            self._callback(job_id, record),
            record.tenant,
        )

    def _dead_letters(
        self, job_id: str, record: JobRecord, outcomes: list[_ChunkOutcome | None]
    ) -> list[dict[str, Any]]:
        """The chunks that failed, each with its samples [first, end), error and failures so far."""
        buried = dead_letters.buried(self._client, job_id)
        letters, first = [], 0
        for index, (chunk, outcome) in enumerate(zip(record.chunks, outcomes, strict=True)):
            if outcome is not None and not outcome.ok:
                attempts = buried[chunk.task_id][1] if chunk.task_id in buried else 1
                letters.append({"chunk": index, "samples": [first, first + chunk.rows], "error": outcome.error,
                                "attempts": attempts})  # fmt: skip
            first += chunk.rows
        return letters

    def _callback(self, job_id: str, record: JobRecord) -> dict[str, Any] | None:
        if record.callback is None:
            return None
        delivery = job_hooks.read(self._client, job_id)
        shown = delivery.to_dict() if delivery else {"state": job_hooks.PENDING, "attempts": 0}
        return {"url": record.callback, **shown}

    def result(self, job_id: str, owner: str | None = None) -> JobResult:
        """The outputs of a job that succeeded, to be read chunk by chunk (see JobResult)."""
        return JobResult(self._client, self._record(job_id, owner))

    def cancel(self, job_id: str, owner: str | None = None) -> None:
        """Drop the chunks not run yet (workers skip them) and the tensors of its dead letters; a job that
        already ended keeps its state. Its chunks leave the backlog at once, so that neither the server's
        backlog nor the tenant's job samples count them while they wait for a worker to skip them."""
        record = self._record(job_id, owner)
        if self._status(job_id, record).state not in COMPLETED:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.set(JOB_PREFIX + job_id, replace(record, revoked=True).to_json(), keepttl=True)
                pipe.set(stop_key(job_id), "revoked", ex=self._limits.timeout_s + PAYLOAD_GRACE_S)
                job_backlog.release(pipe, [chunk.task_id for chunk in record.chunks])
                job_hooks.nudge(pipe, job_id)  # its callback, if any, is told now
                pipe.execute()
        if record.dead_letters:  # after the stop key: a chunk buried from now on keeps no tensors (dead_letters.bury)
            dead_letters.discard(self._client, list(dead_letters.buried(self._client, job_id)))

    def retry(self, job_id: str, owner: str | None = None) -> int:
        """Queue a job's dead letters again, with a new deadline (--job_timeout_s from now); how many were
        queued. NothingToRetry (409) for a job without dead letters (or cancelled), or whose dead letters'
        tensors are gone."""
        record = self._record(job_id, owner)
        if not record.dead_letters or record.revoked:
            why = "was cancelled" if record.revoked else 'was not submitted with "dead_letters": true'
            raise NothingToRetry(f"Job {job_id} {why}: it has no dead letters to retry")
        outcomes = zip(record.chunks, self._chunk_outcomes(record), strict=True)
        failed = [chunk.task_id for chunk, outcome in outcomes if outcome and not outcome.ok]
        if not failed:
            raise NothingToRetry(f"Job {job_id} has no dead letters to retry")
        buried = dead_letters.buried(self._client, job_id)
        now = time.time()
        deadline = now + self._limits.timeout_s
        record = replace(record, deadline=deadline)
        self._client.set(JOB_PREFIX + job_id, record.to_json(), keepttl=True)
        queue, queued = job_queue_for(record.queue), 0
        for task_id in failed:
            if task_id in buried:
                chunk = _with_deadline(QueuedChunk.from_json(buried[task_id][0].chunk), deadline)
                result_key = app.backend.get_key_for_task(task_id)
                ttl_s = deadline + PAYLOAD_GRACE_S - now
                queued += dead_letters.requeue(self._client, queue, chunk, result_key, job_queue.RERUNS_KEY, ttl_s) == 1
        if not queued:
            raise NothingToRetry(
                f"Job {job_id}: the tensors of its dead letters are gone (kept --job_ttl_s, dropped by a cancel)"
            )
        if record.callback:
            with self._client.pipeline(transaction=False) as pipe:
                job_hooks.arm(pipe, job_id, now + HOOK_CHECK_S, self._ttl_s)
                pipe.execute()
        return queued

    def sweep_due(self) -> bool:
        """Whether to look for dead workers' chunks now (tasks.recovery does, off the request threads): at
        most every SWEEP_INTERVAL_S while someone watches an unfinished job, so that a loss no api saw (or
        could not act on) is repaired within a poll or two."""
        now = time.monotonic()
        if not self._watched or now - self._swept_at < SWEEP_INTERVAL_S:
            return False
        self._watched, self._swept_at = False, now
        return True

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
            self._client.set(stop_key(chunk.job_id), "failed", ex=self._limits.timeout_s)
            job_backlog.release(self._client, [chunk.task_id])

    def recent(self, limit: int = 50, owner: str | None = None) -> list[str]:
        """The latest jobs: every job, or with `owner` that owner's only."""
        return [job_id.decode() for job_id in self._client.zrevrange(_index(owner), 0, limit - 1)]

    def _record(self, job_id: str, owner: str | None = None) -> JobRecord:
        """A job's record; NotFound for a malformed id (before it makes a key) and, with `owner`, for
        another owner's job, in the same words as for no such job."""
        raw = self._client.get(JOB_PREFIX + job_id) if JOB_ID.fullmatch(job_id) else None
        try:
            record = JobRecord.from_json(raw) if raw is not None else None
        except InvalidArgument as error:  # not the caller's fault: the stored record is not one this api reads
            raise Internal(error.message) from None
        if record is None or (owner is not None and record.owner != owner):
            raise NotFound(f"Job {job_id[:64]} is not found: unknown id, expired, or lost when Redis restarted empty")
        return record

    def _chunk_outcomes(self, record: JobRecord) -> list[_ChunkOutcome | None]:
        """Each chunk's outcome (None while it has none), read a few chunks at a time."""
        keys = [app.backend.get_key_for_task(chunk.task_id) for chunk in record.chunks]
        outcomes: list[_ChunkOutcome | None] = []
        for start in range(0, len(keys), META_BATCH):
            raws = self._client.mget(keys[start : start + META_BATCH])
            outcomes += [_ChunkOutcome.of(app.backend.decode(raw)) if raw else None for raw in raws]
        return outcomes


class JobResult:
    """A finished job's outputs, read from Redis one chunk at a time (a download streams them, and never
    holds the whole result). Each output is its chunks' rows in order, as np.concatenate would join them."""

    def __init__(self, client: redis.Redis, record: JobRecord) -> None:
        self._client = client
        self._chunks = [(chunk.task_id, chunk.rows) for chunk in record.chunks]
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
        entry = PredictReply.from_wire(app.backend.decode(raw)["result"]).results[f"{task_id}.0"]
        if isinstance(entry, RequestFailure):
            raise entry.error
        return entry.arrays()


def chunk_task_id() -> str:
    """A job chunk's task id: random, not derived from its job's id, since Flower and logs show task ids
    and a job id is what gives access to the job. The job record lists its chunks' ids."""
    return uuid.uuid4().hex


def _index(owner: str | None) -> str:
    """The sorted set of job ids by creation time: every job's, or one owner's."""
    return JOB_INDEX if owner is None else f"{JOB_INDEX}:{owner}"


def _split(
    job_id: str,
    target: Target,
    inputs: dict[str, np.ndarray],
    deadline: float,
    pinned: bool,
    tenant: str,
    dead_letters: bool,
) -> Iterator[tuple[QueuedChunk, int, Payload]]:
    """The job's chunks (at most CHUNK_ROWS samples and, above one sample, CHUNK_BYTES), each with its
    number of samples and its tensor payload."""
    total = int(next(iter(inputs.values())).shape[0])
    sample_bytes = sum(payload_nbytes(array[:1]) for array in inputs.values())
    rows = max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(sample_bytes, 1)))
    precisions = {name: spec.precision for name, spec in target.signature.inputs.items()}
    for start in range(0, total, rows):
        task_id = chunk_task_id()
        part = {name: array[start : start + rows] for name, array in inputs.items()}
        request_id = f"{task_id}.0"
        request = InferenceRequest(
            target.model,
            target.version,
            part,
            deadline=deadline,
            request_id=request_id,
            pinned=pinned,
            any_batch=True,
            tenant=tenant,
        )
        envelope, payload = pack_requests([request], precisions)
        nbytes = sum(payload_nbytes(array) for array in part.values())
        chunk = QueuedChunk(task_id, job_id, nbytes, envelope, dead_letters)
        yield chunk, int(next(iter(part.values())).shape[0]), payload


def _deadline(record: JobRecord) -> float:
    return record.deadline if record.deadline is not None else record.created + JobSettings.job_timeout_s


def _with_deadline(chunk: QueuedChunk, deadline: float) -> QueuedChunk:
    """A chunk as queued again by a retry: its requests' deadlines moved to the job's new one."""
    envelope = chunk.envelope
    entries = tuple(replace(entry, deadline=deadline) for entry in envelope.requests)
    return replace(chunk, envelope=replace(envelope, deadline=deadline, requests=entries))


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f}".removesuffix(".0")


@dataclass(frozen=True)
class _ChunkOutcome:
    """What a job's status needs of a chunk's stored result (Celery's meta): no output bytes."""

    ok: bool  # every sample was computed
    versions: frozenset[int]  # that computed them
    error: str  # why it failed ("" if it did not)
    date_done: Any  # as Celery stores it

    @staticmethod
    def of(meta: dict[str, Any]) -> _ChunkOutcome:
        date_done = meta.get("date_done")
        if meta.get("status") != states.SUCCESS:
            return _ChunkOutcome(False, frozenset(), describe_failure(meta.get("result")), date_done)
        try:
            entries = PredictReply.from_wire(meta.get("result")).results.values()
        except InvalidArgument as error:
            return _ChunkOutcome(False, frozenset(), error.message, date_done)
        errors = [entry.error.message for entry in entries if isinstance(entry, RequestFailure)]
        versions = frozenset(entry.version for entry in entries if isinstance(entry, ComputedOutputs))
        return _ChunkOutcome(not errors, versions, "; ".join(errors), date_done)


def _finished_at(dates: list[Any]) -> float | None:
    """The latest of the chunks' `date_done` (ISO 8601, as Celery stores it) as a Unix time."""
    stamps = []
    for date in dates:
        try:
            stamps.append(datetime.fromisoformat(str(date)).timestamp())
        except ValueError:
            continue
    return max(stamps) if stamps else None
