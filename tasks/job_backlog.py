"""The server's job backlog: tensor bytes of job chunks not yet run, capped by `--job_backlog_mb`, and
the samples each tenant has queued, capped by its `job_samples=` (api.tenants).

Every chunk is an entry (its bytes, its job's deadline; with a tenant, its samples) from submission until
it ends (result stored, dropped, or failed); running totals are kept beside the entries by Lua scripts,
so that admitting a whole job is one atomic round trip whatever the number of apis. An entry whose chunk
never ends (its model was removed, its worker and every api died) drops out at its deadline: the totals
heal themselves.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import redis

ENTRIES = "ovms:job-backlog"  # zset: chunk task id -> its job's deadline
SIZES = "ovms:job-backlog:bytes"  # hash: chunk task id -> bytes
TOTAL = "ovms:job-backlog:total"  # sum of SIZES
TENANT_CHUNKS = "ovms:job-backlog:tenant"  # hash: chunk task id -> "<samples> <tenant>" (chunks with a tenant)
TENANT_SAMPLES = "ovms:job-backlog:tenant-samples"  # hash: tenant -> its chunks' samples
_KEYS = (ENTRIES, SIZES, TOTAL, TENANT_CHUNKS, TENANT_SAMPLES)

_FORGET = """
local function forget(task)
  local size = redis.call('HGET', KEYS[2], task)
  if size then
    redis.call('DECRBY', KEYS[3], size)
    redis.call('HDEL', KEYS[2], task)
  end
  local owed = redis.call('HGET', KEYS[4], task)
  if owed then
    local samples, tenant = string.match(owed, '^(%d+) (.+)$')
    if redis.call('HINCRBY', KEYS[5], tenant, -tonumber(samples)) <= 0 then redis.call('HDEL', KEYS[5], tenant) end
    redis.call('HDEL', KEYS[4], task)
  end
  redis.call('ZREM', KEYS[1], task)
end
"""

# ARGV: now, deadline, bytes wanted, cap, tenant ("": none), its samples wanted, its cap (0: none), then
# task id / bytes / samples triples. Returns {0, 0} if admitted, {1, bytes queued} when the backlog is
# full, {2, the tenant's samples queued} when the tenant's are.
_ADMIT = (
    _FORGET
    + """
for _, task in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do forget(task) end
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
if total + tonumber(ARGV[3]) > tonumber(ARGV[4]) then return {1, total} end
local tenant = ARGV[5]
if tenant ~= '' and tonumber(ARGV[7]) > 0 then
  local queued = tonumber(redis.call('HGET', KEYS[5], tenant) or '0')
  if queued + tonumber(ARGV[6]) > tonumber(ARGV[7]) then return {2, queued} end
end
for i = 8, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  if tenant ~= '' then redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 2] .. ' ' .. tenant) end
end
redis.call('INCRBY', KEYS[3], ARGV[3])
if tenant ~= '' then redis.call('HINCRBY', KEYS[5], tenant, ARGV[6]) end
return {0, 0}
"""
)

_RELEASE = _FORGET + "for _, task in ipairs(ARGV) do forget(task) end"


class Full(NamedTuple):
    """Why a job was not admitted: `limit` "bytes" (the server's backlog) or "samples" (the tenant's), and
    how many of them were queued already."""

    limit: str
    queued: int


def admit(
    client: redis.Redis,
    chunks: list[tuple[str, int, int]],
    deadline: float,
    cap_bytes: int,
    tenant: str = "",
    max_samples: int | None = None,
) -> Full | None:
    """Add the (task id, bytes, samples) chunks of one job if they fit under `cap_bytes` and, for a
    `tenant` with `max_samples`, under its cap of samples queued; else what is full (None when admitted)."""
    wanted = sum(size for _, size, _ in chunks)
    samples = sum(rows for _, _, rows in chunks)
    triples = [value for chunk in chunks for value in chunk]
    args = [time.time(), deadline, wanted, cap_bytes, tenant, samples, max_samples or 0, *triples]
    outcome, queued = client.eval(_ADMIT, len(_KEYS), *_KEYS, *args)
    return None if outcome == 0 else Full("bytes" if outcome == 1 else "samples", int(queued))


def tenant_samples(client: redis.Redis, tenant: str) -> int:
    """The samples of `tenant`'s job chunks not yet ended."""
    return int(client.hget(TENANT_SAMPLES, tenant) or 0)


def release(client: redis.Redis | redis.client.Pipeline, task_ids: list[str]) -> None:
    """The chunks ended (idempotent: a chunk counts once)."""
    if task_ids:
        client.eval(_RELEASE, len(_KEYS), *_KEYS, *task_ids)
