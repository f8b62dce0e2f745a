"""The retry of a job's dead letters (`POST /v1/jobs/{id}/retry`): its failed chunks queued again with their
kept tensors (tasks.dead_letters) under a new deadline, and its callback, if any, armed to tell of its next end."""

from __future__ import annotations

import time
from dataclasses import replace

import redis

from inference.errors import FailedPrecondition
from tasks import dead_letters, job_hooks, job_queue, job_records
from tasks.app import app
from tasks.job_status import chunk_outcomes
from tasks.messages import JobRecord, QueuedChunk
from tasks.routing import job_queue_for


class NothingToRetry(FailedPrecondition):
    """A retry of a job that has no dead letters to run again."""

    http_status = 409


def retry(client: redis.Redis, job_id: str, record: JobRecord, timeout_s: int, ttl_s: int) -> int:
    """Queue a job's dead letters again, with a new deadline (`timeout_s`, --job_timeout_s, from now); how many
    were queued. NothingToRetry (409) for a job without dead letters (or cancelled), or whose dead letters'
    tensors are gone. `ttl_s`: how long its callback's delivery state is kept (--job_ttl_s)."""
    if not record.dead_letters or record.revoked:
        why = "was cancelled" if record.revoked else 'was not submitted with "dead_letters": true'
        raise NothingToRetry(f"Job {job_id} {why}: it has no dead letters to retry")
    outcomes = zip(record.chunks, chunk_outcomes(client, record), strict=True)
    failed = [chunk.task_id for chunk, outcome in outcomes if outcome and not outcome.ok]
    if not failed:
        raise NothingToRetry(f"Job {job_id} has no dead letters to retry")
    buried = dead_letters.buried(client, job_id)
    now = time.time()
    deadline = now + timeout_s
    record = replace(record, deadline=deadline)
    job_records.update(client, job_id, record)
    queue, queued = job_queue_for(record.queue), 0
    for task_id in failed:
        if task_id in buried:
            chunk = _with_deadline(QueuedChunk.from_json(buried[task_id][0].chunk), deadline)
            result_key = app.backend.get_key_for_task(task_id)
            payload_ttl_s = deadline + job_queue.PAYLOAD_GRACE_S - now
            queued += dead_letters.requeue(client, queue, chunk, result_key, job_queue.RERUNS_KEY, payload_ttl_s) == 1
    if not queued:
        raise NothingToRetry(
            f"Job {job_id}: the tensors of its dead letters are gone (kept --job_ttl_s, dropped by a cancel)"
        )
    if record.callback:
        with client.pipeline(transaction=False) as pipe:
            job_hooks.arm(pipe, job_id, now + job_hooks.HOOK_CHECK_S, ttl_s)
            pipe.execute()
    return queued


def _with_deadline(chunk: QueuedChunk, deadline: float) -> QueuedChunk:
    """A chunk as queued again by a retry: its requests' deadlines moved to the job's new one."""
    envelope = chunk.envelope
    entries = tuple(replace(entry, deadline=deadline) for entry in envelope.requests)
    return replace(chunk, envelope=replace(envelope, deadline=deadline, requests=entries))
