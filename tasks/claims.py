"""Which worker took each in-flight predict message, so that an api can tell lost work from slow work.

A worker claims a message in the same pipelined round trip that fetches its tensors: one field per
message in a hash owned by the api that waits for it (`claims_key(reply_to)`), naming the worker.
The result backend releases the claim in the round trip that delivers the result. When a worker's
heartbeat lapses, the api looks up which of its messages that worker still held (tasks.dispatcher).
"""

from __future__ import annotations

import redis

from tasks.routing import claims_key

CLAIMS_TTL_S = 60  # an api's claims outlive it by at most this long


def claim(pipe: redis.client.Pipeline, reply_to: str, task_id: str, worker_id: str) -> None:
    key = claims_key(reply_to)
    pipe.hset(key, task_id, worker_id)
    pipe.expire(key, CLAIMS_TTL_S)


def release(client: redis.Redis | redis.client.Pipeline, reply_to: str, task_id: str) -> None:
    client.hdel(claims_key(reply_to), task_id)


def holders(client: redis.Redis, reply_to: str) -> dict[str, str]:
    """task id -> id of the worker running it, for the messages of the api owning `reply_to`."""
    return {task.decode(): worker.decode() for task, worker in client.hgetall(claims_key(reply_to)).items()}
