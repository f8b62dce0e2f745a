"""Dynamic batching and device routing through real api and worker processes."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
import requests
from ovmsclient.tfs_compat.protos.tensorflow.core.framework import tensor_shape_pb2, types_pb2
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from inference.request import InferenceRequest
from tasks.app import app, configure
from tasks.broker import EmbeddedRedis
from tasks.messages import pack_requests, unpack_result
from tasks.publisher import PredictPublisher, store_client
from tasks.routing import queue_for
from tests.support.stack import OvmsProcess, private_redis, start_ovms

MAX_BATCH = 8


redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)


def _model(models_dir: Path, name: str, base: str, **settings: object) -> dict:
    return {"config": {"name": name, "base_path": str(models_dir / base), **settings}}


@pytest.fixture(scope="module")
def config(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    batching = {"max_batch_size": MAX_BATCH, "max_queue_delay_ms": 20}
    models = [
        _model(models_dir, "versioned", "versioned", model_version_policy={"all": {}}, **batching),
        _model(models_dir, "digits", "digits", **batching),
        _model(models_dir, "multi", "multi", **batching),
        _model(models_dir, "patient", "versioned", max_batch_size=MAX_BATCH, max_queue_delay_ms=3000),
    ]
    path = tmp_path_factory.mktemp("batching") / "config.json"
    path.write_text(json.dumps({"model_config_list": models}))
    return path


@pytest.fixture(scope="module")
def api(config: Path, redis_url: str) -> Iterator[OvmsProcess]:
    process = start_ovms(["--config_path", str(config), "--broker_url", redis_url], role="api")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def worker(config: Path, redis_url: str, api: OvmsProcess) -> Iterator[OvmsProcess]:
    process = start_ovms(["--config_path", str(config), "--broker_url", redis_url], role="worker")
    _wait_until_available(api, "versioned")
    yield process
    process.signal(signal.SIGCONT)
    process.stop()


@pytest.fixture(scope="module")
def stub(api: OvmsProcess) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(api.grpc_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _wait_until_available(api: OvmsProcess, model: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = requests.get(f"{api.rest_url}/v1/models/{model}", timeout=5)
        if reply.ok and any(v["state"] == "AVAILABLE" for v in reply.json()["model_version_status"]):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{model} never became AVAILABLE")


def _request(model: str, inputs: dict[str, np.ndarray], version: int | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    for name, array in inputs.items():
        tensor = request.inputs[name]
        tensor.dtype = types_pb2.DT_FLOAT
        tensor.tensor_content = array.astype(np.float32).tobytes()
        tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape)
    return request


def _predict(stub, model: str, inputs: dict[str, np.ndarray], version: int | None = None):
    """Outputs as arrays, and the executed batch size the server reports."""
    response, call = stub.Predict.with_call(_request(model, inputs, version), timeout=30)
    outputs = {
        name: np.frombuffer(t.tensor_content, np.float32).reshape([d.size for d in t.tensor_shape.dim])
        for name, t in response.outputs.items()
    }
    batch = int(dict(call.trailing_metadata())["ovms-batch-size"])
    return outputs, batch


def _burst(worker: OvmsProcess, calls: list) -> list:
    """Run the calls concurrently while the worker is frozen, so they pile up and meet in batches."""
    worker.signal(signal.SIGSTOP)
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        time.sleep(1.0)
        worker.signal(signal.SIGCONT)
        return [future.result(timeout=60) for future in futures]


def test_a_burst_runs_in_fewer_inferences_with_unbatched_answers(worker, api, stub, models_dir):
    images = np.load(models_dir / "data" / "imgs.npy")[:40]
    alone = [_predict(stub, "digits", {"x": image[None]}) for image in images[:5]]
    assert all(batch == 1 for _, batch in alone), "sequential requests must run alone"

    results = _burst(worker, [lambda image=image: _predict(stub, "digits", {"x": image[None]}) for image in images])
    batches = [batch for _, batch in results]
    inferences = sum(1 / batch for batch in batches)  # a batch of b single-row requests is 1 inference
    assert max(batches) > 1 and max(batches) <= MAX_BATCH
    assert inferences < len(images) / 2, f"{len(images)} requests took {inferences:.0f} inferences"
    for (outputs, _), (single, _) in zip(results[:5], alone, strict=True):
        np.testing.assert_allclose(outputs["probabilities"], single["probabilities"], rtol=1e-3, atol=1e-5)
    predicted = np.array([outputs["probabilities"].argmax() for outputs, _ in results])
    labels = np.load(models_dir / "data" / "labels.npy")[:40]
    assert (predicted == labels).mean() >= 0.9


def test_a_lone_request_does_not_wait_for_the_queue_delay(worker, api, stub):
    """`patient` may wait 3 s for batch-mates, but an idle server runs a lone request at once."""
    _wait_until_available(api, "patient")
    _predict(stub, "patient", {"x": np.ones((1, 4))})
    started = time.monotonic()
    outputs, batch = _predict(stub, "patient", {"x": np.full((1, 4), 3.0)})
    assert time.monotonic() - started < 1.0
    assert batch == 1
    np.testing.assert_array_equal(outputs["y"], np.full((1, 4), 6.0))


def test_mixed_request_batch_sizes_get_exactly_their_rows(worker, api, stub):
    rng = np.random.default_rng(5)
    inputs = [rng.uniform(-10, 10, size=(1 + i % 3, 4)).astype(np.float32) for i in range(24)]
    results = _burst(worker, [lambda x=x: _predict(stub, "versioned", {"x": x}, version=2) for x in inputs])
    for x, (outputs, batch) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(outputs["y"], x * 2)
        assert x.shape[0] <= batch <= MAX_BATCH
    assert any(batch > x.shape[0] for x, (_, batch) in zip(inputs, results, strict=True))


def test_multi_input_multi_output_requests_batch_together(worker, api, stub):
    rng = np.random.default_rng(6)
    pairs = [(rng.random((1, 2), np.float32), rng.random((1, 2), np.float32)) for _ in range(16)]
    results = _burst(worker, [lambda a=a, b=b: _predict(stub, "multi", {"a": a, "b": b}) for a, b in pairs])
    for (a, b), (outputs, _) in zip(pairs, results, strict=True):
        np.testing.assert_allclose(outputs["sum"], a + b, rtol=1e-6)
        np.testing.assert_allclose(outputs["product"], a * b, rtol=1e-6)
    assert max(batch for _, batch in results) > 1


def test_a_request_failing_late_fails_alone(worker, api, redis_url):
    """One message, three requests: the one the api would have rejected fails; its batch-mates succeed."""
    configure(redis_url)
    client = store_client(redis_url)
    reply_to = f"ovms:reply:test-{uuid.uuid4().hex}"
    now = time.time()
    good = np.arange(4, dtype=np.float32)[None]
    requests_ = [
        InferenceRequest("versioned", 2, {"x": good}, None, now + 30, "r.0"),
        InferenceRequest("versioned", 2, {"x": np.ones((1, 5), np.float32)}, None, now + 30, "r.1"),
        InferenceRequest("versioned", 2, {"x": good + 1}, None, now - 1, "r.2"),
        InferenceRequest("versioned", 2, {"x": good + 2}, None, now + 30, "r.3"),
    ]
    envelope, payload = pack_requests(requests_, {"x": "FP32"})
    PredictPublisher(app, client).publish(
        "late-" + uuid.uuid4().hex, envelope, payload, queue_for("CPU", "versioned"), reply_to, 30
    )
    _, raw = redis.Redis.from_url(redis_url).brpop([reply_to], timeout=30)
    results = app.backend.decode(raw)["result"]["results"]
    np.testing.assert_array_equal(unpack_result(results["r.0"])[0]["y"], good * 2)
    np.testing.assert_array_equal(unpack_result(results["r.3"])[0]["y"], (good + 2) * 2)
    assert results["r.1"]["error"][0] == "InvalidArgument"
    assert results["r.2"]["error"][0] == "DeadlineExceeded"


def test_requests_route_to_their_device_queue_and_workers_share_a_device(models_dir, tmp_path):
    """Two devices in one config start two workers; each model is served by its device's worker.
    A second worker for one device takes a share of that device's requests."""
    server = EmbeddedRedis()
    url = server.start()
    config = tmp_path / "devices.json"
    config.write_text(
        json.dumps(
            {
                "model_config_list": [
                    _model(models_dir, "on_cpu", "versioned", model_version_policy={"all": {}}),
                    _model(models_dir, "on_hetero", "mapped", target_device="HETERO:CPU"),
                ]
            }
        )
    )
    everything = start_ovms(["--config_path", str(config), "--broker_url", url])
    extra = None
    try:
        cpu = requests.post(
            f"{everything.rest_url}/v1/models/on_cpu:predict", json={"instances": [[1, 1, 1, 1]]}, timeout=10
        )
        hetero = requests.post(
            f"{everything.rest_url}/v1/models/on_hetero:predict", json={"instances": [[1, 1, 1]]}, timeout=10
        )
        assert cpu.json() == {"predictions": [[2.0] * 4]} and hetero.json() == {"predictions": [[3.0] * 3]}
        assert cpu.headers["X-Ovms-Worker"].startswith("CPU-")
        assert hetero.headers["X-Ovms-Worker"].startswith("HETERO:CPU-")

        extra = start_ovms(["--config_path", str(config), "--broker_url", url, "--device", "CPU"], role="worker")
        deadline = time.monotonic() + 20
        served_by: set[str] = set()
        session = requests.Session()
        while len(served_by) < 2 and time.monotonic() < deadline:
            with ThreadPoolExecutor(max_workers=16) as pool:
                replies = list(
                    pool.map(
                        lambda _: session.post(
                            f"{everything.rest_url}/v1/models/on_cpu:predict",
                            json={"instances": [[1, 2, 3, 4]]},
                            timeout=10,
                        ),
                        range(64),
                    )
                )
            assert all(reply.status_code == 200 for reply in replies)
            served_by |= {reply.headers["X-Ovms-Worker"] for reply in replies}
        assert len(served_by) == 2 and all(worker.startswith("CPU-") for worker in served_by)
    finally:
        if extra is not None:
            extra.stop()
        everything.stop()
        server.stop()
