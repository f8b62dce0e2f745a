"""The schedule of job callbacks in Redis, shared by every api process: which jobs with a `callback_url` are
to be looked at when, and each one's delivery state.

`ovms:job-hooks` is a sorted set of job ids by the time they are due. An api process claims due jobs with a
Lua script that also moves them a lease into the future, so one api of many looks at each at a time; if it
dies holding one, the lease runs out and another claims it. A job not ended yet is due again a second
later, or at once when one of its chunks ends (the worker nudges it); an ended one is delivered under a
lock with a lease (SET NX PX: one attempt at a time, whoever claimed the job), and then dropped from the
set, or due again after a back-off. Each job's
delivery state (`ovms:job:<id>:callback`, a hash) says which end of the job is being told (`delivery`: 1,
then 2 after a retry ended it again, …), the attempts, the last error and `pending | delivered | failed`;
an api records an attempt only if that end is still the one being told (a retry may have moved on).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from tasks.routing import JOB_EVENTS_KEY, job_key

SCHEDULE_KEY = "ovms:job-hooks"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
HOOK_CHECK_S = 1.0  # how often the api that holds a job's callback looks whether it has ended
MAX_ERROR_CHARS = 300  # of an attempt's error, as the job's status shows it

# KEYS: schedule. ARGV: now, lease until, at most. The due jobs, now leased.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, job in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], job) end
return due
"""

# KEYS: schedule. ARGV: job, due, leased until. Only while the lease is still its score (ZADD's "%.17g" of it).
_LATER = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) >= tonumber(ARGV[3]) - 0.001 then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) end
"""

# KEYS: state, schedule, events.
# ARGV: job, delivery, state, attempts, error, at, next due ('' = done), event ('' = none).
_RECORD = """
if redis.call('HGET', KEYS[1], 'delivery') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'attempts', ARGV[4], 'error', ARGV[5], 'at', ARGV[6])
if ARGV[7] == '' then redis.call('ZREM', KEYS[2], ARGV[1]) else redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1]) end
if ARGV[8] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[8], 1) end
return 1
"""


# KEYS: lock. ARGV: token. Only its holder unlocks it (a lease that ran out may be another api's by now).
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Delivery:
    """Where one job's callback stands."""

    delivery: int  # which end of the job is being told (1, then 2 after a retry ended it again…)
    state: str  # PENDING, DELIVERED or FAILED
    attempts: int  # of this delivery
    error: str  # of its last attempt
    at: float | None  # its last attempt, time.time()

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "attempts": self.attempts, "last_error": self.error or None, "at": self.at}


def state_key(job_id: str) -> str:
    return job_key(job_id, "callback")


def arm(pipe: redis.client.Pipeline, job_id: str, due: float, ttl_s: int) -> None:
    """A job with a callback was submitted, or retried: its next end is to be told (from `due` on)."""
    key = state_key(job_id)
    pipe.hincrby(key, "delivery", 1)
    pipe.hset(key, mapping={"state": PENDING, "attempts": 0, "error": "", "at": ""})
    pipe.expire(key, ttl_s)
    pipe.zadd(SCHEDULE_KEY, {job_id: due})


def nudge(pipe: redis.client.Pipeline, job_id: str) -> None:
    """A chunk of the job ended: if it has a callback, look at it now rather than at its next check (a no-op
    for a job without one)."""
    pipe.zadd(SCHEDULE_KEY, {job_id: time.time()}, xx=True)


def lock(client: redis.Redis, job_id: str, lease_s: float) -> str | None:
    """The right to attempt a job's delivery now, for `lease_s` (a token to unlock it with), or None while
    another api holds it: a job nudged or claimed twice is still told by one api at a time."""
    token = uuid.uuid4().hex
    return token if client.set(_lock_key(job_id), token, nx=True, px=int(lease_s * 1000)) else None


def unlock(client: redis.Redis, job_id: str, token: str) -> None:
    client.eval(_UNLOCK, 1, _lock_key(job_id), token)


def _lock_key(job_id: str) -> str:
    return job_key(job_id, "callback-lock")


def claim(client: redis.Redis, lease_s: float, limit: int) -> tuple[list[str], float]:
    """Up to `limit` due jobs, each leased to the caller for `lease_s`, and until when."""
    now = time.time()
    leased = client.eval(_CLAIM, 1, SCHEDULE_KEY, now, now + lease_s, limit)
    return [job.decode() for job in leased], now + lease_s


def later(client: redis.Redis, job_id: str, delay_s: float, leased_until: float | None = None) -> None:
    """Look at a job again in `delay_s`. With `leased_until` (what `claim` leased it until): unless a chunk's
    end nudged it meanwhile, which made it due at once (a look that found it unfinished must not put that off)."""
    if leased_until is None:
        client.zadd(SCHEDULE_KEY, {job_id: time.time() + delay_s}, xx=True)
    else:
        client.eval(_LATER, 1, SCHEDULE_KEY, job_id, time.time() + delay_s, leased_until)


def drop(client: redis.Redis, job_id: str) -> None:
    """Nothing more to tell of a job (it expired, or has no callback)."""
    client.zrem(SCHEDULE_KEY, job_id)


def read(client: redis.Redis, job_id: str) -> Delivery | None:
    """A job's delivery state; None if it has none (no callback, or expired)."""
    fields = {key.decode(): value.decode() for key, value in client.hgetall(state_key(job_id)).items()}
    if "delivery" not in fields:
        return None
    at = fields.get("at", "")
    return Delivery(
        int(fields["delivery"]), fields.get("state", PENDING), int(fields.get("attempts") or 0),
        fields.get("error", ""), float(at) if at else None,
    )  # fmt: skip


def record(client: redis.Redis, job_id: str, attempt: Delivery, due_in_s: float | None, event: str) -> bool:
    """Record an attempt of delivery `attempt.delivery` (None `due_in_s`: no more attempts) and count `event` in
    the cluster-wide counts (if not ""); False if the job has moved on to another delivery meanwhile (a retry
    re-armed it): nothing is recorded then."""
    due = "" if due_in_s is None else str(time.time() + due_in_s)
    keys = (state_key(job_id), SCHEDULE_KEY, JOB_EVENTS_KEY)
    error = attempt.error[:MAX_ERROR_CHARS]
    args = (job_id, attempt.delivery, attempt.state, attempt.attempts, error, attempt.at or "", due, event)
    return bool(client.eval(_RECORD, len(keys), *keys, *args))
