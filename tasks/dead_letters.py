"""Dead letters: the failed chunks of a job submitted with `"dead_letters": true`, kept with their tensors so
that a client can queue them again (`POST /v1/jobs/{id}/retry`) instead of the job failing at its first one.

A chunk is buried by whoever sees it fail: the worker whose inference failed (tasks.job_feeder) or the api
that finds it lost with its worker a second time (tasks.lost_chunks). Burying moves its tensors from the
claim-check key, which storing the failed result deletes, to a key of their own that lives as long as the
job (--job_ttl_s), keeps them counted in the job backlog (--job_backlog_mb) until then, and records the
chunk as queued with its error and how often it failed. A retry moves them back and queues the chunk at
the head of its job queue, atomically per chunk (a Lua script), so two retries queue it once.
"""

from __future__ import annotations

import time

import redis

from tasks import job_backlog
from tasks.job_queue import stop_key
from tasks.messages import DeadLetter, QueuedChunk
from tasks.routing import JOB_EVENTS_KEY, job_key, payload_key

# KEYS: payload, dead payload, letters, attempts, backlog entries, events, job's stop key. ARGV: task, letter,
# ttl s, now. A cancelled job's chunk keeps no tensors: the cancel gave its backlog share back already.
_BURY = """
if redis.call('GET', KEYS[7]) == 'revoked' then
  redis.call('DEL', KEYS[1])
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
redis.call('EXPIRE', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[5], 'XX', ARGV[4] + ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[6], 'dead_lettered', 1)
"""

# KEYS: result, dead payload, payload, job queue, reruns, backlog entries, events.
# ARGV: task, chunk, deadline, payload ttl ms. Returns 1 queued, 0 not failed (or queued by another), -1 no tensors.
_REQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
redis.call('DEL', KEYS[1])
redis.call('RENAME', KEYS[2], KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('ZADD', KEYS[6], 'XX', ARGV[3], ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[2])
redis.call('HINCRBY', KEYS[7], 'retried', 1)
return 1
"""


def letters_key(job_id: str) -> str:
    """Hash: chunk task id -> its DeadLetter."""
    return job_key(job_id, "dead")


def attempts_key(job_id: str) -> str:
    """Hash: chunk task id -> how many times it failed (runs that ended in a failure, or two worker losses)."""
    return job_key(job_id, "dead-attempts")


def dead_payload_key(task_id: str) -> str:
    """A buried chunk's tensors (storing its failure deletes its claim-check key, tasks.backend)."""
    return f"ovms:dead:in:{task_id}"


def bury(client: redis.Redis, raw: bytes | str, chunk: QueuedChunk, error: str, ttl_s: int) -> None:
    """Keep a failed chunk (`raw`: as it was queued) and its tensors for `ttl_s`; call it before its failure is
    stored. Idempotent for the tensors: a chunk buried again (a retry failed) keeps the ones it had. A chunk of a
    cancelled job is recorded without them (they are deleted): a cancel during a retry leaves nothing behind."""
    letter = DeadLetter(raw.decode() if isinstance(raw, bytes) else raw, error, time.time()).to_json()
    keys = (
        payload_key(chunk.task_id),
        dead_payload_key(chunk.task_id),
        letters_key(chunk.job_id),
        attempts_key(chunk.job_id),
        job_backlog.ENTRIES,
        JOB_EVENTS_KEY,
        stop_key(chunk.job_id),
    )
    client.eval(_BURY, len(keys), *keys, chunk.task_id, letter, ttl_s, int(time.time()))


def buried(client: redis.Redis, job_id: str) -> dict[str, tuple[DeadLetter, int]]:
    """The job's dead letters by chunk task id, each with its number of failures (entries that do not decode
    are left out: no api of this format wrote them)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(letters_key(job_id))
        pipe.hgetall(attempts_key(job_id))
        letters, attempts = pipe.execute()
    found = {}
    for task, raw in letters.items():
        try:
            found[task.decode()] = (DeadLetter.from_json(raw), int(attempts.get(task, 1)))
        except (ValueError, UnicodeDecodeError):
            continue
    return found


def requeue(
    client: redis.Redis, queue: str, chunk: QueuedChunk, result_key: str, reruns_key: str, payload_ttl_s: float
) -> int:
    """Queue a buried chunk again (`chunk`: with its new deadline) at the head of `queue`, its failed result
    dropped and its tensors moved back: 1; 0 if its result is not there (not failed, or another retry took
    it); -1 if its tensors are gone (expired, or discarded by a cancel)."""
    keys = (
        result_key,
        dead_payload_key(chunk.task_id),
        payload_key(chunk.task_id),
        queue,
        reruns_key,
        job_backlog.ENTRIES,
        JOB_EVENTS_KEY,
    )
    deadline = chunk.envelope.deadline
    return int(
        client.eval(_REQUEUE, len(keys), *keys, chunk.task_id, chunk.to_json(), deadline, int(payload_ttl_s * 1000))
    )


def discard(client: redis.Redis, task_ids: list[str]) -> None:
    """Drop buried chunks' tensors and their share of the job backlog (a cancelled job's: it is not retried)."""
    if task_ids:
        with client.pipeline(transaction=True) as pipe:
            pipe.delete(*(dead_payload_key(task) for task in task_ids))
            job_backlog.release(pipe, task_ids)
            pipe.execute()
