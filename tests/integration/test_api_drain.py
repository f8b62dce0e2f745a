"""SIGTERM on an api process: readiness turns false, new work is refused, in-flight requests finish,
then it exits."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

from api.protos import grpc_service_pb2, grpc_service_pb2_grpc
from tests.support.load import float_request
from tests.support.stack import private_redis, wait_for_workers, worker_and_api

redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)

REQUEST = float_request("versioned", "x", np.ones((1, 4)))
V2_REQUEST = grpc_service_pb2.ModelInferRequest(
    model_name="versioned",
    inputs=[grpc_service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])],
    raw_input_contents=[np.ones((1, 4), np.float32).tobytes()],
)


def test_sigterm_api_drains_in_flight_requests_then_exits(small_config: Path, redis_url: str):
    args = ["--config_path", str(small_config), "--broker_url", redis_url]
    with worker_and_api(args) as (worker, api):
        wait_for_workers(api, 1)
        channel = grpc.insecure_channel(api.grpc_address)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(REQUEST, timeout=10)
        worker.signal(signal.SIGSTOP)  # the next request stays in flight until the worker resumes
        in_flight: dict[str, object] = {}
        caller = threading.Thread(target=lambda: in_flight.update(reply=stub.Predict(REQUEST, timeout=30)))
        caller.start()
        time.sleep(0.5)

        api.process.send_signal(signal.SIGTERM)
        api.wait_for_log("Draining: 1 request(s) in progress", timeout_s=5)
        ready = requests.get(f"{api.rest_url}/v1/health/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["ready"] is False
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(REQUEST, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in refused.value.details()
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)  # KServe v2 on the same port, the same way
        assert not v2.ServerReady(grpc_service_pb2.ServerReadyRequest(), timeout=5).ready
        with pytest.raises(grpc.RpcError) as refused:
            v2.ModelInfer(V2_REQUEST, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in refused.value.details()
        body = {"instances": [[1, 2, 3, 4]]}
        rest = requests.post(f"{api.rest_url}/v1/models/versioned:predict", json=body, timeout=5)
        assert rest.status_code == 503 and "shutting down" in rest.json()["error"]
        assert api.process.poll() is None, "the api must wait for its in-flight request"

        worker.signal(signal.SIGCONT)
        caller.join(timeout=10)
        assert "reply" in in_flight, "the in-flight request did not complete"
        assert api.process.wait(timeout=10) == 0
        assert "Api stopped" in api.log()
        channel.close()
