"""Redis gone, paused or killed: health tells the truth and every route fails fast with 503 / UNAVAILABLE.

Each test runs its own `ovms` serving the small `versioned` model on a Redis of its own, because it
breaks that Redis. Figures (time to 503, time to recover) are printed for the README (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import redis
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from ovms.all_in_one import RESTARTS_PER_MINUTE
from tasks.broker import EmbeddedRedis
from tests.support.load import float_request
from tests.support.stack import REPO, OvmsProcess, child_named, start_ovms

MODEL = "versioned"
PREDICT = float_request(MODEL, "x", np.ones((1, 4)))
FAIL_FAST_S = 1.0  # the longest any call may take to fail while Redis is unreachable
NOTICED_S = 2.5  # the longest readiness may take to turn false once Redis is gone or paused
RECOVERY_S = 15.0
CHILDREN_GONE_S = 30  # a kill -9 of the all-in-one: its children have ended by then (pdeathsig)


def _serve(models_dir: Path, *args: str) -> OvmsProcess:
    return start_ovms(["--model_name", MODEL, "--model_path", str(models_dir / MODEL), *args])


@pytest.fixture
def stack(models_dir: Path, broker: EmbeddedRedis) -> Iterator[OvmsProcess]:
    process = _serve(models_dir, "--broker_url", broker.url)
    yield process
    process.stop()


class Probe:
    """Real clients of one `ovms`: REST, gRPC and grpc.health.v1."""

    def __init__(self, server: OvmsProcess) -> None:
        self.url = server.rest_url
        self._channel = grpc.insecure_channel(server.grpc_address)
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.model = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self.health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def ready(self) -> int:
        return requests.get(f"{self.url}/v1/health/ready", timeout=10).status_code

    def serving(self) -> bool:
        reply = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def predicts(self) -> bool:
        try:
            self.prediction.Predict(PREDICT, timeout=10)
        except grpc.RpcError:
            return False
        return True

    def rest_calls(self) -> dict[str, Callable[[], requests.Response]]:
        """Every REST route that needs Redis, by name."""
        url, timeout = self.url, 30
        body = {"instances": [[1.0, 2.0, 3.0, 4.0]]}
        return {
            "status": lambda: requests.get(f"{url}/v1/models/{MODEL}", timeout=timeout),
            "metadata": lambda: requests.get(f"{url}/v1/models/{MODEL}/metadata", timeout=timeout),
            "predict": lambda: requests.post(f"{url}/v1/models/{MODEL}:predict", json=body, timeout=timeout),
            "config": lambda: requests.get(f"{url}/v1/config", timeout=timeout),
            "reload": lambda: requests.post(f"{url}/v1/config/reload", timeout=timeout),
            "jobs": lambda: requests.get(f"{url}/v1/jobs", timeout=timeout),
            "job": lambda: requests.get(f"{url}/v1/jobs/{'0' * 32}", timeout=timeout),
            "submit": lambda: requests.post(f"{url}/v1/jobs", json={"model": MODEL, **body}, timeout=timeout),
        }

    def grpc_calls(self) -> dict[str, Callable[[], object]]:
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = MODEL
        metadata = get_model_metadata_pb2.GetModelMetadataRequest()
        metadata.model_spec.name = MODEL
        metadata.metadata_field.append("signature_def")
        return {
            "Predict": lambda: self.prediction.Predict(PREDICT, timeout=30),
            "GetModelStatus": lambda: self.model.GetModelStatus(status, timeout=30),
            "GetModelMetadata": lambda: self.prediction.GetModelMetadata(metadata, timeout=30),
        }


@pytest.fixture
def probe(stack: OvmsProcess) -> Iterator[Probe]:
    client = Probe(stack)
    yield client
    client.close()


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until `condition` held (polled every 20 ms)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what} not within {timeout_s} s"
        time.sleep(0.02)
    return time.monotonic() - started


def _timed(call: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    try:
        outcome = call()
    except grpc.RpcError as error:
        outcome = error
    return outcome, time.monotonic() - started


def _assert_all_unavailable(probe: Probe) -> float:
    """Every route that needs Redis answers 503 / UNAVAILABLE within FAIL_FAST_S, and says why; returns
    the slowest answer's seconds."""
    slowest = 0.0
    for name, call in probe.rest_calls().items():
        reply, seconds = _timed(call)
        assert reply.status_code == 503, (name, reply.status_code, reply.text)
        assert "Redis" in reply.json()["error"], (name, reply.text)
        assert seconds < FAIL_FAST_S, f"REST {name} took {seconds:.2f} s to fail"
        slowest = max(slowest, seconds)
    for name, call in probe.grpc_calls().items():
        error, seconds = _timed(call)
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE, (name, error)
        assert seconds < FAIL_FAST_S, f"gRPC {name} took {seconds:.2f} s to fail"
        slowest = max(slowest, seconds)
    assert requests.get(f"{probe.url}/v1/health/live", timeout=5).status_code == 200
    metrics = requests.get(f"{probe.url}/metrics", timeout=5)
    assert metrics.status_code == 200 and "ovms_redis_up 0.0" in metrics.text
    return slowest


def test_all_in_one_restarts_a_killed_embedded_redis(models_dir: Path):
    server = _serve(models_dir)
    probe = Probe(server)
    try:
        assert probe.ready() == 200 and probe.predicts()
        (embedded,) = [p for p in psutil.Process(server.process.pid).children() if "redis" in p.name()]
        embedded.kill()
        killed = time.monotonic()
        not_ready_s = _wait_for(lambda: probe.ready() == 503, NOTICED_S, "readiness 503")
        server.wait_for_log("Embedded Redis exited with -9; restarting it", timeout_s=5)
        ready_s = _wait_for(lambda: probe.ready() == 200 and probe.serving(), RECOVERY_S, "ready again")
        served_s = _wait_for(probe.predicts, RECOVERY_S, "a predict served")
        print(
            f"\nkilled embedded Redis: readiness 503 after {not_ready_s:.2f} s, ready again "
            f"{time.monotonic() - killed - served_s:.2f} s after the kill, predicts served {served_s:.2f} s later"
        )
        (restarted,) = [p for p in psutil.Process(server.process.pid).children() if "redis" in p.name()]
        assert restarted.pid != embedded.pid
        assert ready_s < RECOVERY_S and server.process.poll() is None
        assert "Internal error" not in server.log()
    finally:
        probe.close()
        exit_code = server.stop()
    assert exit_code == 0
    restarted.wait(timeout=5)  # stopped with the server, not restarted again by it


def test_kill_9_of_the_all_in_one_leaves_no_embedded_redis_behind(models_dir: Path):
    """Its workers and its embedded Redis (holding every job's data) die with it (PR_SET_PDEATHSIG)."""
    server = _serve(models_dir)
    children = [child for child in psutil.Process(server.process.pid).children(recursive=True) if child.is_running()]
    names = {child.pid: child.name() for child in children}
    assert any("redis" in name for name in names.values()), names
    os.kill(server.process.pid, signal.SIGKILL)  # the ovms process alone, as the OOM killer would
    server.stop()
    # the worker's warm shutdown on SIGTERM (its pdeathsig) took more than 10 s once in a loaded CI run
    killed_at = time.monotonic()
    gone, alive = psutil.wait_procs(children, timeout=CHILDREN_GONE_S)
    took = time.monotonic() - killed_at
    for child in alive:
        child.kill()
    alive = [child for child in alive if not _exited(child)]  # a zombie has ended: only its reaper is late
    assert not alive, f"still running {CHILDREN_GONE_S} s after kill -9 of ovms: {[names[p.pid] for p in alive]}"
    gone_names = ", ".join(names[p.pid] for p in gone)
    print(f"\nkill -9 of the all-in-one: its children ({gone_names}) went with it in {took:.1f} s")


def _exited(process: psutil.Process) -> bool:
    """Whether the process has ended: gone, or a zombie that whoever adopted it has not reaped yet."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_an_embedded_redis_that_keeps_dying_stops_the_server(models_dir: Path):
    server = _serve(models_dir)
    try:
        killed: set[int] = set()
        for _ in range(RESTARTS_PER_MINUTE + 1):
            _wait_for(lambda: server.process.poll() is not None or _embedded_redis(server, killed), 15, "a restart")
            embedded = _embedded_redis(server, killed)
            assert embedded is not None, server.log()[-2000:]
            embedded.kill()
            killed.add(embedded.pid)
        assert server.process.wait(timeout=60) == 1
        assert "Embedded Redis exited with -9 again; shutting down" in server.log()
    finally:
        server.stop()


def _embedded_redis(server: OvmsProcess, killed: set[int]) -> psutil.Process | None:
    """The supervisor's running redis-server child, not one of the `killed` ones."""
    for child in psutil.Process(server.process.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):  # a child may exit while it is looked at
            if "redis" in child.name() and child.pid not in killed and child.status() != psutil.STATUS_ZOMBIE:
                return child
    return None


def test_stopped_redis_makes_every_route_unavailable_at_once(stack, probe, broker):
    assert probe.ready() == 200 and probe.predicts()
    stopped = time.monotonic()
    broker.stop()
    _wait_for(lambda: probe.ready() == 503, NOTICED_S, "readiness 503")
    not_ready_s = time.monotonic() - stopped
    _wait_for(lambda: not probe.serving(), NOTICED_S, "gRPC health NOT_SERVING")
    slowest = _assert_all_unavailable(probe)
    assert "Internal error" not in stack.log()

    broker.start()
    started = time.monotonic()
    _wait_for(lambda: probe.ready() == 200 and probe.serving() and probe.predicts(), RECOVERY_S, "service again")
    print(
        f"\nRedis stopped: readiness 503 after {not_ready_s:.2f} s, routes 503 in <= {slowest:.3f} s; served again "
        f"{time.monotonic() - started:.2f} s after its restart (outage {started - stopped:.1f} s)"
    )


def test_paused_redis_fails_predicts_promptly_and_service_resumes(stack, probe, broker):
    assert probe.ready() == 200 and probe.predicts()
    outcomes: list[tuple[object, float]] = []
    callers = [
        threading.Thread(target=lambda: outcomes.append(_timed(probe.grpc_calls()["Predict"]))) for _ in range(4)
    ]
    os.kill(broker.pid, signal.SIGSTOP)
    paused = time.monotonic()
    for caller in callers:
        caller.start()
    _wait_for(lambda: probe.ready() == 503, NOTICED_S, "readiness 503")
    not_ready_s = time.monotonic() - paused
    for caller in callers:
        caller.join(timeout=35)
    codes = [error.code() if isinstance(error, grpc.RpcError) else "OK" for error, _ in outcomes]
    slowest = max(seconds for _, seconds in outcomes)
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 4, codes
    assert slowest < 3.0, f"a predict took {slowest:.2f} s to fail on a paused Redis (deadline 30 s)"
    slowest_route = _assert_all_unavailable(probe)

    os.kill(broker.pid, signal.SIGCONT)
    resumed_s = _wait_for(lambda: probe.ready() == 200 and probe.predicts(), RECOVERY_S, "service again")
    print(
        f"\nRedis paused: predicts UNAVAILABLE within {slowest:.2f} s, readiness 503 after {not_ready_s:.2f} s, "
        f"routes 503 in <= {slowest_route:.3f} s; served again {resumed_s:.2f} s after SIGCONT"
    )


def test_a_job_lost_with_a_restarted_redis_answers_404_saying_so(stack, probe, broker):
    body = {"model": MODEL, "instances": [[1.0, 2.0, 3.0, 4.0]]}
    job = requests.post(f"{probe.url}/v1/jobs", json=body, timeout=30).json()["id"]
    broker.stop()
    broker.start()  # empty: it keeps nothing on disk
    _wait_for(lambda: probe.ready() == 200, RECOVERY_S, "ready again")
    reply = requests.get(f"{probe.url}/v1/jobs/{job}", timeout=10)
    assert reply.status_code == 404
    assert reply.json()["error"] == f"Job {job} is not found: unknown id, expired, or lost when Redis restarted empty"


def test_ovms_submit_wait_rides_out_an_outage_and_ends_when_redis_lost_the_job(stack, probe, broker, tmp_path):
    worker = child_named(stack, "worker")
    worker.suspend()  # the job stays queued
    try:
        np.save(tmp_path / "x.npy", np.ones((3, 4), dtype=np.float32))
        command = [sys.executable, "-m", "ovms", "submit", "--url", probe.url, "--model", MODEL]
        client = subprocess.Popen(
            [*command, "--input", str(tmp_path / "x.npy"), "--wait"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert client.stdout is not None
        job = client.stdout.readline().strip()  # printed once the job is queued
        broker.stop()
        time.sleep(1.5)  # the client polls through 503s meanwhile
        broker.start()  # empty: the job is gone
        _, stderr = client.communicate(timeout=30)
    finally:
        worker.resume()
    assert client.returncode == 1
    assert f"404 Job {job} is not found: unknown id, expired, or lost when Redis restarted empty" in stderr
    assert "Traceback" not in stderr


def test_readiness_is_false_while_no_live_worker_serves_a_configured_model(models_dir: Path, broker: EmbeddedRedis):
    args = ["--model_name", MODEL, "--model_path", str(models_dir / MODEL), "--broker_url", broker.url]
    api = start_ovms(args, role="api")
    probe = Probe(api)
    try:
        assert probe.ready() == 503 and not probe.serving()
        worker = start_ovms(args, role="worker")
        _wait_for(lambda: probe.ready() == 200 and probe.serving(), RECOVERY_S, "ready with a worker")
        worker.signal(signal.SIGKILL)
        worker.stop()
        gone_s = _wait_for(lambda: probe.ready() == 503 and not probe.serving(), 6.0, "not ready without a worker")
        print(f"\nworker killed: readiness 503 after {gone_s:.2f} s")
    finally:
        probe.close()
        api.stop()


def _split_args(models_dir: Path, broker_url: str, backend_url: str) -> list[str]:
    return [
        *("--model_name", MODEL, "--model_path", str(models_dir / MODEL)),
        *("--broker_url", broker_url, "--result_backend_url", backend_url),
    ]


def _serves_everything(probe: Probe) -> None:
    """gRPC and REST predicts, and an async job to its result."""
    assert probe.ready() == 200 and probe.serving()
    assert probe.predicts()
    predict = probe.rest_calls()["predict"]()
    assert predict.status_code == 200 and predict.json()["predictions"], predict.text
    job = probe.rest_calls()["submit"]()
    assert job.status_code in (200, 202), job.text
    status_url = probe.url + job.json()["status_url"]
    _wait_for(lambda: requests.get(status_url, timeout=5).json()["state"] == "SUCCESS", 20, "the job done")


@pytest.mark.parametrize("layout", ["two servers, all in one", "two dbs of one server, api and worker"])
def test_predicts_and_jobs_with_broker_and_result_backend_apart(models_dir, broker, result_backend, layout):
    """Celery queues on the broker, tensors, replies, registry and jobs on the result backend."""
    apart = layout.startswith("two servers")
    backend_url = result_backend.url if apart else broker.url.removesuffix("/0") + "/1"
    args = _split_args(models_dir, broker.url, backend_url)
    processes = [_serve(models_dir, *args[4:])] if apart else [start_ovms(args, role="worker")]
    if not apart:
        processes.insert(0, start_ovms(args, role="api"))
    probe = Probe(processes[0])
    try:
        _wait_for(lambda: probe.ready() == 200, RECOVERY_S, "ready")
        _serves_everything(probe)
        queues = redis.Redis.from_url(broker.url)
        store = redis.Redis.from_url(backend_url)
        assert not list(queues.scan_iter("ovms:*")), "the broker holds only Celery's keys"
        assert list(store.scan_iter("ovms:job:*")) and list(store.scan_iter("ovms:worker*"))
        assert "ovms_queue_depth{queue=" in requests.get(f"{probe.url}/metrics", timeout=5).text
    finally:
        probe.close()
        for process in processes:
            process.stop()


@pytest.fixture
def split_stack(models_dir: Path, broker: EmbeddedRedis, result_backend: EmbeddedRedis) -> Iterator[OvmsProcess]:
    process = _serve(models_dir, "--broker_url", broker.url, "--result_backend_url", result_backend.url)
    yield process
    process.stop()


@pytest.mark.parametrize("fault", ["broker stopped", "broker paused", "result backend stopped"])
def test_either_redis_gone_makes_the_api_unready_and_unavailable_at_once(split_stack, broker, result_backend, fault):
    probe = Probe(split_stack)
    server = result_backend if fault.startswith("result backend") else broker
    try:
        _wait_for(lambda: probe.ready() == 200, RECOVERY_S, "ready")
        assert probe.predicts()
        outcomes: list[tuple[object, float]] = []
        caller = threading.Thread(target=lambda: outcomes.append(_timed(probe.grpc_calls()["Predict"])))
        if fault.endswith("paused"):
            os.kill(server.pid, signal.SIGSTOP)
        else:
            server.stop()
        broken = time.monotonic()
        caller.start()
        not_ready_s = _wait_for(lambda: probe.ready() == 503 and not probe.serving(), NOTICED_S, "unready")
        caller.join(timeout=35)
        ((predict, predict_s),) = outcomes
        assert isinstance(predict, grpc.RpcError) and predict.code() == grpc.StatusCode.UNAVAILABLE, predict
        assert predict_s < 3.0, f"a predict took {predict_s:.2f} s to fail (deadline 30 s)"
        slowest = _assert_all_unavailable(probe)
        if fault.endswith("paused"):
            os.kill(server.pid, signal.SIGCONT)
        else:
            server.start()
        mended = time.monotonic()
        _wait_for(lambda: probe.ready() == 200 and probe.serving() and probe.predicts(), RECOVERY_S, "service again")
        print(
            f"\n{fault}: readiness 503 after {not_ready_s:.2f} s, a predict UNAVAILABLE in {predict_s:.2f} s, "
            f"routes 503 in <= {slowest:.3f} s; served again {time.monotonic() - mended:.2f} s after the repair "
            f"(outage {mended - broken:.1f} s)"
        )
        assert "Internal error" not in split_stack.log()
    finally:
        probe.close()
