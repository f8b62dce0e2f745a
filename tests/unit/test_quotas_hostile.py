"""Hostile token files and limits (api.tenants, api.quotas on a real Redis), found by attacking them: a line
that forgot its token (its "tenant=acme" must never become a guessable token), one token given to two tenants,
a byte-order mark, a rate too small for Redis's expiries, and tenants whose names differ only a little."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from api.quotas import TenantQuotas
from api.tenants import MIN_RPS, Tenant, TenantLimits, parse_token_file, read_token_file
from inference.errors import TenantOverLimit
from tasks.link import RedisLink


def test_a_line_without_its_token_is_refused() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_token_file("real-token-1 tenant=beta\ntenant=acme rps=5\n", "tokens")


def test_a_token_given_to_two_tenants_is_refused() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_token_file("shared-tok tenant=free\nshared-tok tenant=capped rps=1\n", "tokens")


def test_a_token_file_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# tenants\ntok-a tenant=acme\n", encoding="utf-8-sig")
    assert read_token_file(str(path)).tokens == [("tok-a", "acme")]


def test_a_rate_too_small_for_redis_is_refused_and_the_smallest_admits_its_first_call(core_redis_url: str) -> None:
    """rps=1e-17 once passed the file check, and its key's expiry overflowed Redis's SET PX: every call of the
    tenant was 503 "Redis unavailable", blaming a healthy Redis."""
    with pytest.raises(ValueError, match=r"line 1: rps= must be a number of requests a second from 0\.001"):
        parse_token_file("tok tenant=glacial rps=1e-17\n", "tokens")
    glacial = parse_token_file(f"tok tenant=glacial rps={MIN_RPS}\n", "tokens").tenants["glacial"]

    async def first_two() -> list[str]:
        limits = TenantQuotas(core_redis_url, RedisLink(core_redis_url), default_timeout_s=30.0)
        outcomes = []
        for _ in range(2):
            try:
                async with limits.call(glacial):
                    outcomes.append("admitted")
            except TenantOverLimit:
                outcomes.append("over")
        return outcomes

    assert asyncio.run(first_two()) == ["admitted", "over"]


def test_limits_of_one_tenant_never_touch_another_s_keys(core_redis_url: str) -> None:
    """Names that differ only in case or by a prefix are different tenants."""
    names = ["acme", "Acme", "acme.x", "acme-"]

    async def test() -> list[bool]:
        limits = TenantQuotas(core_redis_url, RedisLink(core_redis_url), default_timeout_s=30.0)
        admitted = []
        for name in names:
            try:
                async with limits.call(Tenant(name, TenantLimits(rps=1))):
                    admitted.append(True)
            except TenantOverLimit:
                admitted.append(False)
        return admitted

    assert asyncio.run(test()) == [True] * len(names)
