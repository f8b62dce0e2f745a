"""A full model queue answers at once with RESOURCE_EXHAUSTED / 429 and Retry-After; nothing is lost."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from ovmsclient.tfs_compat.protos.tensorflow.core.framework import tensor_shape_pb2, types_pb2
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from api.protos import grpc_service_pb2, grpc_service_pb2_grpc
from tests.support.stack import private_redis, worker_and_api

redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)


@pytest.fixture(scope="module")
def stack(models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    config = tmp_path_factory.mktemp("backpressure") / "config.json"
    entry = {"name": "small", "base_path": str(models_dir / "versioned"), "max_queue_size": 4}
    config.write_text(json.dumps({"model_config_list": [{"config": entry}]}))
    args = ["--config_path", str(config), "--broker_url", redis_url]
    with worker_and_api(args) as (worker, api):
        yield api, worker


def _grpc_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "small"
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_content = np.ones((1, 4), np.float32).tobytes()
    tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in (1, 4))
    return request


def _v2_request() -> grpc_service_pb2.ModelInferRequest:
    request = grpc_service_pb2.ModelInferRequest(model_name="small")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request


def test_a_full_queue_refuses_at_once_and_the_accepted_requests_complete(stack):
    api, worker = stack
    assert requests.post(f"{api.rest_url}/v1/models/small:predict", json={"instances": [[1] * 4]}, timeout=10).ok
    worker.signal(signal.SIGSTOP)  # the in-flight slots fill, then the api's queue, then refusals
    session = requests.Session()

    def rest(_: int) -> tuple[int, str | None, float]:
        started = time.monotonic()
        reply = session.post(f"{api.rest_url}/v1/models/small:predict", json={"instances": [[1] * 4]}, timeout=30)
        return reply.status_code, reply.headers.get("Retry-After"), time.monotonic() - started

    with ThreadPoolExecutor(max_workers=24) as pool:
        pending = [pool.submit(rest, i) for i in range(24)]
        time.sleep(1.5)
        with grpc.insecure_channel(api.grpc_address) as channel, pytest.raises(grpc.RpcError) as refused:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_grpc_request(), timeout=10)
        with grpc.insecure_channel(api.grpc_address) as channel, pytest.raises(grpc.RpcError) as refused_v2:
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_v2_request(), timeout=10)
        worker.signal(signal.SIGCONT)
        outcomes = [future.result(timeout=60) for future in pending]
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused_v2.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # as TF Serving's (Triton: UNAVAILABLE)
    refusals = [outcome for outcome in outcomes if outcome[0] == 429]
    assert refusals and all(retry == "1" and took < 1.0 for _, retry, took in refusals)
    assert {status for status, _, _ in outcomes} <= {200, 429}, "every request is answered or refused"
    assert sum(1 for status, _, _ in outcomes if status == 200) >= 4
