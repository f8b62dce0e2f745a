#!/usr/bin/env python3
"""What a tenant's per-call limits cost a call: the check (and release) of api.quotas, timed alone.

    PYTHONPATH=. python ops/bench_tenant_limits.py [--calls 5000]

Starts an embedded Redis on a free port and enters `TenantQuotas.call` `--calls` times in a row on one
event loop, as an api does for every call of a tenant: without limits (no Redis round trip), with
`rps=` (one script call), with `rps=` and `inflight=` (the script, then the lease's release before the
answer). Prints microseconds per call and the ratio to a bare Redis PING from the same client, i.e. to one
round trip. Limits are set high so that nothing is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis.asyncio

from api.quotas import TenantQuotas
from api.tenants import Tenant, TenantLimits
from tasks.broker import EmbeddedRedis
from tasks.link import RedisLink

CASES = {
    "no per-call limit": TenantLimits(),
    "rps=": TenantLimits(rps=1e6),
    "rps= inflight=": TenantLimits(rps=1e6, inflight=1_000_000),
}


async def per_call_us(limits: TenantQuotas, tenant: Tenant, calls: int) -> float:
    for _ in range(100):  # warm up: the loop's client, its connections, the script's SHA
        async with limits.call(tenant):
            pass
    started = time.perf_counter()
    for _ in range(calls):
        async with limits.call(tenant):
            pass
    return (time.perf_counter() - started) / calls * 1e6


async def ping_us(url: str, calls: int) -> float:
    client = redis.asyncio.Redis.from_url(url)
    await client.ping()
    started = time.perf_counter()
    for _ in range(calls):
        await client.ping()
    elapsed = time.perf_counter() - started
    await client.aclose()
    return elapsed / calls * 1e6


async def measure(url: str, calls: int) -> None:
    limits = TenantQuotas(url, RedisLink(url), default_timeout_s=30.0)
    ping = await ping_us(url, calls)
    print(f"{'case':<20} {'µs per call':>12} {'round trips (PING = 1)':>24}")
    print(f"{'PING':<20} {ping:>12.1f} {1:>24.2f}")
    for name, tenant_limits in CASES.items():
        cost = await per_call_us(limits, Tenant("bench", tenant_limits), calls)
        print(f"{name:<20} {cost:>12.1f} {cost / ping:>24.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    server = EmbeddedRedis()
    url = server.start()
    try:
        asyncio.run(measure(url, args.calls))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
