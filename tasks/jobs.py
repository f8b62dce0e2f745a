"""Asynchronous jobs: many samples split into chunks (tasks.job_chunks) that the model's workers run between
predicts (tasks.job_queue, tasks.job_feeder), with their results kept in the Celery result backend. JobStore is
the api's handle on them: submit, status (tasks.job_status), result (tasks.job_result), cancel, retry of dead
letters (tasks.job_retry) and the listing of recent jobs.

A job's record lives in Redis (tasks.job_records), so any api process — including one started after the job
was submitted — can report on it. Every chunk is queued or taken by exactly one worker until its result is
stored; a chunk whose worker died is queued again by whichever api notices first, once — a second loss fails
it (tasks.lost_chunks). A job that named no version follows the model's default version as a predict does:
its chunks run on the version that was the default at submission while it serves, and on the new default once
a rollout retires it (the status lists the versions that computed the job). A job that named its version
fails if that version goes. A job submitted with dead letters keeps each failed chunk for a retry instead
(tasks.dead_letters) and ends PARTIAL if some failed; a job with a callback URL is told of its end by an api's
callback thread (tasks.callback_runner).

With bearer tokens, a job belongs to the token that submitted it: its record names the token's owner id
(api.auth.owner_id) and the owner's index lists it; any other caller is told it does not exist.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace

import numpy as np
import redis

from inference.bytes_tensors import payload_nbytes
from inference.errors import ResourceExhausted, TenantOverLimit
from tasks import dead_letters, job_backlog, job_hooks, job_queue, job_records, job_retry, job_status
from tasks.job_chunks import split
from tasks.job_queue import PAYLOAD_GRACE_S, stop_key
from tasks.job_result import JobResult
from tasks.job_states import COMPLETED, JobState
from tasks.job_status import JobStatus
from tasks.messages import ChunkRef, JobRecord
from tasks.registry import Target
from tasks.routing import job_queue_for
from tasks.settings import JobSettings

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
    max_job_bytes: int
    max_backlog_bytes: int
    timeout_s: int

    @staticmethod
    def from_settings(settings: JobSettings) -> JobLimits:
        return JobLimits(settings.job_max_mb << 20, settings.job_backlog_mb << 20, settings.job_timeout_s)


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
        chunks = list(split(job_id, target, inputs, deadline, pinned, tenant, options.dead_letters))
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
                job_records.add(pipe, job_id, record, self._ttl_s)
                if options.callback:  # before its chunks: the end of one nudges it (tasks.job_hooks)
                    job_hooks.arm(pipe, job_id, created + job_hooks.HOOK_CHECK_S, self._ttl_s)
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
        return self.status_of(job_id, job_records.read(self._client, job_id, owner))

    def ended(self, job_id: str) -> tuple[JobRecord, bool]:
        """The job's record, and whether it has ended (NotFound if it is gone), without reading its chunks'
        results (job_status.ended)."""
        record = job_records.read(self._client, job_id)
        return record, job_status.ended(self._client, job_id, record)

    def status_of(self, job_id: str, record: JobRecord) -> JobStatus:
        """The status of a job whose record the caller read (JobStore.ended)."""
        status = job_status.of(self._client, job_id, record)
        if status.state in (JobState.PENDING, JobState.STARTED):
            self._watched = True
        return status

    def result(self, job_id: str, owner: str | None = None) -> JobResult:
        """The outputs of a job that succeeded, to be read chunk by chunk (see JobResult)."""
        return JobResult(self._client, job_records.read(self._client, job_id, owner))

    def cancel(self, job_id: str, owner: str | None = None) -> None:
        """Drop the chunks not run yet (workers skip them) and the tensors of its dead letters; a job that
        already ended keeps its state. Its chunks leave the backlog at once, so that neither the server's
        backlog nor the tenant's job samples count them while they wait for a worker to skip them."""
        record = job_records.read(self._client, job_id, owner)
        if self.status_of(job_id, record).state not in COMPLETED:
            with self._client.pipeline(transaction=False) as pipe:
                job_records.update(pipe, job_id, replace(record, revoked=True))
                pipe.set(stop_key(job_id), "revoked", ex=self._limits.timeout_s + PAYLOAD_GRACE_S)
                job_backlog.release(pipe, [chunk.task_id for chunk in record.chunks])
                job_hooks.nudge(pipe, job_id)  # its callback, if any, is told now
                pipe.execute()
        if record.dead_letters:  # after the stop key: a chunk buried from now on keeps no tensors (dead_letters.bury)
            dead_letters.discard(self._client, list(dead_letters.buried(self._client, job_id)))

    def retry(self, job_id: str, owner: str | None = None) -> int:
        """Queue a job's dead letters again (see job_retry.retry); how many were queued."""
        record = job_records.read(self._client, job_id, owner)
        return job_retry.retry(self._client, job_id, record, self._limits.timeout_s, self._ttl_s)

    def sweep_due(self) -> bool:
        """Whether to look for dead workers' chunks now (tasks.recovery does, off the request threads): at
        most every SWEEP_INTERVAL_S while someone watches an unfinished job, so that a loss no api saw (or
        could not act on) is repaired within a poll or two."""
        now = time.monotonic()
        if not self._watched or now - self._swept_at < SWEEP_INTERVAL_S:
            return False
        self._watched, self._swept_at = False, now
        return True

    def recent(self, limit: int = 50, owner: str | None = None) -> list[str]:
        """The latest jobs: every job, or with `owner` that owner's only."""
        return job_records.recent(self._client, limit, owner)


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f}".removesuffix(".0")
