"""The job chunk queue of a model: a Redis list beside its Celery queue, where every chunk is always in
exactly one place until it ends — queued, or taken by one worker — so that none can be lost.

A worker takes a chunk with a Lua script that moves it from the queue to its own taken list
(`<queue>:taken:<worker>`) and names that list in `ovms:jobq:takers` in the same step: taking is claiming,
atomically, and a taken list that holds anything is always one the apis look at — also after an api gave
up on its worker once (a stall past the heartbeat expiry) and forgot the list, which it does only while the
list is empty, atomically too. A worker takes one chunk at a time, so nothing sits unclaimed in a prefetch
buffer; it waits for one with a blocking `BLMOVE` of the queue onto itself, which moves nothing.
The chunk leaves the taken list (`LREM`, with its backlog entry, in one transaction)
after its result is stored. When a worker stops heartbeating, an api moves what its taken lists hold
back to the head of their queues with a Lua script (so one api of many gets each chunk), once: a chunk
whose worker dies twice fails, so that a chunk that kills workers cannot kill them all.
"""

from __future__ import annotations

import logging
import time

import redis

from inference.errors import InvalidArgument
from tasks import job_backlog, job_hooks
from tasks.messages import Payload, QueuedChunk
from tasks.publisher import store_payload
from tasks.routing import TAKEN_INFIX, job_key, job_taken_key, payload_key

log = logging.getLogger("serving")

RERUNS_KEY = "ovms:job-reruns"  # chunk task id -> times it was queued again after its worker died
TAKERS_KEY = "ovms:jobq:takers"  # set of every worker's taken lists
MAX_RERUNS = 1
PAYLOAD_GRACE_S = 5  # a chunk's tensors outlive its job's deadline a little, for a worker already running it

# KEYS: job queue, taken list, takers set.
_TAKE = """
redis.call('SADD', KEYS[3], KEYS[2])
return redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
"""

# KEYS: taken list, takers set.
_FORGET = """
if redis.call('LLEN', KEYS[1]) > 0 then return 0 end
return redis.call('SREM', KEYS[2], KEYS[1])
"""

# KEYS: taken list, job queue, reruns hash. ARGV: result key prefix, max reruns, reruns TTL.
_TAKE_BACK = """
local item = redis.call('RPOP', KEYS[1])
if not item then return false end
local task = cjson.decode(item)['task']
if redis.call('EXISTS', ARGV[1] .. task) == 1 then return {item, 'done'} end
local reruns = redis.call('HINCRBY', KEYS[3], task, 1)
redis.call('EXPIRE', KEYS[3], ARGV[3])
if reruns > tonumber(ARGV[2]) then return {item, 'lost'} end
redis.call('RPUSH', KEYS[2], item)
return {item, 'queued'}
"""


def stop_key(job_id: str) -> str:
    """Set when a job was cancelled or one of its chunks failed: its other chunks are dropped unrun."""
    return job_key(job_id, "stopped")


def publish(pipe: redis.client.Pipeline, queue: str, chunk: QueuedChunk, payload: Payload, expires_s: float) -> None:
    """Queue a chunk with its tensors under their claim-check key (the caller executes the pipeline)."""
    store_payload(pipe, payload_key(chunk.task_id), payload, int(expires_s * 1000))
    pipe.lpush(queue, chunk.to_json())


def take(client: redis.Redis, queue: str, worker_id: str, wait_s: float) -> tuple[bytes, QueuedChunk] | None:
    """The oldest chunk of `queue`, now in this worker's taken list, which the apis know of (waits up
    to `wait_s` for one). A malformed one (not written by an api of this format) is dropped: no worker
    could run it, and its job, if any, fails at its deadline."""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        if client.blmove(queue, queue, max(left, 0.01), "RIGHT", "RIGHT") is None:  # wait: moves nothing
            return None
        taken = job_taken_key(queue, worker_id)
        raw = client.eval(_TAKE, 3, queue, taken, TAKERS_KEY)
        if raw is None:  # another worker took it first
            continue
        try:
            return raw, QueuedChunk.from_json(raw)
        except InvalidArgument as error:
            log.error("Dropping a job chunk from %s: %s", queue, error.message)
            client.lrem(taken, 1, raw)
    return None


def give_back(client: redis.Redis, queue: str, worker_id: str) -> None:
    """Put what this worker's taken list holds back at the head of the queue: chunks it could not finish
    (Redis failed under it) while it stays alive, so that no api would recover them."""
    while client.lmove(job_taken_key(queue, worker_id), queue, "RIGHT", "RIGHT") is not None:
        pass


def finish(
    client: redis.Redis, queue: str, worker_id: str, raw: bytes, chunk: QueuedChunk, keep_payload: bool = False
) -> None:
    """The chunk ended (its result is stored, or it was dropped): out of the taken list and the backlog, and
    its job's callback (if any) looks now whether the job has ended. `keep_payload`: it was buried as a dead
    letter (tasks.dead_letters), which keeps its tensors and their share of the backlog."""
    with client.pipeline(transaction=True) as pipe:
        pipe.lrem(job_taken_key(queue, worker_id), 1, raw)
        if not keep_payload:
            pipe.delete(payload_key(chunk.task_id))
            job_backlog.release(pipe, [chunk.task_id])
        job_hooks.nudge(pipe, chunk.job_id)
        pipe.execute()


def take_back(client: redis.Redis, taken_key: str, result_prefix: str, ttl_s: int) -> tuple[QueuedChunk, str] | None:
    """Move the oldest chunk of a dead worker's taken list back to its queue: (chunk, 'queued'), or
    (chunk, 'done') if its result was stored already, or (chunk, 'lost') if it was lost once before
    (not queued: the caller fails it). None when the list is empty."""
    queue = taken_key.rpartition(TAKEN_INFIX)[0]
    moved = client.eval(_TAKE_BACK, 3, taken_key, queue, RERUNS_KEY, result_prefix, MAX_RERUNS, ttl_s)
    if not moved:
        return None
    raw, outcome = moved
    return QueuedChunk.from_json(raw), outcome.decode()


def taken_lists(client: redis.Redis) -> dict[str, str]:
    """Every worker's taken list -> that worker's id."""
    return {key.decode(): key.decode().rpartition(TAKEN_INFIX)[2] for key in client.smembers(TAKERS_KEY)}


def forget_taker(client: redis.Redis, taken_key: str) -> None:
    """A dead worker's taken list, now empty, need not be looked at again (kept if it is not empty:
    its worker was only stalled, and took a chunk since)."""
    client.eval(_FORGET, 2, taken_key, TAKERS_KEY)
