"""Which worker took each in-flight predict message, so that an api can tell lost work from slow work.

A worker claims a message in the same pipelined round trip that fetches its tensors: one field per
message in a hash owned by the api that waits for it (`claims_key(claims_owner)`; the claims owner is
that api's reply list), naming the worker. The result backend releases the claim in the round trip that
stores the result. When a worker's heartbeat lapses, each api looks up which of its messages that worker still held
(tasks.dispatcher). Async job chunks are claimed differently, by the taking itself (tasks.job_queue).
"""

from __future__ import annotations

from typing import Any

import redis

from tasks.routing import claims_key

CLAIMS_TTL_S = 3600  # outlives the longest message; refreshed per claim


def claim(pipe: redis.client.Pipeline, claims_owner: str, task_id: str, worker_id: str) -> None:
    key = claims_key(claims_owner)
    pipe.hset(key, task_id, worker_id)
    pipe.expire(key, CLAIMS_TTL_S)


def release(client: redis.Redis | redis.client.Pipeline, claims_owner: str, task_id: str) -> Any:
    """Drop a claim; on a client, True if this call dropped it (so one api of many acts on it)."""
    return client.hdel(claims_key(claims_owner), task_id)


def holders(client: redis.Redis, claims_owner: str) -> dict[str, str]:
    """task id -> id of the worker running it, for the messages the api whose reply list is `claims_owner` waits for."""
    return {task.decode(): worker.decode() for task, worker in client.hgetall(claims_key(claims_owner)).items()}
