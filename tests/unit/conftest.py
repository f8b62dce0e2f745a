"""Fixtures of the in-process core tests: a real Redis per test module, emptied before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tasks.app import app, configure
from tasks.broker import EmbeddedRedis


@pytest.fixture(scope="module")
def core_redis_url() -> Iterator[str]:
    """A Redis server of the module's own, which the Celery app's result backend points at (as a worker's
    and an api's do): results stored here the way a worker stores them are read back by the code under test."""
    server = EmbeddedRedis()
    url = server.start()
    configure(url)
    # Celery builds its result backend once per thread, from the URL configured then: drop this thread's,
    # built for an earlier module's Redis, so that the next use builds it for this one.
    app._local.__dict__.pop("backend", None)
    yield url
    server.stop()


@pytest.fixture
def store(core_redis_url: str) -> Iterator[redis.Redis]:
    """A client of the module's Redis, emptied for this test."""
    client = redis.Redis.from_url(core_redis_url)
    client.flushdb()
    yield client
    client.close()
