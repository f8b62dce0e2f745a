"""Tenants' per-call limits (api.tenants), held across every api process and host: they share Redis.

A call of a tenant with `rps=` or `inflight=` costs one Redis round trip before it is served, a Lua
script on the result backend's Redis (on the event loop that took the call: redis.asyncio, no thread):
- requests a second: GCRA (a token bucket kept as one timestamp, the theoretical arrival time, under
  RATE_KEY): `rps=N` admits N a second on average, bursts of up to N at once (max(N, 1));
- requests in flight: a lease per call in a sorted set under INFLIGHT_KEY, scored by when it expires
  (the call's deadline, plus LEASE_GRACE_S). Leases past it are dropped before each count, so the
  leases of an api that crashed free themselves; a call drops its own once its answer is ready, before
  the answer's first byte is sent (one more round trip), so that a client's next call never finds it.
The script checks both, in Redis's clock, and takes neither unless both admit the call. Beyond a limit,
TenantOverLimit: 429 / RESOURCE_EXHAUSTED with when to retry. Tenants without such limits, and calls
without tenants, cost nothing here. While Redis is unreachable nothing is checked: the call goes on to
what answers it (UNAVAILABLE / 503 for anything that needs Redis).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import redis
import redis.asyncio

from api.tenants import CALLER, Tenant
from inference.errors import TenantOverLimit
from tasks.connections import async_redis_client
from tasks.link import REDIS_TIMEOUT_S, RedisLink

log = logging.getLogger("serving")

RATE_KEY = "ovms:tenant:{}:rate"  # string: the theoretical arrival time, microseconds (Redis clock)
INFLIGHT_KEY = "ovms:tenant:{}:inflight"  # sorted set: lease id -> when it expires, microseconds
LEASE_GRACE_S = 5.0  # a lease outlives its call's deadline by this: the answer is being sent
INFLIGHT_RETRY_AFTER_S = 1  # a call in flight usually ends within a second

# Numbers are written with %.0f: Redis turns a Lua number into text with 14 digits, and times in µs have 16.
# KEYS: rate key, in-flight key. ARGV: emission interval (µs; 0: no rate limit), burst tolerance (µs),
# in-flight limit (0: none), lease id, lease lifetime (µs). Returns {0, 0} when admitted, {1, µs to
# wait} beyond the rate, {2, 0} beyond the calls in flight.
_ACQUIRE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local arrival = now
if interval > 0 then
  arrival = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  local wait = arrival - tonumber(ARGV[2]) - now
  if wait > 0 then return {1, wait} end
end
local limit = tonumber(ARGV[3])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= limit then return {2, 0} end
  local lifetime = tonumber(ARGV[5])
  redis.call('ZADD', KEYS[2], string.format('%.0f', now + lifetime), ARGV[4])
  if redis.call('PTTL', KEYS[2]) < lifetime / 1000 then
    redis.call('PEXPIRE', KEYS[2], math.ceil(lifetime / 1000))
  end
end
if interval > 0 then
  local expires_ms = math.ceil((arrival + interval - now) / 1000) + 1
  redis.call('SET', KEYS[1], string.format('%.0f', arrival + interval), 'PX', expires_ms)
end
return {0, 0}
"""


class TenantQuotas:
    """Checks and holds the per-call limits of the tenants, on the event loops that take calls."""

    def __init__(
        self,
        url: str,
        link: RedisLink,
        default_timeout_s: float,
        refused: Callable[[TenantOverLimit], None] = lambda error: None,
        lease_grace_s: float = LEASE_GRACE_S,
    ) -> None:
        """`url`: the Redis shared by the api processes (the result backend); `default_timeout_s`: the
        deadline of a call without one (--request_timeout_s); `refused`: told of every refusal (metrics);
        `lease_grace_s`: how long a lease outlives its call's deadline."""
        self._url = url
        self._link = link
        self._default_timeout_s = default_timeout_s
        self._refused = refused
        self._lease_grace_s = lease_grace_s
        self._scripts: dict[asyncio.AbstractEventLoop, redis.commands.core.AsyncScript] = {}

    @asynccontextmanager
    async def call(self, tenant: Tenant, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Serve what runs within as `tenant`'s call (api.tenants.CALLER), within its limits until it ends:
        TenantOverLimit on entering beyond them. `timeout_s`: the call's own deadline, if it has one."""
        lease = await self._acquire(tenant, timeout_s) if tenant.limits.per_call else None
        token = CALLER.set(tenant)
        try:
            yield
        finally:
            CALLER.reset(token)
            if lease:  # before the answer leaves (the frontends leave the scope then): a client that
                await self._release(tenant, lease)  # sends its next call at once finds its lease gone

    async def _acquire(self, tenant: Tenant, timeout_s: float | None) -> str | None:
        """A lease id when the tenant has an in-flight limit (else ""), once the call is admitted; None
        when nothing could be checked (Redis unreachable)."""
        if not self._link.up:
            return None
        limits = tenant.limits
        interval_us = round(1e6 / limits.rps) if limits.rps else 0
        burst = max(math.floor(limits.rps or 0), 1)
        lease = uuid.uuid4().hex if limits.inflight else ""
        lifetime_us = round(((timeout_s or self._default_timeout_s) + self._lease_grace_s) * 1e6)
        keys = [RATE_KEY.format(tenant.name), INFLIGHT_KEY.format(tenant.name)]
        args = [interval_us, (burst - 1) * interval_us, limits.inflight or 0, lease, lifetime_us]
        try:
            outcome, wait_us = await self._script()(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            raise self._link.failed(exc) from None
        if outcome == 0:
            return lease
        if outcome == 1:
            error = TenantOverLimit(tenant.name, "rps", limits.rps or 0, math.ceil(wait_us / 1e6))
        else:
            error = TenantOverLimit(tenant.name, "inflight", limits.inflight or 0, INFLIGHT_RETRY_AFTER_S)
        self._refused(error)
        raise error

    async def _release(self, tenant: Tenant, lease: str) -> None:
        try:
            await self._script().registered_client.zrem(INFLIGHT_KEY.format(tenant.name), lease)
        except (redis.RedisError, OSError) as exc:  # the lease expires at its call's deadline all the same
            log.warning("Could not release a call of tenant %s in flight (it expires by itself): %s", tenant.name, exc)

    def _script(self) -> redis.commands.core.AsyncScript:
        """The script on a client of this event loop's own (a redis.asyncio client serves one loop)."""
        loop = asyncio.get_running_loop()
        script = self._scripts.get(loop)
        if script is None:
            client = async_redis_client(
                self._url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
            )
            script = self._scripts[loop] = client.register_script(_ACQUIRE)
        return script
