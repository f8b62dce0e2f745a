"""Request priorities and fair share end to end on a real stack (one worker, real models): a request may ask
for a level (the `OVMS-Priority` header, `ovms-priority` gRPC metadata, the v2 `priority` parameter), a model
has a default level, and under saturation by low-priority requests the high-priority ones go before their
backlog while the low ones still complete; a tenant's requests likewise go before another tenant's flood. Order
and counts are asserted, not timings."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

from api.protos import grpc_service_pb2, grpc_service_pb2_grpc
from api.protos.grpc_service_pb2 import InferParameter
from tests.support.load import GrpcLoad, Outcome, float_request
from tests.support.stack import OvmsProcess, private_redis, start_ovms

redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)

LOW_CLIENTS = 24
HIGH_REQUESTS = 12
SMALL = [[1.0, 2.0, 3.0, 4.0]]


@pytest.fixture(scope="module")
def stack(models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvmsProcess]:
    """One `ovms` (one worker): resnet at the default level, `low_default` (the versioned model) at level 3."""
    config = tmp_path_factory.mktemp("priorities") / "config.json"
    entries = [
        {"name": "resnet", "base_path": str(models_dir / "resnet")},
        {"name": "low_default", "base_path": str(models_dir / "versioned"), "default_priority": 3},
    ]
    config.write_text(json.dumps({"model_config_list": [{"config": entry} for entry in entries]}))
    process = start_ovms(["--config_path", str(config), "--broker_url", redis_url])
    yield process
    process.stop()


def _image() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (1, 3, 224, 224)).astype(np.float32)


def _predict_in_turn(address: str, count: int, metadata: tuple[tuple[str, str], ...]) -> list[Outcome]:
    """`count` resnet Predicts with `metadata` one after another, a little apart."""
    outcomes = []
    request = float_request("resnet", "data", _image())
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(count):
            started = time.monotonic()
            stub.Predict(request, timeout=60, metadata=metadata)
            outcomes.append(Outcome(started, time.monotonic(), "OK"))
            time.sleep(0.1)
    return outcomes


def _overtaken_share(high: Outcome, low: list[Outcome]) -> float:
    """Of the flood's requests waiting when `high` was sent, the share answered before it."""
    backlog = [o for o in low if o.started < high.started < o.finished]
    assert len(backlog) >= LOW_CLIENTS // 2, "the flooding clients keep a backlog"
    return sum(o.finished < high.finished for o in backlog) / len(backlog)


Metadata = tuple[tuple[str, str], ...]


def assert_served_before_a_flood(address: str, flood: Metadata, mine: Metadata) -> None:
    """With resnet saturated by LOW_CLIENTS sending `flood`, requests sent with `mine` are answered before most
    of the flood's backlog, while the flood still completes (nothing starves, nothing fails)."""
    request = float_request("resnet", "data", _image())
    load = GrpcLoad(address, request, LOW_CLIENTS, timeout_s=60, metadata=flood)
    load.start()
    try:
        time.sleep(3.0)  # every flooding client waits on the model: saturated
        served = _predict_in_turn(address, HIGH_REQUESTS, mine)
        time.sleep(0.5)
    finally:
        low = load.stop()
    shares = sorted(_overtaken_share(outcome, low) for outcome in served)
    assert shares[len(shares) // 2] < 0.5, f"most of the flood's backlog went first: {shares}"
    assert [o.code for o in low if o.code != "OK"] == [], "no request of the flood failed"
    during = [o for o in low if served[0].started < o.finished < served[-1].finished]
    assert len(during) >= HIGH_REQUESTS, "the flood still completed requests meanwhile (no starvation)"
    mine_s = sorted(o.seconds for o in served)[len(served) // 2]
    flood_s = sorted(o.seconds for o in during)[len(during) // 2]
    assert mine_s < flood_s, "they waited less than the flood's requests"


def test_high_priority_requests_go_before_a_low_priority_backlog_which_still_completes(stack: OvmsProcess) -> None:
    assert_served_before_a_flood(stack.grpc_address, (("ovms-priority", "3"),), (("ovms-priority", "1"),))


tenant_redis_url = pytest.fixture(scope="module", name="tenant_redis_url")(private_redis)  # not the other stack's


@pytest.fixture(scope="module")
def tenant_stack(
    models_dir: Path, tenant_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OvmsProcess]:
    """One `ovms` serving resnet to two tenants (api.tenants), with two CPU streams (the THROUGHPUT hint): two
    infer requests, one of which a flooding tenant leaves to the other (the priority stack's resnet has one, and
    shares it by short inferences instead)."""
    directory = tmp_path_factory.mktemp("tenants")
    tokens = directory / "tokens"
    tokens.write_text("flood-token-1 tenant=flood\nprobe-token-1 tenant=probe\n")
    config = directory / "config.json"
    entry = {
        "name": "resnet",
        "base_path": str(models_dir / "resnet"),
        "plugin_config": {"PERFORMANCE_HINT": "THROUGHPUT"},
    }
    config.write_text(json.dumps({"model_config_list": [{"config": entry}]}))
    args = ["--config_path", str(config), "--broker_url", tenant_redis_url, "--auth_token_file", str(tokens)]
    process = start_ovms(args)
    yield process
    process.stop()


def test_a_tenant_is_served_in_turn_beside_another_tenants_flood(tenant_stack: OvmsProcess) -> None:
    """Both at the default level: the flood's tenant has its own slots in the api and takes turns with the other
    in the worker's batcher (deficit round robin), so the other's requests pass its backlog."""
    flood = (("authorization", "Bearer flood-token-1"),)
    assert_served_before_a_flood(tenant_stack.grpc_address, flood, (("authorization", "Bearer probe-token-1"),))


def _metrics(stack: OvmsProcess) -> str:
    return requests.get(f"{stack.rest_url}/metrics", timeout=10).text


def _served_at(stack: OvmsProcess, model: str, level: int) -> float:
    prefix = f'ovms_requests_by_priority_total{{name="{model}",priority="{level}"}} '
    return next((float(line.split()[-1]) for line in _metrics(stack).splitlines() if line.startswith(prefix)), 0.0)


def test_a_request_that_asks_for_no_level_runs_at_its_models_default_and_is_counted_by_level(
    stack: OvmsProcess,
) -> None:
    url = f"{stack.rest_url}/v1/models/low_default:predict"
    before = {level: _served_at(stack, "low_default", level) for level in (1, 3)}
    assert requests.post(url, json={"instances": SMALL}, timeout=30).status_code == 200
    assert requests.post(url, json={"instances": SMALL}, headers={"OVMS-Priority": "0"}, timeout=30).ok
    assert requests.post(url, json={"instances": SMALL}, headers={"OVMS-Priority": "1"}, timeout=30).ok
    assert _served_at(stack, "low_default", 3) == before[3] + 2
    assert _served_at(stack, "low_default", 1) == before[1] + 1
    assert "ovms_queue_time_by_priority_us_bucket" in _metrics(stack)


BAD_TEXT = ["7", "-1", "abc", "1.5", "99999999999999999999999"]


@pytest.mark.parametrize("value", BAD_TEXT)
def test_a_bad_priority_header_is_400_on_both_rest_apis(stack: OvmsProcess, value: str) -> None:
    headers = {"OVMS-Priority": value}
    tfs = requests.post(
        f"{stack.rest_url}/v1/models/low_default:predict", json={"instances": SMALL}, headers=headers, timeout=30
    )
    v2_body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": SMALL[0]}]}
    v2 = requests.post(f"{stack.rest_url}/v2/models/low_default/infer", json=v2_body, headers=headers, timeout=30)
    for reply in (tfs, v2):
        assert reply.status_code == 400, reply.text
        assert "priority" in reply.json()["error"].lower()


@pytest.mark.parametrize("value", [4, -1, "2", True, 1.0])
def test_a_bad_v2_priority_parameter_is_400(stack: OvmsProcess, value: object) -> None:
    body = {
        "parameters": {"priority": value},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": SMALL[0]}],
    }
    reply = requests.post(f"{stack.rest_url}/v2/models/low_default/infer", json=body, timeout=30)
    assert reply.status_code == 400 and "priority" in reply.json()["error"], reply.text


def test_the_v2_parameter_wins_over_the_header(stack: OvmsProcess) -> None:
    body = {
        "parameters": {"priority": 1},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": SMALL[0]}],
    }
    before = _served_at(stack, "low_default", 1)
    reply = requests.post(
        f"{stack.rest_url}/v2/models/low_default/infer", json=body, headers={"OVMS-Priority": "9"}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    assert _served_at(stack, "low_default", 1) == before + 1


def _v2_request(parameter: InferParameter | None = None) -> grpc_service_pb2.ModelInferRequest:
    request = grpc_service_pb2.ModelInferRequest(model_name="low_default")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.array(SMALL, np.float32).tobytes())
    if parameter is not None:
        request.parameters["priority"].CopyFrom(parameter)
    return request


def test_bad_priorities_are_invalid_argument_on_both_grpc_apis_and_good_ones_are_served(stack: OvmsProcess) -> None:
    with grpc.insecure_channel(stack.grpc_address) as channel:
        tfs = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = float_request("low_default", "x", np.array(SMALL))
        for value in ("4", "x", "-2"):
            with pytest.raises(grpc.RpcError) as refused:
                tfs.Predict(request, timeout=30, metadata=(("ovms-priority", value),))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "priority" in refused.value.details()
        bad = (InferParameter(uint64_param=5), InferParameter(int64_param=-1), InferParameter(string_param="1"))
        for parameter in bad:
            with pytest.raises(grpc.RpcError) as refused:
                v2.ModelInfer(_v2_request(parameter), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "priority" in refused.value.details()
        with pytest.raises(grpc.RpcError) as refused:
            v2.ModelInfer(_v2_request(), timeout=30, metadata=(("ovms-priority", "0x1"),))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        before = _served_at(stack, "low_default", 1)
        tfs.Predict(request, timeout=30, metadata=(("ovms-priority", "1"),))
        v2.ModelInfer(_v2_request(InferParameter(uint64_param=1)), timeout=30)  # what tritonclient sends
        v2.ModelInfer(_v2_request(InferParameter(int64_param=1)), timeout=30)
        v2.ModelInfer(_v2_request(), timeout=30, metadata=(("ovms-priority", "1"),))
    assert _served_at(stack, "low_default", 1) == before + 4
