"""The server's job backlog: tensor bytes of job chunks not yet run, capped by `--job_backlog_mb`.

Every chunk is an entry (its bytes, its job's deadline) from submission until it ends (result stored,
dropped, or failed); a running total is kept beside the entries by Lua scripts, so that admitting a
whole job is one atomic round trip whatever the number of apis. An entry whose chunk never ends (its
model was removed, its worker and every api died) drops out at its deadline: the total heals itself.
"""

from __future__ import annotations

import time

import redis

ENTRIES = "ovms:job-backlog"  # zset: chunk task id -> its job's deadline
SIZES = "ovms:job-backlog:bytes"  # hash: chunk task id -> bytes
TOTAL = "ovms:job-backlog:total"  # sum of SIZES

_FORGET = """
local function forget(task)
  local size = redis.call('HGET', KEYS[2], task)
  if size then
    redis.call('DECRBY', KEYS[3], size)
    redis.call('HDEL', KEYS[2], task)
  end
  redis.call('ZREM', KEYS[1], task)
end
"""

# ARGV: now, deadline, bytes wanted, cap, then task id / bytes pairs. Returns -1 if admitted, else the total.
_ADMIT = (
    _FORGET
    + """
for _, task in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do forget(task) end
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
if total + tonumber(ARGV[3]) > tonumber(ARGV[4]) then return total end
for i = 5, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('INCRBY', KEYS[3], ARGV[3])
return -1
"""
)

_RELEASE = _FORGET + "for _, task in ipairs(ARGV) do forget(task) end"


def admit(client: redis.Redis, chunks: list[tuple[str, int]], deadline: float, cap_bytes: int) -> int | None:
    """Add the (task id, bytes) chunks of one job if they fit under `cap_bytes`; else the bytes already
    queued (None when admitted)."""
    wanted = sum(size for _, size in chunks)
    pairs = [value for task, size in chunks for value in (task, size)]
    total = client.eval(_ADMIT, 3, ENTRIES, SIZES, TOTAL, time.time(), deadline, wanted, cap_bytes, *pairs)
    return None if total == -1 else int(total)


def release(client: redis.Redis | redis.client.Pipeline, task_ids: list[str]) -> None:
    """The chunks ended (idempotent: a chunk counts once)."""
    if task_ids:
        client.eval(_RELEASE, 3, ENTRIES, SIZES, TOTAL, *task_ids)
