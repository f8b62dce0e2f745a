"""The api's view of its Redis (tasks.link) and its Redis client (tasks.publisher.store_client), against a
real Redis server that the test pauses."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from inference.errors import Unavailable
from tasks.broker import EmbeddedRedis
from tasks.link import PROBE_INTERVAL_S, PROBE_TIMEOUT_S, REDIS_TIMEOUT_S, RedisLink, blocking_pop
from tasks.publisher import store_client


def test_large_values_go_out_in_slices_and_arrive_whole(broker: EmbeddedRedis) -> None:
    client = store_client(broker.url)
    value = np.random.default_rng(0).bytes(10 << 20)
    packed = client.connection_pool.make_connection().pack_command("SET", "key", value)
    assert max(len(piece) for piece in packed) <= 4 << 20
    client.set("key", value)
    assert client.get("key") == value


def test_a_paused_redis_is_noticed_within_a_probe_and_its_recovery_too(broker: EmbeddedRedis) -> None:
    link = RedisLink(broker.url)
    outages: list[Unavailable] = []
    link.on_down(outages.append)
    link.start()
    try:
        assert link.up
        link.check()
        os.kill(broker.pid, signal.SIGSTOP)
        paused = time.monotonic()
        while link.up:
            assert time.monotonic() - paused < PROBE_INTERVAL_S + PROBE_TIMEOUT_S + 1.0, "the pause went unnoticed"
            time.sleep(0.02)
        with pytest.raises(Unavailable, match=r"Redis unavailable \(TimeoutError"):
            link.check()
        os.kill(broker.pid, signal.SIGCONT)
        resumed = time.monotonic()
        while not link.up:
            assert time.monotonic() - resumed < PROBE_INTERVAL_S + PROBE_TIMEOUT_S + 1.0, "the recovery went unnoticed"
            time.sleep(0.02)
        assert link.up_since >= resumed
        assert len(outages) == 1 and "Redis unavailable" in outages[0].message
    finally:
        link.stop()


def test_a_link_to_broker_and_result_backend_is_down_while_either_is(
    broker: EmbeddedRedis, result_backend: EmbeddedRedis
) -> None:
    link = RedisLink(broker.url, result_backend.url)
    link.start()
    try:
        for server in (broker, result_backend):
            assert link.up
            server.stop()
            stopped = time.monotonic()
            while link.up:
                assert time.monotonic() - stopped < PROBE_INTERVAL_S + PROBE_TIMEOUT_S + 1.0, "unnoticed"
                time.sleep(0.02)
            with pytest.raises(Unavailable, match=rf"ConnectionError.*{server.port}"):
                link.check()
            server.start()
            while not link.up:
                assert time.monotonic() - stopped < 10, "the recovery went unnoticed"
                time.sleep(0.02)
    finally:
        link.stop()


def test_a_wait_longer_than_the_socket_timeout_is_not_an_outage(broker: EmbeddedRedis) -> None:
    """A reload that takes longer than the api client's socket timeout (2 s) is waited for: one BLPOP
    that long would fail as 'Timeout reading from socket'."""
    client = store_client(broker.url)
    started = time.monotonic()
    assert blocking_pop(client, "nothing-comes", REDIS_TIMEOUT_S + 0.5) is None
    assert time.monotonic() - started >= REDIS_TIMEOUT_S + 0.5
    client.rpush("answer", b"done")
    assert blocking_pop(client, "answer", 5.0) == (b"answer", b"done")


def test_a_wait_with_a_sliver_left_ends_instead_of_blocking_for_good(broker: EmbeddedRedis) -> None:
    """Redis takes a BLPOP timeout under 1 ms as 0 (block for good): the last slice of a wait is at least 10 ms."""
    client = store_client(broker.url)
    started = time.monotonic()
    assert blocking_pop(client, "nothing-comes", 0.0004) is None
    assert time.monotonic() - started < 0.5
