"""Api side of `POST /v1/config/reload`: ask every live worker to re-read its configuration now."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import redis

from inference.errors import DeadlineExceeded, Unavailable
from tasks.link import blocking_pop
from tasks.routing import PREFIX, control_key

RELOAD_TIMEOUT_S = 120.0  # loading new models can take a while


@dataclass(frozen=True)
class ReloadOutcome:
    changed: bool  # some worker loaded, unloaded or reloaded something
    errors: list[str]  # workers that refused the configuration, with their reasons


def request_reload(client: redis.Redis, worker_ids: list[str], timeout_s: float = RELOAD_TIMEOUT_S) -> ReloadOutcome:
    """Send a reload request to each worker's control list and collect one answer from each."""
    if not worker_ids:
        raise Unavailable("No live worker to reload")
    reply_to = f"{PREFIX}:control-reply:{uuid.uuid4().hex}"
    with client.pipeline(transaction=False) as pipe:
        for worker_id in worker_ids:
            pipe.rpush(control_key(worker_id), json.dumps({"reply_to": reply_to}))
        pipe.execute()
    answers = []
    deadline = time.monotonic() + timeout_s
    while len(answers) < len(worker_ids):
        item = blocking_pop(client, reply_to, deadline - time.monotonic())
        if item is None:
            raise DeadlineExceeded(f"{len(worker_ids) - len(answers)} worker(s) did not answer the reload in time")
        answers.append(json.loads(item[1]))
    client.delete(reply_to)
    return ReloadOutcome(
        changed=any(answer["changed"] for answer in answers),
        errors=[answer["error"] for answer in answers if answer["error"]],
    )
