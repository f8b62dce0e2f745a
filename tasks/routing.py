"""Where things live in Redis: queue names per device and model, and the keys we own."""

from __future__ import annotations

import re
import secrets
import socket

from kombu.transport.redis import Channel

from inference.priorities import PRIORITY_LEVELS

PREFIX = "ovms"
PREDICT_TASK = "ovms.predict"
REPLY_PREFIX = f"{PREFIX}:reply:"
WORKER_PREFIX = f"{PREFIX}:worker:"
CATALOG_KEY = f"{PREFIX}:catalog"
TAKEN_INFIX = ":taken:"
JOB_PREFIX = f"{PREFIX}:job:"
JOB_EVENTS_KEY = f"{PREFIX}:job-events"  # hash of cluster-wide counts: dead letters, retries, callbacks (/metrics)


def queue_for(device: str, model: str) -> str:
    """Each model has its own queue on its device, so workers of that device share its load."""
    return f"{PREFIX}.{_safe(device)}.{_safe(model)}"


def priority_queue(queue: str, level: int) -> str:
    """The Redis list of a queue's messages of a priority level, as kombu's Redis transport names it: kombu
    emulates priorities with a list per step of `priority_steps` ([0, 3, 6, 9]), the queue's own name for
    step 0 and `<queue>\\x06\\x16<step>` for the others, and a worker's BRPOP names them in that order, so a
    lower step is served first. Level 1 is step 0 (the queue itself), level 2 step 3, level 3 step 6."""
    step = message_priority(level)
    return f"{queue}{Channel.sep}{step}" if step else queue


def priority_queues(queue: str) -> list[str]:
    """Every list of a queue's messages, in the order a worker serves them."""
    return [priority_queue(queue, level) for level in range(1, PRIORITY_LEVELS + 1)]


def message_priority(level: int) -> int:
    """The `properties.priority` of a message of a level (kombu reads it to choose the list)."""
    return Channel.priority_steps[level - 1]


def job_queue_for(queue: str) -> str:
    """The list of a model's async job chunks: not a Celery queue, a worker takes them itself when its
    predicts leave room (tasks.job_feeder)."""
    return f"{PREFIX}:jobq:{queue}"


def job_key(job_id: str, part: str = "") -> str:
    """A job's keys, all under one prefix: its record (tasks.job_records) and, with `part`, what else it owns
    (its stop key, dead letters, callback state: `ovms:job:<id>:<part>`)."""
    return f"{JOB_PREFIX}{job_id}:{part}" if part else f"{JOB_PREFIX}{job_id}"


def job_taken_key(job_queue: str, worker_id: str) -> str:
    """The list of the chunks of `job_queue` that a worker has taken and not finished."""
    return f"{job_queue}{TAKEN_INFIX}{worker_id}"


def payload_key(task_id: str) -> str:
    """The claim-check key holding a task's raw tensor bytes."""
    return f"{PREFIX}:in:{task_id}"


def reply_key(api_id: str) -> str:
    return f"{REPLY_PREFIX}{api_id}"


def claims_key(claims_owner: str) -> str:
    """The hash of which worker took each in-flight message of the api whose reply list is `claims_owner`."""
    return f"{claims_owner}:claims"


def control_key(worker_id: str) -> str:
    """The list a worker's watcher blocks on for reload requests."""
    return f"{PREFIX}:control:{worker_id}"


def worker_name(device: str, pid: int) -> str:
    """A worker's id: its device, host and process, and a random tag of this start, e.g.
    GPU-node7-4121-3fa9c1. The tag tells a process restarted on the same host under the same pid (a
    container restart: PID 1 again) from the one before, so that everything keyed by the id (heartbeat,
    claimed predicts, taken job chunks) belongs to one process: the old one's are recovered as lost."""
    return f"{worker_prefix(device, pid)}{secrets.token_hex(3)}"


def worker_prefix(device: str, pid: int) -> str:
    """How the id of the worker started as process `pid` on this host begins."""
    return f"{device}-{socket.gethostname()}-{pid}-"


def worker_key(worker_id: str) -> str:
    return f"{WORKER_PREFIX}{worker_id}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", text)
