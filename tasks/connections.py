"""Reaching Redis: TLS (`rediss://`) settings for Celery, passwords kept out of logs, and a start-up
check that fails at once with the reason instead of retrying forever.

A URL is `redis://[:password@]host:port/db` or `rediss://[:password@]host:port/db`, the latter with
optional query parameters `ssl_ca_certs` (PEM of the CA that signed the server's certificate; default:
the system's CAs), `ssl_cert_reqs` (`required` by default), and `ssl_certfile` + `ssl_keyfile` (a client
certificate, for a Redis with `tls-auth-clients yes`). redis-py reads them from the URL itself; Celery's
broker (kombu) needs them as `broker_use_ssl`, which `ssl_options` derives from the same URL.
A `sentinel://` URL names Redis Sentinels and the master they monitor (see tasks.sentinel).

Every Redis client of ours is made by `redis_client`, from any of these URL forms.
"""

from __future__ import annotations

import re
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
import redis.asyncio
import redis.sentinel

from tasks.sentinel import SentinelUrl, is_sentinel

_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
CHECK_TIMEOUT_S = 5.0
_NEXT_PART = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")  # where a multi-host URL's next part begins
_SENTINEL_PASSWORD = re.compile(r"(sentinel_password=)[^&#]*")
_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*):.*@")


def ssl_options(url: str) -> dict[str, Any] | None:
    """Celery's `broker_use_ssl` / `redis_backend_use_ssl` for a rediss:// URL; None for redis://."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    reqs = query.get("ssl_cert_reqs", "required")
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be required, optional or none, not {reqs!r}")
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[reqs]}
    options.update({key: query[key] for key in _FILES if key in query})
    return options


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A redis-py client for a redis://, rediss:// or sentinel:// URL, with `options` (timeouts, command
    packer) on its connections; a sentinel:// one follows the master through failovers."""
    if is_sentinel(url):
        return SentinelUrl.parse(url).client(**options)
    return redis.Redis.from_url(url, **options)


def async_redis_client(url: str, **options: Any) -> redis.asyncio.Redis:
    """redis_client(), for an event loop (redis.asyncio): use it on one loop only."""
    if is_sentinel(url):
        return SentinelUrl.parse(url).async_client(**options)
    return redis.asyncio.Redis.from_url(url, **options)


def celery_url(url: str) -> str:
    """The URL as Celery and kombu take it (a sentinel:// one without our query, see tasks.sentinel)."""
    return SentinelUrl.parse(url).celery_url() if is_sentinel(url) else url


def transport_options(url: str) -> dict[str, Any]:
    """What Celery needs besides the URL (a Sentinel master's name and the Sentinels' password)."""
    return SentinelUrl.parse(url).transport_options() if is_sentinel(url) else {}


def redact(url: str) -> str:
    """The URL with its passwords replaced by ***, for logs and error messages (each part of a
    multi-host sentinel:// URL, and its sentinel_password). Done on the text rather than by parsing, so
    that a malformed URL (a bad port, an unclosed [, a raw ; / or @ in a password) is shown too, never
    with its password: everything between a part's `user:` and its last @ is hidden."""
    return ";".join(_PASSWORD.sub(r"\1:***@", _SENTINEL_PASSWORD.sub(r"\1***", part)) for part in _NEXT_PART.split(url))


def check_reachable(url: str, purpose: str) -> None:
    """Connect, authenticate and PING the Redis used as `purpose` (broker, result backend); a RuntimeError
    says why not (wrong password, TLS, unreachable, no Sentinel knows the master). For a sentinel:// URL
    that is the master the Sentinels name now."""
    try:
        client = redis_client(url, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
    except redis.AuthenticationError as exc:
        raise RuntimeError(f"Redis {purpose} {redact(url)}: authentication failed ({exc})") from None
    except redis.sentinel.MasterNotFoundError as exc:
        # redis-py's message lists each Sentinel's client repr; keep the Sentinels' answers only
        answers = "; ".join(re.findall(r"> - (.*?)(?=, <redis\.client|$)", str(exc))) or "none knows it"
        raise RuntimeError(f"Redis {purpose} {redact(url)}: no Sentinel names its master ({answers})") from None
    except (redis.RedisError, OSError, ValueError) as exc:
        raise RuntimeError(f"Redis {purpose} {redact(url)} is not usable: {type(exc).__name__}: {exc}") from None
