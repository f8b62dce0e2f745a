"""Redis stopped and started again under load: requests fail fast while it is gone, and the api and
the worker reconnect on their own, serving again within seconds of its return."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tasks.broker import EmbeddedRedis
from tests.support.load import GrpcLoad, float_request
from tests.support.stack import OvmsProcess, start_ovms

OUTAGE_S = 10.0  # long enough for Celery's default reconnect back-off (2, 4, 6, 8 s ...) to miss the goal
RECOVERY_GOAL_S = 5.0


@pytest.fixture
def stack(small_config: Path, broker: EmbeddedRedis) -> Iterator[OvmsProcess]:
    process = start_ovms(["--config_path", str(small_config), "--broker_url", broker.url])
    yield process
    process.stop()


def test_requests_fail_fast_during_an_outage_and_service_resumes(stack, broker):
    load = GrpcLoad(stack.grpc_address, float_request("versioned", "x", np.ones((1, 4))), threads=4, timeout_s=10)
    load.start()
    time.sleep(1.5)
    broker.stop()
    stopped_at = time.monotonic()  # the Redis process is gone
    time.sleep(OUTAGE_S)
    restarting_at = time.monotonic()
    broker.start()
    restarted_at = time.monotonic()
    time.sleep(RECOVERY_GOAL_S + 3.0)
    outcomes = load.stop()

    assert load.codes(until=stopped_at).get("OK", 0) > 10
    assert set(load.codes()) <= {"OK", "UNAVAILABLE"}, load.codes()
    during = [o for o in outcomes if stopped_at <= o.started < restarting_at]
    assert during and all(o.code == "UNAVAILABLE" for o in during), load.codes(stopped_at, restarting_at)
    slowest = max(o.seconds for o in during)
    assert slowest < 1.0, f"a request took {slowest:.2f} s to fail while Redis was down"
    caught = [o for o in outcomes if o.started < stopped_at < o.finished]
    assert all(o.finished - stopped_at < 2.0 for o in caught), "requests in flight when Redis went must not hang"
    first_success = min(o.finished for o in outcomes if o.code == "OK" and o.started >= restarted_at)
    assert first_success - restarted_at < RECOVERY_GOAL_S
    settled = [o for o in outcomes if o.started >= first_success + 1.0]
    assert settled and all(o.code == "OK" for o in settled), load.codes(since=first_success + 1.0)
