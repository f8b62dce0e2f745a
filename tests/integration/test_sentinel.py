"""Redis high availability with Sentinel: `ovms --broker_url sentinel://…` (the api, and its worker in a
process of its own) on a master + replica watched by three Sentinels. The master is killed (-9) under a
steady load of predicts: requests fail fast (UNAVAILABLE) or succeed, none outlives its deadline, and
both roles follow the promoted replica without a restart. Async jobs submitted before the kill end
(done, failed, or gone with the writes the replica had not received yet), none stays running."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tasks.broker import free_port
from tasks.connections import check_reachable
from tests.support.jobs import post_npy
from tests.support.load import GrpcLoad, float_request
from tests.support.sentinels import PASSWORD, SENTINEL_PASSWORD, SentinelCluster, missing_binaries
from tests.support.stack import OvmsProcess, start_ovms

DEADLINE_S = 5.0  # each predict's gRPC deadline
RECOVERY_GOAL_S = 5.0  # from the promotion to the first successful predict
FROZEN_RECOVERY_GOAL_S = 10.0  # the same, when the old master hangs instead of dying
JOB_END_S = 30.0  # from the promotion to the end of every job submitted before the kill
DIGITS = np.zeros((1, 64), np.float32)
JOB_SAMPLES = np.zeros((16384, 64), np.float32)  # 64 chunks: still running when the master is killed

pytestmark = pytest.mark.skipif(missing_binaries() is not None, reason=missing_binaries() or "")


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    cluster = SentinelCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def stack(cluster: SentinelCluster, models_dir: Path) -> Iterator[OvmsProcess]:
    digits = ["--model_name", "digits", "--model_path", str(models_dir / "digits")]
    process = start_ovms(digits, env={"OVMS_BROKER_URL": cluster.url})
    yield process
    process.stop()


def _job_end(rest_url: str, status_url: str, deadline: float) -> str:
    """SUCCESS, FAILURE, or GONE (404: its record was not replicated); never still running at `deadline`."""
    while time.monotonic() < deadline:
        reply = requests.get(rest_url + status_url, timeout=DEADLINE_S)
        if reply.status_code == 404:
            return "GONE"
        if reply.status_code == 200 and reply.json()["state"] not in ("PENDING", "STARTED"):
            return reply.json()["state"]
        time.sleep(0.2)
    return "STILL RUNNING"


def test_the_api_and_the_worker_follow_a_failover(cluster: SentinelCluster, stack: OvmsProcess) -> None:
    load = GrpcLoad(stack.grpc_address, float_request("digits", "x", DIGITS), threads=4, timeout_s=DEADLINE_S)
    load.start()
    time.sleep(2.0)
    jobs = [post_npy(stack.rest_url, "digits", JOB_SAMPLES).json()["status_url"] for _ in range(3)]
    running = [requests.get(stack.rest_url + url, timeout=DEADLINE_S).json()["state"] for url in jobs]
    old_master = cluster.kill_master()
    killed_at = time.monotonic()
    while cluster.switched_at is None and time.monotonic() < killed_at + 15:
        time.sleep(0.05)
    assert cluster.switched_at is not None, "the Sentinels did not promote the replica within 15 s"
    promoted_at = cluster.switched_at
    endings = [_job_end(stack.rest_url, url, promoted_at + JOB_END_S) for url in jobs]
    time.sleep(max(0.0, promoted_at + RECOVERY_GOAL_S + 3.0 - time.monotonic()))
    outcomes = load.stop()

    successes_after = [o.finished for o in outcomes if o.code == "OK" and o.started >= killed_at]
    first_success = min(successes_after) if successes_after else float("inf")
    failed = [o for o in outcomes if o.code != "OK"]
    slowest = max(o.seconds for o in outcomes)
    print(
        f"\nSentinel failover: master :{old_master} killed, replica :{cluster.master_port()} promoted after "
        f"{promoted_at - killed_at:.2f} s; first successful predict {first_success - killed_at:.2f} s after the kill "
        f"({first_success - promoted_at:.2f} s after the promotion); {len(outcomes)} predicts, {len(failed)} failed "
        f"{load.codes()}; slowest {slowest:.2f} s (deadline {DEADLINE_S} s); jobs submitted before the kill: "
        f"{running} at the kill, then {endings}"
    )
    assert load.codes(until=killed_at).get("OK", 0) > 10
    assert set(load.codes()) <= {"OK", "UNAVAILABLE"}, load.failures()[:5]
    assert slowest < DEADLINE_S, "a predict outlived its deadline"
    assert first_success - promoted_at < RECOVERY_GOAL_S
    settled = [o for o in outcomes if o.started >= first_success + 1.0]
    assert settled and all(o.code == "OK" for o in settled), load.codes(since=first_success + 1.0)
    assert "STILL RUNNING" not in endings
    assert "restarting it" not in stack.log(), "a role was restarted instead of following the new master"


def test_the_worker_follows_a_failover_away_from_a_frozen_master(cluster: SentinelCluster, stack: OvmsProcess) -> None:
    """A master that stops answering without closing its connections: the worker's Celery consumer, blocked on
    a BRPOP to it, must give it up and follow the Sentinels (kombu's default checks took ~50 s, every predict
    meanwhile timing out at its deadline)."""
    load = GrpcLoad(stack.grpc_address, float_request("digits", "x", DIGITS), threads=2, timeout_s=DEADLINE_S)
    load.start()
    time.sleep(2.0)
    cluster.freeze_master()
    frozen_at = time.monotonic()
    while cluster.switched_at is None and time.monotonic() < frozen_at + 15:
        time.sleep(0.05)
    assert cluster.switched_at is not None, "the Sentinels did not promote the replica within 15 s"
    promoted_at = cluster.switched_at
    time.sleep(max(0.0, promoted_at + FROZEN_RECOVERY_GOAL_S + 3.0 - time.monotonic()))
    outcomes = load.stop()

    successes_after = [o.finished for o in outcomes if o.code == "OK" and o.started >= promoted_at]
    first_success = min(successes_after) if successes_after else float("inf")
    print(
        f"\nFrozen master: replica promoted {promoted_at - frozen_at:.2f} s after the freeze; first successful "
        f"predict {first_success - promoted_at:.2f} s after the promotion; {load.codes()}"
    )
    assert first_success - promoted_at < FROZEN_RECOVERY_GOAL_S, load.codes(since=promoted_at)
    settled = [o for o in outcomes if o.started >= first_success + 1.0]
    assert settled and all(o.code == "OK" for o in settled), load.codes(since=first_success + 1.0)


def test_the_start_up_check_and_flower_find_the_master_through_the_sentinels(
    cluster: SentinelCluster, models_dir: Path
) -> None:
    check_reachable(cluster.url, "broker")
    for url, reason in [
        (cluster.url.replace("master_name=", "master_name=x"), "no Sentinel names its master"),
        (cluster.url.replace(PASSWORD, "wrong"), "authentication failed"),
        (cluster.url.replace(SENTINEL_PASSWORD, "wrong"), "AuthenticationError"),  # no Sentinel lets it ask
    ]:
        with pytest.raises(RuntimeError, match=reason) as refused:
            check_reachable(url, "broker")
        assert "wrong" not in str(refused.value) and PASSWORD not in str(refused.value)

    flower_port = free_port()
    flags = ["--model_name", "digits", "--model_path", str(models_dir / "digits"), "--flower_port", str(flower_port)]
    process = start_ovms(flags, env={"OVMS_BROKER_URL": cluster.url, "FLOWER_UNAUTHENTICATED_API": "1"})
    try:
        deadline = time.monotonic() + 30
        workers: dict = {}
        while not workers and time.monotonic() < deadline:  # Flower asks the workers over the broker
            with contextlib.suppress(requests.ConnectionError):
                reply = requests.get(f"http://127.0.0.1:{flower_port}/api/workers?refresh=1", timeout=10)
                workers = reply.json() if reply.status_code == 200 else {}
            time.sleep(0.5)
        assert [name.split("@")[0] for name in workers] == [process.worker_id()], workers
    finally:
        process.stop()
