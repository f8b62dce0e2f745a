"""How many messages wait in model queues: a queue's messages are in one Redis list per priority level
(tasks.routing.priority_queue), so its depth is their lengths summed."""

from __future__ import annotations

import redis

from tasks.routing import priority_queues


def queue_depths(broker: redis.Redis, queues: list[str]) -> list[int]:
    """The messages waiting in each of `queues`, in one round trip."""
    with broker.pipeline(transaction=False) as pipe:
        for queue in queues:
            for listed in priority_queues(queue):
                pipe.llen(listed)
        lengths = pipe.execute()
    per_queue = len(lengths) // len(queues) if queues else 0
    return [sum(lengths[index * per_queue : (index + 1) * per_queue]) for index in range(len(queues))]
