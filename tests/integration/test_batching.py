"""Dynamic batching and device routing through real api and worker processes."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import openvino as ov
import pytest
import redis
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ovmsclient.tfs_compat.protos.tensorflow.core.framework import tensor_shape_pb2, types_pb2
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from inference.request import InferenceRequest
from tasks.app import app, configure
from tasks.broker import EmbeddedRedis
from tasks.messages import ComputedOutputs, pack_requests
from tasks.publisher import PredictPublisher, store_client
from tasks.routing import queue_for
from tests.integration.test_grpc import TYPES_MODEL_INPUTS, content_tensor, predict_request
from tests.integration.test_grpc import outputs as grpc_outputs
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
        _model(models_dir, "types", "types", **batching),
        _model(models_dir, "mapped", "mapped", **batching),
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
    PredictPublisher(app, client, client).publish(
        "late-" + uuid.uuid4().hex, envelope, payload, queue_for("CPU", "versioned"), reply_to, 30
    )
    _, raw = redis.Redis.from_url(redis_url).brpop([reply_to], timeout=30)
    results = app.backend.decode(raw)["result"]["results"]
    np.testing.assert_array_equal(ComputedOutputs.from_wire(results["r.0"]).arrays()["y"], good * 2)
    np.testing.assert_array_equal(ComputedOutputs.from_wire(results["r.3"]).arrays()["y"], (good + 2) * 2)
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


# --------------------------------------------------------------------------- isolation between clients
# A request's answer depends only on its own inputs, whatever the requests batched with it send (issue 10).

INPUT_SPECS: dict[str, dict[str, tuple[type, int]]] = {  # model -> input -> (element type, row width)
    "multi": {"a": (np.float32, 2), "b": (np.float32, 2)},
    "types": {name: (dtype, 2) for name, dtype in TYPES_MODEL_INPUTS.items()},
    "digits": {"x": (np.float32, 64)},
    "mapped": {"in": (np.float32, 3)},
}
OUTPUT_NAMES = {
    "multi": ("sum", "product"),
    "types": tuple(f"{name}_out" for name in TYPES_MODEL_INPUTS),
    "digits": ("probabilities",),
    "mapped": ("out",),
}
MISMATCH = "Invalid input batch size - every input must have the same batch size"


def _random_values(rng: np.random.Generator, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    if dtype is np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.floating):
        return rng.uniform(-1000, 1000, shape).astype(dtype)
    info = np.iinfo(np.int32 if dtype is np.int64 else dtype)  # I64 is computed as I32 (README, Protocol details)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


@dataclass(frozen=True)
class ClientCall:
    """One client's request: how many rows each input carries, and whether one input is the wrong width."""

    model: str
    rows: dict[str, int]
    protocol: str  # grpc or rest
    seed: int
    wrong_width: bool = False
    output_filter: tuple[str, ...] = ()

    def inputs(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        widened = next(iter(self.rows)) if self.wrong_width else None
        return {
            name: _random_values(rng, dtype, (self.rows[name], width + (name == widened)))
            for name, (dtype, width) in INPUT_SPECS[self.model].items()
        }

    def valid(self) -> bool:
        """JSON has no empty rows of a given width: `[]` is rank 1, so zero rows are gRPC only."""
        counts = set(self.rows.values())
        return len(counts) == 1 and not self.wrong_width and (self.protocol == "grpc" or counts != {0})

    def expected(self, inputs: dict[str, np.ndarray], digits_alone) -> dict[str, np.ndarray]:
        """The model's function on this request alone."""
        if self.model == "multi":
            outputs = {"sum": inputs["a"] + inputs["b"], "product": inputs["a"] * inputs["b"]}
        elif self.model == "types":
            outputs = {f"{name}_out": array for name, array in inputs.items()}
        elif self.model == "mapped":
            outputs = {"out": inputs["in"] * np.float32(3)}
        else:
            outputs = {"probabilities": digits_alone(inputs["x"])}
        return {name: outputs[name] for name in self.output_filter} if self.output_filter else outputs


def _grpc_call(stub, call: ClientCall, inputs: dict[str, np.ndarray]) -> tuple[Any, int]:
    """(outputs, batch size), or ((status code, details), 0) for an error."""
    request = predict_request(
        call.model, {name: content_tensor(array) for name, array in inputs.items()}, output_filter=call.output_filter
    )
    try:
        response, rpc = stub.Predict.with_call(request, timeout=30)
    except grpc.RpcError as error:
        return (error.code(), error.details()), 0
    return grpc_outputs(response), int(dict(rpc.trailing_metadata())["ovms-batch-size"])


def _rest_call(session: requests.Session, api: OvmsProcess, call: ClientCall, inputs: dict[str, np.ndarray]):
    body = {"inputs": {name: array.tolist() for name, array in inputs.items()}}
    reply = session.post(f"{api.rest_url}/v1/models/{call.model}:predict", json=body, timeout=30)
    if reply.status_code != 200:
        return (reply.status_code, reply.json()["error"]), 0
    outputs = reply.json()["outputs"]
    if not isinstance(outputs, dict):  # a single output is unnamed
        outputs = {OUTPUT_NAMES[call.model][0]: outputs}
    return {name: np.array(value) for name, value in outputs.items()}, int(reply.headers["X-Ovms-Batch-Size"])


def _check_answer(call: ClientCall, inputs: dict[str, np.ndarray], answer: Any, digits_alone) -> None:
    if not call.valid():
        expected_code = grpc.StatusCode.INVALID_ARGUMENT if call.protocol == "grpc" else 400
        assert isinstance(answer, tuple) and answer[0] == expected_code, (call, answer)
        if len(set(call.rows.values())) > 1 and not call.wrong_width and 0 not in call.rows.values():
            assert answer[1].startswith(MISMATCH), answer
        return
    assert isinstance(answer, dict), (call, answer)
    expected = call.expected(inputs, digits_alone)
    assert sorted(answer) == sorted(expected), call
    for name, want in expected.items():
        got = answer[name]
        assert got.shape == want.shape, (call, name, got.shape, want.shape)
        if call.model == "digits":
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"{call} {name}")
        else:
            np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=f"{call} {name}")


@pytest.fixture(scope="module")
def digits_alone(models_dir: Path):
    """The digits model compiled in the test process, run on one request at a time."""
    compiled = ov.Core().compile_model(str(models_dir / "digits" / "1" / "model.xml"), "CPU")
    return lambda x: compiled({0: x})[0]


@pytest.fixture(scope="module")
def clients(api: OvmsProcess, stub) -> Iterator:
    """Send client calls concurrently over their protocols; yields a function returning
    [(call, inputs, answer, batch size)]."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))
    with ThreadPoolExecutor(max_workers=32) as pool:

        def send(calls: list[ClientCall]) -> list[tuple[ClientCall, dict, Any, int]]:
            def one(call: ClientCall):
                inputs = call.inputs()
                if call.protocol == "grpc":
                    answer, batch = _grpc_call(stub, call, inputs)
                else:
                    answer, batch = _rest_call(session, api, call, inputs)
                return call, inputs, answer, batch

            return list(pool.map(one, calls))

        yield send
    session.close()


def test_an_attacker_mismatching_rows_reads_nothing_and_corrupts_nothing(worker, api, clients, digits_alone):
    """Issue 10's attack, batched for sure (the worker is frozen while they arrive): `multi` with `a` 1 row
    and `b` 0 rows beside 12 honest clients used to answer with their private `b` rows; `types` with one
    input of 2 rows used to give honest clients wrong or empty answers."""
    honest = [ClientCall("multi", {"a": 1, "b": 1}, "grpc", seed) for seed in range(12)]
    honest += [ClientCall("types", dict.fromkeys(TYPES_MODEL_INPUTS, 1), "grpc", 100 + seed) for seed in range(6)]
    attackers = [
        ClientCall("multi", {"a": 1, "b": 0}, "grpc", 1000),
        ClientCall("multi", {"a": 2, "b": 1}, "rest", 1001),
        ClientCall("types", {**dict.fromkeys(TYPES_MODEL_INPUTS, 1), "i8": 2}, "grpc", 1002),
    ]
    worker.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(max_workers=1) as waker:
            waker.submit(lambda: (time.sleep(1.0), worker.signal(signal.SIGCONT)))
            answers = clients([*honest[:6], *attackers, *honest[6:]])
    finally:
        worker.signal(signal.SIGCONT)
    for call, inputs, answer, _ in answers:
        _check_answer(call, inputs, answer, digits_alone)
    assert max(batch for *_, batch in answers) > 1


def test_a_message_that_skipped_the_api_cannot_mix_rows(worker, api, redis_url):
    """The worker validates and batches by construction too: a crafted message whose request has `a` with 1
    row and `b` with 0 rows fails that request alone, and its batch-mates get their own rows."""
    configure(redis_url)
    reply_to = f"ovms:reply:test-{uuid.uuid4().hex}"
    deadline = time.time() + 30
    pairs = {f"r.{n}": _pair_rows(n, rows) for n, rows in enumerate([1, 2, 1, 1])}
    pairs["r.attacker"] = {"a": np.ones((1, 2), np.float32), "b": np.zeros((0, 2), np.float32)}
    requests_ = [InferenceRequest("multi", 1, inputs, None, deadline, rid) for rid, inputs in pairs.items()]
    envelope, payload = pack_requests(requests_, {"a": "FP32", "b": "FP32"})
    PredictPublisher(app, store := store_client(redis_url), store).publish(
        "mix-" + uuid.uuid4().hex, envelope, payload, queue_for("CPU", "multi"), reply_to, 30
    )
    _, raw = redis.Redis.from_url(redis_url).brpop([reply_to], timeout=30)
    results = app.backend.decode(raw)["result"]["results"]
    assert results["r.attacker"]["error"][0] == "InvalidArgument"
    assert MISMATCH in results["r.attacker"]["error"][1]
    for rid, inputs in pairs.items():
        if rid != "r.attacker":
            outputs = ComputedOutputs.from_wire(results[rid]).arrays()
            np.testing.assert_array_equal(outputs["sum"], inputs["a"] + inputs["b"])
            np.testing.assert_array_equal(outputs["product"], inputs["a"] * inputs["b"])


def _pair_rows(seed: int, rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.random((rows, 2), np.float32), "b": rng.random((rows, 2), np.float32) + 1000}


@st.composite
def client_calls(draw: st.DrawFn) -> ClientCall:
    """Valid and invalid requests: rows per input 0-3, often disagreeing, now and then a wrong width."""
    model = draw(st.sampled_from(sorted(INPUT_SPECS)))
    names = list(INPUT_SPECS[model])
    rows = dict.fromkeys(names, draw(st.integers(0, 3)))
    if len(names) > 1 and draw(st.booleans()):
        rows[draw(st.sampled_from(names))] = draw(st.integers(0, 3))
    protocol = draw(st.sampled_from(["grpc", "rest"]))
    output_filter = ()
    if protocol == "grpc":
        output_filter = tuple(draw(st.lists(st.sampled_from(OUTPUT_NAMES[model]), unique=True, max_size=2)))
    return ClientCall(
        model, rows, protocol, draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 9)) == 0, output_filter
    )


def test_concurrent_mixes_of_clients_each_get_exactly_their_own_answer(worker, api, clients, digits_alone):
    """hypothesis draws groups of 4 to 16 concurrent requests over gRPC and REST to `multi`, `types`,
    `digits` and `mapped`; each answer must equal the model's function on that request alone."""
    batches: list[int] = []

    @settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.lists(client_calls(), min_size=4, max_size=16))
    def check(calls: list[ClientCall]) -> None:
        for call, inputs, answer, batch in clients(calls):
            _check_answer(call, inputs, answer, digits_alone)
            batches.append(batch)

    check()
    assert max(batches) > 1, "no two requests ever shared an inference: the test did not exercise batching"
