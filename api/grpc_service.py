"""TensorFlow Serving gRPC services on grpc.aio: translate protos, call the data plane, translate back.

Handlers run on the event loop; whatever blocks or costs CPU (decoding and validating tensors,
publishing to Redis, registry look-ups that may read Redis, encoding large outputs) runs on a thread
pool, and a Predict waits for its answer without holding a thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from api.dataplane import DataPlane
from api.grpc_codec import signature_def, status_code, tensor_from_proto, tensor_to_proto
from api.grpc_limits import CallLimit
from api.metrics import ServingMetrics, Tracker
from api.protos import serving_pb2, serving_pb2_grpc
from inference.errors import Internal, InvalidArgument, ServingError
from inference.request import InferenceResult

log = logging.getLogger("serving")

SIGNATURE_NAME = "serving_default"
_NO_DEADLINE_S = 1e6  # grpc reports a huge time_remaining() when the client set no deadline
LARGE_RESPONSE_BYTES = 1 << 20  # outputs above this are encoded off the event loop
T = TypeVar("T")


def _requested_version(spec: serving_pb2.ModelSpec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


class _Servicer:
    """What the services share: the data plane, the metrics, the thread pool that runs anything blocking
    or CPU-heavy off the event loop, and the bounds on calls."""

    def __init__(self, dataplane: DataPlane, metrics: ServingMetrics, executor: Executor, calls: CallLimit) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        self._executor = executor
        self._calls = calls

    async def _off_loop(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(function, *args))


def _serving_errors(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Bound, count and time the call, and turn ServingErrors into gRPC status codes; anything unexpected
    is INTERNAL, never a crash. The method reports what it served to the tracker it is given."""

    async def wrapper(self: _Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            with self._metrics.track("grpc", method.__name__, request.model_spec.name) as tracker, self._calls.admit():
                return await method(self, request, context, tracker)
        except ServingError as error:
            await context.abort(grpc.StatusCode[error.grpc_code], error.message)
        except Exception as exc:
            log.exception("Unexpected error in %s", method.__name__)
            error = Internal(f"Internal error: {exc}")
            await context.abort(grpc.StatusCode.INTERNAL, error.message)

    wrapper.__name__ = method.__name__
    return wrapper


class PredictionService(_Servicer, serving_pb2_grpc.PredictionServiceServicer):
    @_serving_errors
    async def Predict(
        self, request: serving_pb2.PredictRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> serving_pb2.PredictResponse:
        remaining = context.time_remaining()
        result = await self._dataplane.inference.predict_async(
            self._executor,
            request.model_spec.name,
            _requested_version(request.model_spec),
            lambda: {name: tensor_from_proto(proto) for name, proto in request.inputs.items()},
            request.ByteSize(),
            list(request.output_filter),
            remaining if remaining is not None and remaining < _NO_DEADLINE_S else None,
        )
        if sum(array.nbytes for array in result.outputs.values()) > LARGE_RESPONSE_BYTES:
            response = await self._off_loop(_predict_response, request, result)
        else:
            response = _predict_response(request, result)
        context.set_trailing_metadata((("ovms-worker", result.worker), ("ovms-batch-size", str(result.batch_size))))
        tracker.done(result.version, result)
        return response

    @_serving_errors
    async def GetModelMetadata(
        self, request: serving_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> serving_pb2.GetModelMetadataResponse:
        return await self._off_loop(self._model_metadata, request, tracker)

    def _model_metadata(
        self, request: serving_pb2.GetModelMetadataRequest, tracker: Tracker
    ) -> serving_pb2.GetModelMetadataResponse:
        if list(request.metadata_field) != ["signature_def"]:
            raise InvalidArgument("Invalid signature name")
        version, signature = self._dataplane.models.model_metadata(
            request.model_spec.name, _requested_version(request.model_spec)
        )
        response = serving_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        signature_map = serving_pb2.SignatureDefMap()
        signature_map.signature_def[SIGNATURE_NAME].CopyFrom(signature_def(signature))
        response.metadata["signature_def"].Pack(signature_map)
        tracker.done(version)
        return response


def _predict_response(request: serving_pb2.PredictRequest, result: InferenceResult) -> serving_pb2.PredictResponse:
    response = serving_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = result.version
    response.model_spec.signature_name = SIGNATURE_NAME
    for name, array in result.outputs.items():
        response.outputs[name].CopyFrom(tensor_to_proto(array, result.precisions[name]))
    return response


class ModelService(_Servicer, serving_pb2_grpc.ModelServiceServicer):
    @_serving_errors
    async def GetModelStatus(
        self, request: serving_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> serving_pb2.GetModelStatusResponse:
        return await self._off_loop(self._model_status, request, tracker)

    def _model_status(
        self, request: serving_pb2.GetModelStatusRequest, tracker: Tracker
    ) -> serving_pb2.GetModelStatusResponse:
        statuses = self._dataplane.models.model_status(request.model_spec.name, _requested_version(request.model_spec))
        response = serving_pb2.GetModelStatusResponse()
        for status in statuses:
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = serving_pb2.ModelVersionStatus.State.Value(status.state)
            entry.status.error_code = status_code(status.error_code)
            entry.status.error_message = status.error_message
        tracker.done(_requested_version(request.model_spec))
        return response
