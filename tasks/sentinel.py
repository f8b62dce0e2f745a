"""Redis Sentinel URLs: one syntax for every role, turned into what redis-py, kombu and Celery each want.

    sentinel://[:password@]host[:port][/db];sentinel://host[:port];...?master_name=NAME[&sentinel_password=PW]

Each `sentinel://` part names one Sentinel (port 26379 by default), in Celery's own multi-host form.
`master_name` (required) is the name the Sentinels monitor. The password (and user name) and db are
the master's; written on any one part they hold for all (parts that both give one must agree, so the
first part's, the only one Celery and kombu read, can never silently differ from a later one's).
`sentinel_password` is only for Sentinels started with `requirepass`. The query may follow any part.

kombu refuses unknown query parameters, and Celery and kombu want the master name (and the Sentinels'
password) as transport options: `celery_url` and `transport_options` split our URL into the two.
Clients made by `client` ask the Sentinels for the master on every (re)connection, so after a
failover the next reconnection reaches the new master (redis-py's SentinelConnectionPool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
import redis.asyncio.sentinel
import redis.sentinel

SCHEME = "sentinel"
DEFAULT_PORT = 26379
_QUERY_KEYS = ("master_name", "sentinel_password")
# How long one Sentinel may take to answer; each is asked once per discovery (redis-py's default would retry a
# dead or refusing one with back-off for seconds): the other Sentinels are the retry.
SENTINEL_TIMEOUT_S = 1.0
_SENTINEL_CONNECTIONS = {
    "socket_timeout": SENTINEL_TIMEOUT_S,
    "socket_connect_timeout": SENTINEL_TIMEOUT_S,
    "retry": None,
}


def is_sentinel(url: str) -> bool:
    return url.startswith(f"{SCHEME}://")


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        """A ValueError says what is wrong with `url` (never showing a password)."""
        sentinels: list[tuple[str, int]] = []
        shared: dict[str, Any] = {}
        for part in url.split(";"):
            parts = urlsplit(part.strip())
            if parts.scheme != SCHEME or not parts.hostname:
                raise ValueError(f"every part of a Sentinel URL is sentinel://host[:port], not {parts.scheme}://…")
            sentinels.append((parts.hostname, parts.port or DEFAULT_PORT))
            path = parts.path.strip("/")
            if path and not path.isdigit():
                raise ValueError(f"the db of a Sentinel URL is a number, not {path!r}")
            query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            unknown = sorted(set(query) - set(_QUERY_KEYS))
            if unknown:
                raise ValueError(f"a Sentinel URL takes only {', '.join(_QUERY_KEYS)} as parameters, not {unknown}")
            given = {"db": int(path) if path else None, "username": unquote(parts.username or "") or None, **query}
            given["password"] = None if parts.password is None else unquote(parts.password)
            for key, value in given.items():
                if value is None:
                    continue
                if shared.setdefault(key, value) != value:
                    raise ValueError(f"the parts of a Sentinel URL give different values for {key}")
        if not shared.get("master_name"):
            raise ValueError("a Sentinel URL needs ?master_name=NAME (the name the Sentinels monitor)")
        return cls(tuple(sentinels), **{"db": 0, **shared})

    def celery_url(self) -> str:
        """The URL in Celery's and kombu's form: every Sentinel with the master's credentials and db, no query."""
        auth = ""
        if self.username or self.password:
            auth = quote(self.username or "", safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
            auth += "@"
        return ";".join(f"{SCHEME}://{auth}{_host(host)}:{port}/{self.db}" for host, port in self.sentinels)

    def transport_options(self) -> dict[str, Any]:
        """Celery's broker_transport_options / result_backend_transport_options for this URL."""
        return {"master_name": self.master_name, "sentinel_kwargs": self._sentinel_kwargs()}

    def client(self, **options: Any) -> redis.Redis:
        """A client of the current master, with `options` (timeouts, command packer) on its connections."""
        manager = redis.sentinel.Sentinel(list(self.sentinels), sentinel_kwargs=self._sentinel_kwargs())
        return manager.master_for(
            self.master_name, db=self.db, username=self.username, password=self.password, **options
        )

    def async_client(self, **options: Any) -> redis.asyncio.Redis:
        """client(), for an event loop (redis.asyncio)."""
        manager = redis.asyncio.sentinel.Sentinel(list(self.sentinels), sentinel_kwargs=self._sentinel_kwargs())
        return manager.master_for(
            self.master_name, db=self.db, username=self.username, password=self.password, **options
        )

    def _sentinel_kwargs(self) -> dict[str, Any]:
        """The Sentinels' connections: short timeouts, no retries, their own password if any."""
        if self.sentinel_password:
            return {**_SENTINEL_CONNECTIONS, "password": self.sentinel_password}
        return dict(_SENTINEL_CONNECTIONS)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
