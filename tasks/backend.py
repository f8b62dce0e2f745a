"""A Celery result backend that hands synchronous results straight to the waiting api process.

A predict task carries `reply_to` = that api process's reply list; its result meta is pushed there
in one pipelined round trip (LPUSH + EXPIRE, the claim-check payload deleted and the worker's claim
released), and the api's one listener routes it to the waiting requests. Other results (async job
chunks, which the job feeders store here) are stored the standard Redis-backend way, so AsyncResult,
groups and Flower work as usual.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend, SentinelBackend

from tasks.claims import release
from tasks.routing import REPLY_PREFIX, payload_key

REPLY_TTL_S = 60  # a reply list outlives its api process by at most this long


class ReplyBackend(RedisBackend):
    def on_task_call(self, producer: Any, task_id: str) -> None:
        """No pub/sub subscription per published task: replies arrive on the api's reply list, and
        async jobs are polled by key."""

    def _store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        reply_to = getattr(request, "reply_to", None)
        if not reply_to or not str(reply_to).startswith(REPLY_PREFIX):
            stored = super()._store_result(task_id, result, state, traceback, request, **kwargs)
            self.client.delete(payload_key(task_id))
            return stored
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = task_id
        with self.client.pipeline(transaction=False) as pipe:
            pipe.lpush(reply_to, self.encode(meta))
            pipe.expire(reply_to, REPLY_TTL_S)
            pipe.delete(payload_key(task_id))
            release(pipe, reply_to, task_id)
            pipe.execute()
        return result


class SentinelReplyBackend(ReplyBackend, SentinelBackend):
    """The same, on a master found through Redis Sentinel (a sentinel:// result backend, see tasks.sentinel)."""
