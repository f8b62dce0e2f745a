"""Workers that die (kill -9) or are stopped (SIGTERM) under load: no request is lost or left hanging.

The api and every worker are separate processes on a Redis of this module's own; the load is 8
gRPC clients sending resnet images back to back (each message takes a worker several milliseconds,
so a worker always holds some when it goes).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis
import requests

from tasks.heartbeat import HEARTBEAT_TTL_S
from tasks.routing import REPLY_PREFIX, claims_key, job_queue_for, job_taken_key, queue_for, worker_prefix
from tests.support.jobs import post_npy
from tests.support.load import GrpcLoad, float_request
from tests.support.stack import (
    OvmsProcess,
    ovms_command,
    private_redis,
    start_ovms,
    wait_for_ready,
    wait_for_workers,
)

redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)

DEADLINE_S = 20.0
IMAGE = float_request("resnet", "data", np.random.default_rng(0).random((1, 3, 224, 224)))


@pytest.fixture
def start_worker(small_config: Path, redis_url: str, api: OvmsProcess) -> Iterator:
    started: list[OvmsProcess] = []

    def _start(pid_namespace: bool = False) -> OvmsProcess:
        """`pid_namespace`: run it as PID 1 of a PID namespace of its own, as in a container."""
        args = ["--config_path", str(small_config), "--broker_url", redis_url]
        if pid_namespace:
            command = ["unshare", "--pid", "--fork", "--mount-proc", *ovms_command("worker", *args)]
            process = OvmsProcess(command, 0, 0, ["is ready"])
        else:
            process = start_ovms(args, role="worker")
        started.append(process)
        return process

    yield _start
    for process in started:
        if process.process.poll() is None:
            process.signal(signal.SIGTERM)  # the worker too, not only the unshare wrapper
        process.stop()


def _worker_id(process: OvmsProcess) -> str:
    return process.worker_id()


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare as root")
def test_a_worker_restarted_under_the_same_pid_leaves_no_request_waiting(api, start_worker):
    """A container restart: the new worker has the host and pid (1) of the one killed. Each start tags
    its id, so the api sees the old one lost and runs what it held again, instead of letting it wait."""
    first = start_worker(pid_namespace=True)
    wait_for_workers(api, 1)
    load = GrpcLoad(api.grpc_address, IMAGE, timeout_s=DEADLINE_S).start()
    time.sleep(2.0)
    first.signal(signal.SIGKILL)
    second = start_worker(pid_namespace=True)
    time.sleep(2.0)
    outcomes = load.stop()

    assert load.codes() == {"OK": len(outcomes)}, "every request must be answered"
    assert first.worker_id().startswith(worker_prefix("CPU", 1)), first.worker_id()
    assert second.worker_id().startswith(worker_prefix("CPU", 1)) and second.worker_id() != first.worker_id()
    assert "again: worker " + first.worker_id() in api.log(), "the killed worker held no message"


def _wait_until_holding(store: redis.Redis, worker_id: str, timeout_s: float = 10.0) -> None:
    """Until `worker_id` has claimed a message of the api (tasks.claims), so that killing it is mid-batch."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _holds(store, worker_id):
            return
        time.sleep(0.005)
    raise TimeoutError(f"worker {worker_id} never held a message")


def _holds(store: redis.Redis, worker_id: str) -> bool:
    return any(worker_id.encode() in store.hvals(key) for key in store.scan_iter(match=claims_key(REPLY_PREFIX + "*")))


def _freeze_while_holding(store: redis.Redis, worker: OvmsProcess, timeout_s: float = 10.0) -> None:
    """SIGSTOP `worker` at a moment it holds a claimed message, so that a kill now is mid-batch (a `resnet`
    message can be done within milliseconds of being seen held)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _wait_until_holding(store, _worker_id(worker), max(deadline - time.monotonic(), 0.1))
        worker.signal(signal.SIGSTOP)
        if _holds(store, _worker_id(worker)):
            return
        worker.signal(signal.SIGCONT)
    raise TimeoutError(f"worker {_worker_id(worker)} never stopped holding a message")


def test_killed_worker_messages_run_again_on_the_other_worker(api, start_worker, redis_url):
    first, second = start_worker(), start_worker()
    wait_for_workers(api, 2)
    wait_for_ready(api)
    load = GrpcLoad(api.grpc_address, IMAGE, timeout_s=DEADLINE_S).start()
    time.sleep(2.0)
    _freeze_while_holding(redis.Redis.from_url(redis_url), first)
    earlier_log = len(api.log())
    killed_at = time.monotonic()
    first.signal(signal.SIGKILL)
    time.sleep(6.0)
    outcomes = load.stop()

    assert load.codes() == {"OK": len(outcomes)}, "every request must be answered"
    assert load.codes(since=killed_at)["OK"] > 10, "the surviving worker must carry on"
    slowest = max(outcome.seconds for outcome in outcomes)
    assert slowest < 8.0, f"a request waited {slowest:.1f} s: a lost message must run again within seconds"
    rerun = api.log()[earlier_log:].count("again: worker " + _worker_id(first))
    assert rerun >= 1, "the killed worker held no message: the test did not kill it mid-batch"
    assert {o.worker for o in outcomes if o.started > killed_at + 5} == {_worker_id(second)}


def test_killed_only_worker_fails_its_requests_fast_and_a_new_worker_rejoins(api, start_worker):
    only = start_worker()
    wait_for_workers(api, 1)
    load = GrpcLoad(api.grpc_address, IMAGE, threads=4, timeout_s=DEADLINE_S).start()
    time.sleep(1.5)
    killed_at = time.monotonic()
    only.signal(signal.SIGKILL)
    time.sleep(6.0)
    outcomes = load.stop()

    assert set(load.codes()) <= {"OK", "UNAVAILABLE"}, load.codes()
    assert load.codes(until=killed_at).get("UNAVAILABLE", 0) >= 1, "in-flight requests must fail, not hang"
    caught = [o for o in outcomes if o.started < killed_at < o.finished]
    assert caught and all(o.finished - killed_at < 5.0 for o in caught), [o.finished - killed_at for o in caught]
    # "unknown": a message it had taken from the queue and not yet claimed when it died
    assert re.search(rf"was lost with worker ({re.escape(_worker_id(only))}|unknown)", api.log())

    replacement = start_worker()
    wait_for_workers(api, 1)
    wait_for_ready(api)  # a worker is counted live from its first heartbeat, before its models are loaded
    load_started = time.monotonic()
    load = GrpcLoad(api.grpc_address, IMAGE, threads=2, timeout_s=DEADLINE_S).start()
    time.sleep(1.0)
    load.stop()
    failures = [(round(at - load_started, 3), code, detail) for at, code, detail in load.failures()]
    assert load.codes().get("OK", 0) > 0 and not failures, (load.codes(), failures, api.log()[-3000:])
    assert {o.worker for o in load.outcomes} == {_worker_id(replacement)}


def test_sigterm_worker_finishes_what_it_took_and_exits(api, start_worker):
    leaving, staying = start_worker(), start_worker()
    wait_for_workers(api, 2)
    wait_for_ready(api)
    load = GrpcLoad(api.grpc_address, IMAGE, timeout_s=DEADLINE_S).start()
    time.sleep(2.0)
    earlier_log = len(api.log())
    signalled_at = time.monotonic()
    leaving.process.send_signal(signal.SIGTERM)
    exit_code = leaving.process.wait(timeout=30)
    exited_at = time.monotonic()
    time.sleep(2.0)
    outcomes = load.stop()

    assert exit_code == 0, leaving.log()[-2000:]
    assert exited_at - signalled_at < 10.0
    assert load.codes() == {"OK": len(outcomes)}, "a draining worker must not lose or fail a request"
    finished_by_leaver = [o for o in outcomes if o.worker == _worker_id(leaving) and o.finished > signalled_at]
    assert finished_by_leaver, "the worker did not finish the messages it held when told to stop"
    assert {o.worker for o in outcomes if o.started > exited_at} == {_worker_id(staying)}
    assert "again: worker" not in api.log()[earlier_log:], "a drained worker's messages must not need running again"


def test_ctrl_c_stops_a_worker_cleanly(api, start_worker):
    """SIGINT (Ctrl-C) is a warm shutdown like SIGTERM, and exits 0 (Celery itself would exit 1)."""
    worker = start_worker()
    wait_for_workers(api, 1)
    worker.process.send_signal(signal.SIGINT)
    assert worker.process.wait(timeout=30) == 0, worker.log()[-2000:]


def test_all_in_one_restarts_a_killed_worker(small_config: Path, redis_url: str):
    server = start_ovms(["--config_path", str(small_config), "--broker_url", redis_url])
    try:
        wait_for_workers(server, 1)
        (worker,) = psutil.Process(server.process.pid).children()
        worker.kill()
        server.wait_for_log("worker exited with -9; restarting it", timeout_s=10)
        replacement = _replacement_of(server, worker)
        time.sleep(HEARTBEAT_TTL_S)  # the killed worker no longer counts
        _wait_until_ready(server, replacement.pid)  # it has loaded every model and announced them
        wait_for_ready(server, timeout_s=60)
        load = GrpcLoad(server.grpc_address, IMAGE, threads=2, timeout_s=DEADLINE_S).start()
        time.sleep(1.0)
        load.stop()
        assert load.codes().get("OK", 0) > 0 and not load.failures(), (load.codes(), load.failures())
        assert all(o.worker.startswith(worker_prefix("CPU", replacement.pid)) for o in load.outcomes)
        assert server.process.poll() is None
    finally:
        server.stop()


def _wait_until_ready(server: OvmsProcess, worker_pid: int, timeout_s: float = 60.0) -> None:
    """Until the worker started as `worker_pid` logs that it is ready (its models loaded and announced)."""
    ready = re.compile(rf"Worker {re.escape(worker_prefix('CPU', worker_pid))}\S* is ready")
    deadline = time.monotonic() + timeout_s
    while not ready.search(server.log()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {worker_pid} did not get ready:\n{server.log()[-3000:]}")
        time.sleep(0.1)


def _replacement_of(server: OvmsProcess, dead: psutil.Process, timeout_s: float = 10.0) -> psutil.Process:
    """The supervisor's new child once the dead one is reaped (the restart is logged before it spawns)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children = [c for c in psutil.Process(server.process.pid).children() if c.pid != dead.pid]
        if len(children) == 1:
            return children[0]
        time.sleep(0.05)
    raise TimeoutError("the supervisor started no replacement worker")


def test_job_chunks_a_killed_worker_had_taken_all_run(api, start_worker, redis_url):
    """Many small chunks, two workers; one is killed while it holds a chunk (frozen first, so that the
    test knows): that chunk runs again, nothing else it took is lost, and the job ends with every sample."""
    first, _ = start_worker(), start_worker()
    wait_for_workers(api, 2)
    samples = np.arange(200_000 * 4, dtype=np.float32).reshape(200_000, 4)
    reply = post_npy(api.rest_url, "versioned", samples)
    assert reply.status_code == 202, reply.text
    status_url = f"{api.rest_url}/v1/jobs/{reply.json()['id']}"
    store = redis.Redis.from_url(redis_url)
    taken = job_taken_key(job_queue_for(queue_for("CPU", "versioned")), _worker_id(first))
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "the worker never held a chunk of the job"
        first.signal(signal.SIGSTOP)
        held = store.lrange(taken, 0, -1)
        if held:
            break
        first.signal(signal.SIGCONT)
        time.sleep(0.01)
    first.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert len(held) == 1, "a worker holds one chunk at a time: nothing waits unclaimed in a prefetch buffer"

    deadline = time.monotonic() + 60
    while (status := requests.get(status_url, timeout=5).json())["state"] in ("PENDING", "STARTED"):
        assert time.monotonic() < deadline, f"the job is stuck: {status}"
        time.sleep(0.2)
    assert status["state"] == "SUCCESS", status
    assert status["progress"] == {"done": 200_000, "total": 200_000, "failed": 0}, status
    print(f"job of 200,000 samples done {time.monotonic() - killed_at:.1f} s after the kill")
    # queued again; or "done" when the kill came between storing its result and leaving the taken list.
    # In the "done" case the job can end before the api has noticed the loss: wait for it to notice.
    lost_line = re.compile(f"was lost with worker {re.escape(_worker_id(first))}: (queued|done)")
    deadline = time.monotonic() + 30
    while not lost_line.search(api.log()):
        assert time.monotonic() < deadline, api.log()
        time.sleep(0.2)
    assert store.llen(taken) == 0
    result = requests.get(f"{status_url}/result?format=npy", timeout=60)
    np.testing.assert_array_equal(np.load(io.BytesIO(result.content), allow_pickle=False), samples * 2)
