"""The queue path with the api and the worker as separate processes on one Redis.

Covers: no cross-talk under many concurrent requests, tensors as raw bytes beside the Celery
message, deadlines while queued, fail-fast UNAVAILABLE without a live worker, and refusal of pickle.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
import requests
from kombu import Connection
from ovmsclient.tfs_compat.protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from inference.priorities import DEFAULT_PRIORITY
from tasks.routing import payload_key, priority_queue, queue_for
from tests.support.stack import OvmsProcess, private_redis, start_ovms

redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)


@pytest.fixture
def worker(small_config: Path, redis_url: str, api: OvmsProcess) -> Iterator[OvmsProcess]:
    process = start_ovms(["--config_path", str(small_config), "--broker_url", redis_url], role="worker")
    _wait_until_served(api)
    yield process
    process.signal(signal.SIGCONT)
    process.stop()


@pytest.fixture
def stub(api: OvmsProcess) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(api.grpc_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _request(model: str, name: str, array: np.ndarray, version: int | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    tensor = request.inputs[name]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_content = array.astype(np.float32).tobytes()
    tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape)
    return request


def _output(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    shape = [d.size for d in tensor.tensor_shape.dim]
    return np.frombuffer(tensor.tensor_content, dtype=np.float32).reshape(shape)


def _wait_until_served(api: OvmsProcess, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = requests.get(f"{api.rest_url}/v1/models/versioned/versions/2", timeout=5)
        if reply.ok and reply.json()["model_version_status"][0]["state"] == "AVAILABLE":
            return
        time.sleep(0.1)
    raise TimeoutError("the worker's models never became AVAILABLE at the api")


def _available_versions(api: OvmsProcess) -> list[str]:
    status = requests.get(f"{api.rest_url}/v1/models/versioned", timeout=5).json()
    return [entry["version"] for entry in status["model_version_status"] if entry["state"] == "AVAILABLE"]


def test_concurrent_requests_each_get_their_own_answer(worker, api, stub):
    """Hundreds of requests from many threads, gRPC and REST mixed: every answer matches its own input."""
    rng = np.random.default_rng(7)
    inputs = [rng.uniform(-100, 100, size=(1 + i % 3, 4)).astype(np.float32) for i in range(400)]
    session = requests.Session()

    def call(index: int) -> np.ndarray:
        x = inputs[index]
        if index % 4 == 0:
            reply = session.post(
                f"{api.rest_url}/v1/models/versioned/versions/2:predict", json={"inputs": x.tolist()}, timeout=30
            )
            assert reply.status_code == 200, reply.text
            return np.array(reply.json()["outputs"], dtype=np.float32)
        response = stub.Predict(_request("versioned", "x", x, version=2), timeout=30)
        return _output(response.outputs["y"])

    with ThreadPoolExecutor(max_workers=48) as pool:
        answers = list(pool.map(call, range(len(inputs))))
    for x, y in zip(inputs, answers, strict=True):
        np.testing.assert_array_equal(y, x * 2)


def _capture_lpush(redis_url: str, queue: str, captured: list[str]) -> None:
    """Watch Redis with MONITOR until something is pushed onto the list of `queue`'s default priority level
    (tasks.routing.priority_queue); keep that command's text."""
    listed = priority_queue(queue, DEFAULT_PRIORITY)
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in listed)  # as MONITOR escapes it
    watcher = redis.Redis.from_url(redis_url, socket_timeout=15)
    with watcher.monitor() as monitor:
        for command in monitor.listen():
            if command["command"].startswith(f"LPUSH {shown} "):
                captured.append(command["command"])
                return


def test_tensors_travel_as_raw_bytes_beside_a_small_message(worker, api, stub, redis_url):
    """The Celery message holds metadata only; the image's 602112 bytes sit raw under its claim-check key."""
    image = np.random.default_rng(1).random((1, 3, 224, 224), dtype=np.float32)
    store = redis.Redis.from_url(redis_url)
    captured: list[str] = []
    watcher = threading.Thread(target=_capture_lpush, args=(redis_url, queue_for("CPU", "resnet"), captured))
    watcher.start()
    time.sleep(0.2)  # let MONITOR attach
    worker.signal(signal.SIGSTOP)  # the payload must still be waiting when we look at it
    result: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: result.update(response=stub.Predict(_request("resnet", "data", image), timeout=30))
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        keys: list[bytes] = []
        while not keys and time.monotonic() < deadline:
            keys = list(store.scan_iter(match=payload_key("*")))
            time.sleep(0.01)
        assert len(keys) == 1, "the request's payload never appeared under its claim-check key"
        assert store.get(keys[0]) == image.tobytes()
        watcher.join(timeout=10)
        assert captured, "the predict message was never pushed onto the resnet queue"
        assert len(captured[0]) < 8192, f"the Celery message is {len(captured[0])} bytes: tensors must not ride in it"
    finally:
        worker.signal(signal.SIGCONT)
        thread.join(timeout=30)
    assert _output(result["response"].outputs["prob"]).shape == (1, 1000)
    assert store.get(keys[0]) is None, "the claim-check payload outlived its reply"


def test_deadline_passes_while_queued(worker, api, stub):
    """A request stuck in the queue gets DEADLINE_EXCEEDED at its deadline, and the worker survives it."""
    worker.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(_request("versioned", "x", np.ones((1, 4))), timeout=1.0)
        grpc_elapsed = time.monotonic() - started
        started = time.monotonic()
        reply = requests.post(
            f"{api.rest_url}/v1/models/versioned:predict",
            json={"instances": [[1, 2, 3, 4]]},
            headers={"X-Request-Timeout": "0.5"},
            timeout=10,
        )
        rest_elapsed = time.monotonic() - started
    finally:
        worker.signal(signal.SIGCONT)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1.0 <= grpc_elapsed < 1.1, "DEADLINE_EXCEEDED must come within 100 ms of the deadline"
    assert reply.status_code == 504, reply.text
    assert 0.5 <= rest_elapsed < 0.6, "504 must come within 100 ms of the deadline"
    response = stub.Predict(_request("versioned", "x", np.ones((1, 4)), version=1), timeout=10)
    np.testing.assert_array_equal(_output(response.outputs["y"]), np.full((1, 4), 2.0))


def test_no_live_worker_fails_fast_then_a_new_worker_rejoins(api, stub, small_config, redis_url):
    """Kill -9 the only worker: once its heartbeat lapses, predicts fail at once with UNAVAILABLE."""
    process = start_ovms(["--config_path", str(small_config), "--broker_url", redis_url], role="worker")
    _wait_until_served(api)
    process.signal(signal.SIGKILL)
    process.stop()
    deadline = time.monotonic() + 10
    while _available_versions(api) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _available_versions(api), "the dead worker's versions still count as AVAILABLE"
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(_request("versioned", "x", np.ones((1, 4))), timeout=20)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 1.0, "UNAVAILABLE must come at once, not at the deadline"
    reply = requests.post(f"{api.rest_url}/v1/models/versioned:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=20)
    assert reply.status_code == 503

    replacement = start_ovms(["--config_path", str(small_config), "--broker_url", redis_url], role="worker")
    try:
        _wait_until_served(api)
        response = stub.Predict(_request("versioned", "x", np.ones((1, 4))), timeout=10)
        np.testing.assert_array_equal(_output(response.outputs["y"]), np.full((1, 4), 2.0))
    finally:
        replacement.stop()


class _Exploit:
    """Unpickling this would create a file: proof that pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_message_is_refused_and_never_executed(worker, api, stub, redis_url, tmp_path):
    marker = tmp_path / "pickle-was-executed"
    queue = queue_for("CPU", "versioned")
    with Connection(redis_url) as connection:
        connection.Producer(serializer="pickle").publish(
            ((_Exploit(marker),), {}, {}),
            routing_key=queue,
            headers={"lang": "py", "task": "ovms.predict", "id": "pickled-task", "argsrepr": "", "kwargsrepr": ""},
        )
    deadline = time.monotonic() + 10
    while "pickle" not in worker.log().lower() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "pickle" in worker.log().lower(), "the worker did not report the refused message"
    assert not marker.exists()
    response = stub.Predict(_request("versioned", "x", np.ones((1, 4))), timeout=10)
    np.testing.assert_array_equal(_output(response.outputs["y"]), np.full((1, 4), 2.0))
