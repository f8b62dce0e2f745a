"""Tenants: who a call is from, as the bearer token file says, with the tenant's limits and its weight.

A line of `--auth_token_file` is a token, optionally followed by `key=value` fields (tokens hold no
whitespace): `tenant=NAME`, `rps=N` (requests a second, a number), `inflight=N` (requests in flight),
`job_samples=N` (samples of the tenant's unfinished jobs), `weight=N` (its share of a model's capacity
under saturation, 1 by default), `max_priority=N` (the highest priority level its requests may ask for, 1 to 3;
by default a model's default level: a tenant cannot raise its requests above its neighbours' and so take more
than its weight's share, unless the file lets it). A token without `tenant=` belongs to the tenant `default`. Several
tokens may name one tenant: limits and weight are the tenant's, and a key given on several of its lines
must have the same value there. Blank lines and `#` comments are ignored.

An error names the file and the line, never a token: nothing of a line is quoted but the keys this
module knows and tenant names.

The tenant of the current call is kept in CALLER (a ContextVar) by whatever accepted its token (api.auth:
the gRPC interceptor, the REST limits in front of the app), from the call's start until it is answered;
the data plane reads it there when it builds a request (InferenceRequest.tenant).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

from inference.priorities import PRIORITY_LEVELS

DEFAULT_TENANT = "default"  # the tenant of a token that names none
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a metric label and part of a Redis key
MAX_WEIGHT = 1000


@dataclass(frozen=True)
class TenantLimits:
    """What a tenant may use at once, across every api process (api.quotas); None: no limit."""

    rps: float | None = None
    inflight: int | None = None
    job_samples: int | None = None

    @property
    def per_call(self) -> bool:
        """Whether every call of the tenant is checked (a Redis round trip): a rate or in-flight limit."""
        return self.rps is not None or self.inflight is not None


@dataclass(frozen=True)
class Tenant:
    name: str  # "": no tenant (no token file)
    limits: TenantLimits = TenantLimits()
    weight: int = 1
    max_priority: int = 0  # the highest level it may ask for; 0: a model's default level


NO_TENANT = Tenant("")
CALLER: ContextVar[Tenant] = ContextVar("caller", default=NO_TENANT)


def current_tenant() -> Tenant:
    """The tenant of the call being served (NO_TENANT without a token file)."""
    return CALLER.get()


# What a call runs within, from its start until it is answered: as its tenant's (CALLER), and with api.quotas
# within the tenant's limits (a ServingError on entering refuses the call). The float: the seconds left
# before the call's deadline, if it has one.
TenantScope = Callable[[Tenant, float | None], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def as_caller(tenant: Tenant, _timeout_s: float | None = None) -> AsyncIterator[None]:
    """Serve what runs within as `tenant`'s, without checking its limits (api.quotas.TenantQuotas.call
    checks them too)."""
    token = CALLER.set(tenant)
    try:
        yield
    finally:
        CALLER.reset(token)


@dataclass(frozen=True)
class TokenFile:
    tokens: list[tuple[str, str]]  # (token, tenant name), in the file's order
    tenants: dict[str, Tenant]

    @property
    def weights(self) -> Mapping[str, int]:
        """Each tenant's weight in the fair share of a model's capacity (a tenant not named: 1)."""
        return MappingProxyType({name: tenant.weight for name, tenant in self.tenants.items()})

    @property
    def best_levels(self) -> Mapping[str, int]:
        """Each tenant's highest priority level (0: a model's default level)."""
        return MappingProxyType({name: tenant.max_priority for name, tenant in self.tenants.items()})


MIN_RPS, MAX_RPS = 0.001, 1e6  # one call in ~17 minutes .. a million a second: what Redis's key expiries can hold


def _rate(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not MIN_RPS <= value <= MAX_RPS:
        raise ValueError
    return value


def _positive_integer(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError
    return int(text)


def _weight(text: str) -> int:
    value = _positive_integer(text)
    if value > MAX_WEIGHT:
        raise ValueError
    return value


def _level(text: str) -> int:
    value = _positive_integer(text)
    if value > PRIORITY_LEVELS:
        raise ValueError
    return value


def _tenant_name(text: str) -> str:
    if not TENANT_NAME.fullmatch(text):
        raise ValueError
    return text


# key -> (how its value is read, what it must be)
_KEYS: dict[str, tuple[Callable[[str], Any], str]] = {
    "tenant": (_tenant_name, "1 to 64 letters, digits, '_', '.' or '-', beginning with a letter or digit"),
    "rps": (_rate, f"a number of requests a second from {MIN_RPS:g} to {MAX_RPS:g}"),
    "inflight": (_positive_integer, "a whole number of requests above 0"),
    "job_samples": (_positive_integer, "a whole number of samples above 0"),
    "weight": (_weight, f"a whole number from 1 to {MAX_WEIGHT}"),
    "max_priority": (_level, f"a priority level from 1 (highest) to {PRIORITY_LEVELS}"),
}
_LIMITS = tuple(field.name for field in fields(TenantLimits))


def parse_token_file(text: str, path: str) -> TokenFile:
    """The tokens and tenants of a token file's text; ValueError naming `path` and the line otherwise."""
    tokens: list[tuple[str, str]] = []
    lines_of: dict[str, int] = {}  # token -> the line that gave it
    given: dict[str, dict[str, tuple[Any, int]]] = {}  # tenant -> key -> (value, line number)
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        where = f"auth_token_file {path} line {number}"
        key, equals, _ = words[0].partition("=")
        if equals and key in _KEYS:  # a guessable "tenant=acme" must never become a token
            raise ValueError(f"{where}: the line begins with {key}=, not with its token (TOKEN [key=value ...])")
        if words[0] in lines_of:
            raise ValueError(f"{where}: the token of line {lines_of[words[0]]} again (a token is given once)")
        lines_of[words[0]] = number
        values = _fields(words[1:], where)
        tenant = values.pop("tenant", DEFAULT_TENANT)
        keys = given.setdefault(tenant, {})
        for key, value in values.items():
            if key in keys and keys[key][0] != value:
                first = keys[key][1]
                raise ValueError(
                    f"auth_token_file {path} line {number}: tenant {tenant}'s {key}={value:g} differs from "
                    f"{key}={keys[key][0]:g} on line {first} (a tenant's limits and weight are given once)"
                )
            keys.setdefault(key, (value, number))
        tokens.append((words[0], tenant))
    if not tokens:
        raise ValueError(f"auth_token_file {path} holds no token")
    tenants = {}
    for name, keys in given.items():
        limits = TenantLimits(**{key: keys[key][0] for key in _LIMITS if key in keys})
        scheduling = {key: keys[key][0] for key in ("weight", "max_priority") if key in keys}
        tenants[name] = replace(Tenant(name, limits), **scheduling)
    return TokenFile(tokens, tenants)


def _fields(words: list[str], where: str) -> dict[str, Any]:
    """The `key=value` fields after a line's token. Errors quote no field: a stray space in a token
    would make part of it a field."""
    values: dict[str, Any] = {}
    for position, word in enumerate(words, start=2):
        key, equals, text = word.partition("=")
        if not equals or key not in _KEYS:
            raise ValueError(
                f"{where}: field {position} is not one of {', '.join(f'{k}=' for k in _KEYS)} "
                "(a token holds no space; the fields after it are key=value)"
            )
        if key in values:
            raise ValueError(f"{where}: {key}= is given twice")
        read, expected = _KEYS[key]
        try:
            values[key] = read(text)
        except ValueError:
            raise ValueError(f"{where}: {key}= must be {expected}") from None
    return values


def read_token_file(path: str) -> TokenFile:
    with open(path, encoding="utf-8-sig") as handle:  # a byte-order mark (editors on Windows write one) is no token
        return parse_token_file(handle.read(), path)
