"""Steady gRPC load for fault tests: client threads send Predicts back to back and record each outcome."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
from ovmsclient.tfs_compat.protos.tensorflow.core.framework import tensor_shape_pb2, types_pb2
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    finished: float
    code: str  # grpc.StatusCode name, "OK" on success
    worker: str = ""  # the worker that answered (trailing metadata `ovms-worker`)
    detail: str = ""  # the error's message

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def float_request(model: str, name: str, array: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    tensor = request.inputs[name]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_content = array.astype(np.float32).tobytes()
    tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape)
    return request


class GrpcLoad:
    """`threads` clients sending `request` back to back (each with `timeout_s` and `metadata`) from `start()` to
    `stop()`."""

    def __init__(
        self,
        address: str,
        request: predict_pb2.PredictRequest,
        threads: int = 8,
        timeout_s: float = 20,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._request = request
        self._timeout_s = timeout_s
        self._metadata = metadata or None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> GrpcLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._timeout_s + 5)
        self._channel.close()
        return self.outcomes

    def codes(self, since: float = 0.0, until: float = float("inf")) -> dict[str, int]:
        """How many requests started in [since, until) ended with each code."""
        counts: dict[str, int] = {}
        with self._lock:
            for outcome in self.outcomes:
                if since <= outcome.started < until:
                    counts[outcome.code] = counts.get(outcome.code, 0) + 1
        return counts

    def failures(self) -> list[tuple[float, str, str]]:
        """(started, code, message) of every request that failed."""
        with self._lock:
            return [(o.started, o.code, o.detail) for o in self.outcomes if o.code != "OK"]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                _, call = self._stub.Predict.with_call(self._request, timeout=self._timeout_s, metadata=self._metadata)
                worker = dict(call.trailing_metadata() or ()).get("ovms-worker", "")
                outcome = Outcome(started, time.monotonic(), "OK", worker)
            except grpc.RpcError as error:
                outcome = Outcome(started, time.monotonic(), error.code().name, detail=error.details() or "")
                time.sleep(0.01)  # a failing server answers at once: do not spin
            with self._lock:
                self.outcomes.append(outcome)
