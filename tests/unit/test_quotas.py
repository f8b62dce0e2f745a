"""Tenants' requests a second and in flight (api.quotas) on a real Redis: the Lua script's GCRA and
leases, shared by every api process (here: several TenantQuotas on one Redis, as several apis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
import redis

from api.quotas import INFLIGHT_KEY, RATE_KEY, TenantQuotas
from api.tenants import NO_TENANT, Tenant, TenantLimits, current_tenant
from inference.errors import TenantOverLimit
from tasks.broker import free_port
from tasks.link import RedisLink
from tests.support.sentinels import PASSWORD, SentinelCluster, missing_binaries


def quotas(url: str, refused: list[TenantOverLimit] | None = None, **options: float) -> TenantQuotas:
    sink = refused if refused is not None else []
    return TenantQuotas(url, RedisLink(url), default_timeout_s=30.0, refused=sink.append, **options)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


async def admitted(limits: TenantQuotas, tenant: Tenant, count: int) -> int:
    """How many of `count` calls in a row, each answered at once, are admitted."""
    passed = 0
    for _ in range(count):
        try:
            async with limits.call(tenant):
                passed += 1
        except TenantOverLimit:
            pass
    return passed


def test_a_rate_admits_its_burst_then_one_call_per_interval(store: redis.Redis, core_redis_url: str) -> None:
    acme = Tenant("acme", TenantLimits(rps=5))
    refused: list[TenantOverLimit] = []

    async def test() -> None:
        limits = quotas(core_redis_url, refused)
        assert await admitted(limits, acme, 5) == 5, "a second's worth at once"
        with pytest.raises(TenantOverLimit) as over:
            async with limits.call(acme):
                pass
        assert over.value.message == "tenant acme is over its 5 requests/s; retry after 1 s"
        assert (over.value.limit, over.value.retry_after_s, over.value.grpc_code) == ("rps", 1, "RESOURCE_EXHAUSTED")
        await asyncio.sleep(0.25)  # one interval (200 ms) later
        assert await admitted(limits, acme, 1) == 1

    run(test)
    assert [error.limit for error in refused] == ["rps"]
    assert store.get(RATE_KEY.format("acme")).isdigit(), "microseconds written whole, not as 1.7e+15"
    assert 0 < store.pttl(RATE_KEY.format("acme")) <= 1200, "the key lives as long as the burst it remembers"


def test_retry_after_is_the_whole_seconds_until_the_next_call_fits(store: redis.Redis, core_redis_url: str) -> None:
    slow = Tenant("slow", TenantLimits(rps=0.1))  # one call every 10 s

    async def test() -> None:
        limits = quotas(core_redis_url)
        assert await admitted(limits, slow, 1) == 1
        with pytest.raises(TenantOverLimit, match=r"over its 0\.1 requests/s") as over:
            async with limits.call(slow):
                pass
        assert over.value.retry_after_s in (9, 10)

    run(test)


def test_the_rate_is_shared_by_every_api_and_each_tenant_has_its_own(store: redis.Redis, core_redis_url: str) -> None:
    acme, beta = Tenant("acme", TenantLimits(rps=4)), Tenant("beta", TenantLimits(rps=4))

    async def test() -> None:
        one, two = quotas(core_redis_url), quotas(core_redis_url)
        assert await admitted(one, acme, 3) + await admitted(two, acme, 3) == 4
        assert await admitted(two, beta, 4) == 4

    run(test)


def test_calls_in_flight_are_leases_released_when_answered(store: redis.Redis, core_redis_url: str) -> None:
    acme = Tenant("acme", TenantLimits(inflight=2))
    key = INFLIGHT_KEY.format("acme")

    async def test() -> None:
        limits, other_api = quotas(core_redis_url), quotas(core_redis_url)
        async with limits.call(acme), other_api.call(acme):
            assert current_tenant() == acme
            assert store.zcard(key) == 2
            with pytest.raises(TenantOverLimit) as over:
                async with limits.call(acme):
                    pass
            assert over.value.message == "tenant acme is over its 2 requests in flight; retry after 1 s"
        assert current_tenant() == NO_TENANT
        for _ in range(100):  # released by a task of their own, after the answer
            if not store.zcard(key):
                break
            await asyncio.sleep(0.01)
        assert store.zcard(key) == 0
        assert await admitted(limits, acme, 3) == 3, "one at a time: each released before the next"

    run(test)


def test_leases_of_a_call_never_answered_expire_at_its_deadline(store: redis.Redis, core_redis_url: str) -> None:
    """An api that dies holding leases leaks nothing: each lease ends at its call's deadline + grace."""
    acme = Tenant("acme", TenantLimits(inflight=1))

    async def test() -> None:
        crashed = quotas(core_redis_url, lease_grace_s=0.1)
        assert await crashed._acquire(acme, 0.2)  # and never released, as by an api killed with the call in flight
        assert 0 < store.pttl(INFLIGHT_KEY.format("acme")) <= 301, "the set expires with its last lease"
        survivor = quotas(core_redis_url)
        assert await admitted(survivor, acme, 1) == 0
        expiry = store.zrange(INFLIGHT_KEY.format("acme"), 0, 0, withscores=True)[0][1] / 1e6
        server_now = store.time()[0] + store.time()[1] / 1e6
        assert 0.2 < expiry - server_now <= 0.3
        await asyncio.sleep(0.35)
        assert await admitted(survivor, acme, 1) == 1

    run(test)


def test_a_refused_call_takes_neither_a_lease_nor_a_place_in_the_rate(store: redis.Redis, core_redis_url: str) -> None:
    acme = Tenant("acme", TenantLimits(rps=2, inflight=1))

    async def test() -> None:
        limits = quotas(core_redis_url)
        async with limits.call(acme):
            for _ in range(3):
                with pytest.raises(TenantOverLimit, match="in flight"):
                    async with limits.call(acme):
                        pass
        await asyncio.sleep(0.05)
        assert await admitted(limits, acme, 1) == 1, "the refusals used none of the burst of 2"

    run(test)


def test_tenants_without_per_call_limits_cost_no_redis_call(store: redis.Redis, core_redis_url: str) -> None:
    async def test() -> None:
        limits = quotas(core_redis_url)
        for tenant in (NO_TENANT, Tenant("jobs-only", TenantLimits(job_samples=10))):
            async with limits.call(tenant):
                assert current_tenant() == tenant

    store.config_resetstat()
    run(test)
    ran = {name.partition("|")[0] for name in store.info("commandstats")}
    assert ran <= {"cmdstat_config", "cmdstat_info"}, "nothing but the test's own commands"


def test_while_redis_is_unreachable_nothing_is_checked() -> None:
    """The call goes on to what answers it: a route that needs Redis is UNAVAILABLE there."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    link = RedisLink(dead)
    link.start()
    try:
        assert not link.up
        limits = TenantQuotas(dead, link, default_timeout_s=30.0)

        async def test() -> None:
            started = time.monotonic()
            async with limits.call(Tenant("acme", TenantLimits(rps=1, inflight=1))):
                pass
            assert time.monotonic() - started < 0.5

        run(test)
    finally:
        link.stop()


@pytest.mark.skipif(missing_binaries() is not None, reason=missing_binaries() or "")
def test_limits_are_kept_on_the_master_a_sentinel_url_names() -> None:
    cluster = SentinelCluster().start()
    try:
        acme = Tenant("acme", TenantLimits(rps=2))

        async def test() -> None:
            assert await admitted(quotas(cluster.url), acme, 3) == 2

        run(test)
        master = redis.Redis(port=cluster.master_port(), password=PASSWORD)
        assert master.exists(RATE_KEY.format("acme"))
        master.close()
    finally:
        cluster.stop()
