"""`--grpc_workers N`: N api processes sharing the gRPC and REST ports, through real `ovms` commands."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import prediction_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tasks.broker import free_port
from tests.support.load import float_request
from tests.support.stack import OvmsProcess, ovms_command, start_ovms

DIGIT = np.zeros((1, 64), np.float32)


def _digits(models_dir: Path) -> list[str]:
    return ["--model_name", "digits", "--model_path", str(models_dir / "digits"), "--grpc_workers", "2"]


@pytest.fixture(scope="module")
def pair(models_dir: Path) -> Iterator[OvmsProcess]:
    """`ovms --grpc_workers 2`: embedded Redis, a worker, two api processes."""
    process = start_ovms(_digits(models_dir))
    yield process
    process.stop()


def _scrape(server: OvmsProcess) -> list[tuple[str, dict[str, str], float]]:
    text = requests.get(f"{server.rest_url}/metrics", timeout=10).text
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _by_pid(server: OvmsProcess) -> dict[int, float]:
    """ovms_api_process_requests: requests each live api process took."""
    return {int(labels["pid"]): value for name, labels, value in _scrape(server) if name == "ovms_api_process_requests"}


def _total(server: OvmsProcess, metric: str, **labels: str) -> float:
    return sum(v for name, found, v in _scrape(server) if name == metric and labels.items() <= found.items())


def _predict_on_new_connections(server: OvmsProcess, count: int) -> None:
    """Each call on a connection of its own (a channel with a local subchannel pool, a REST request
    without a session), so that the kernel picks an api process for each."""
    request = float_request("digits", "x", DIGIT)
    for _ in range(count):
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(server.grpc_address, options=options) as channel:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
        reply = requests.post(
            f"{server.rest_url}/v1/models/digits:predict",
            json={"instances": DIGIT.tolist()},
            headers={"Connection": "close"},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text


def _api_pids(server: OvmsProcess) -> list[int]:
    return [int(pid) for pid in re.findall(r"Api process (\d+) listening", server.log())]


def test_two_api_processes_serve_grpc_and_rest_and_one_scrape_sums_them(pair: OvmsProcess) -> None:
    assert pair.log().count("Server started on port") == 1  # once, when both listen
    assert pair.log().count("Started REST server at") == 1
    before = _total(pair, "ovms_requests_success_total", method="Predict")
    _predict_on_new_connections(pair, 20)
    served = _by_pid(pair)
    assert len(served) == 2 and set(served) <= set(_api_pids(pair)), served
    assert all(count > 0 for count in served.values()), served  # the kernel spread the connections
    assert _total(pair, "ovms_requests_success_total", method="Predict") - before == 40  # both processes' counts
    assert _total(pair, "ovms_request_time_us_count", interface="grpc") >= 20
    assert _total(pair, "ovms_live_workers") == 1  # read from Redis by the scraped process: not summed
    depths = [labels for name, labels, _ in _scrape(pair) if name == "ovms_queue_depth"]
    assert depths == [{"queue": "ovms.CPU.digits"}]


def test_every_api_process_reports_ready(pair: OvmsProcess) -> None:
    for _ in range(8):
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(pair.grpc_address, options=options) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        ready = requests.get(f"{pair.rest_url}/v1/health/ready", headers={"Connection": "close"}, timeout=10)
        assert ready.status_code == 200, ready.text


def test_a_killed_api_process_is_restarted_while_the_other_serves(pair: OvmsProcess) -> None:
    victim, survivor = sorted(_by_pid(pair))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(victim):  # until its listeners are closed: a connection it had queued would be reset
        assert time.monotonic() < deadline
        time.sleep(0.01)
    _predict_on_new_connections(pair, 6)  # all answered, by the survivor or, once it listens, the new one
    pair.wait_for_log(f"Api process {victim} exited with -9; restarting it", timeout_s=10)
    deadline = time.monotonic() + 30
    while len(pids := _api_pids(pair)) < 3:
        assert time.monotonic() < deadline, pair.log()[-3000:]
        time.sleep(0.1)
    replacement = pids[-1]
    while set(served := _by_pid(pair)) != {survivor, replacement} or not served[replacement]:
        assert time.monotonic() < deadline, served
        _predict_on_new_connections(pair, 2)
    assert victim not in served  # its series went with it; the totals keep its counts


def test_sigterm_drains_and_stops_every_process_with_exit_code_0(models_dir: Path, tmp_path: Path) -> None:
    process = start_ovms(_digits(models_dir))
    _predict_on_new_connections(process, 2)
    pids = _api_pids(process)
    metrics_dir = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", _environ(pids[0]))
    assert process.stop() == 0, process.log()[-3000:]
    assert process.log().count("Api stopped") == 2
    assert not any(_alive(pid) for pid in pids)
    assert metrics_dir is not None and not Path(metrics_dir.group(1)).exists()


def test_the_api_role_starts_n_api_processes_on_its_broker(small_config: Path, redis_url: str) -> None:
    worker = start_ovms(["--config_path", str(small_config), "--broker_url", redis_url], role="worker")
    api = start_ovms(["--config_path", str(small_config), "--broker_url", redis_url, "--grpc_workers", "2"], role="api")
    try:
        assert len(_api_pids(api)) == 2
        for _ in range(10):
            reply = requests.post(
                f"{api.rest_url}/v1/models/versioned:predict",
                json={"instances": [[1, 2, 3, 4]]},
                headers={"Connection": "close"},
                timeout=10,
            )
            assert reply.status_code == 200, reply.text
        assert sum(count > 0 for count in _by_pid(api).values()) == 2
    finally:
        assert api.stop() == 0
        worker.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("taken", ["gRPC", "REST"])
def test_a_port_another_server_listens_on_fails_the_start(redis_url: str, small_config: Path, workers: str, taken: str):
    """Even one that set SO_REUSEPORT itself (say a stale `ovms` of the same user): it is never joined."""
    grpc_port, rest_port = free_port(), free_port()
    stranger = socket.socket()
    stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    stranger.bind(("0.0.0.0", grpc_port if taken == "gRPC" else rest_port))
    stranger.listen()
    try:
        flags = ["--config_path", str(small_config), "--broker_url", redis_url, "--grpc_workers", workers]
        command = ovms_command("api", *flags, "--port", str(grpc_port), "--rest_port", str(rest_port))
        process = OvmsProcess(command, grpc_port, rest_port, wait_for=[])
        assert process.process.wait(timeout=60) == 1
        port = grpc_port if taken == "gRPC" else rest_port
        assert f"cannot bind {taken} port {port}" in process.log()
        if workers == "2":  # checked before any api process starts (one alone has logged its gRPC port)
            assert "Server started on port" not in process.log() and "listening" not in process.log()
        process.stop()
    finally:
        stranger.close()


def _environ(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
