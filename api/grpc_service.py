"""TensorFlow Serving gRPC services: translate protos, call the data plane, translate back."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from api.dataplane import DataPlane
from api.grpc_codec import signature_def, status_code, tensor_from_proto, tensor_to_proto
from api.metrics import ServingMetrics, Tracker
from api.protos import serving_pb2, serving_pb2_grpc
from inference.errors import Internal, InvalidArgument, ServingError

log = logging.getLogger("serving")

SIGNATURE_NAME = "serving_default"
_NO_DEADLINE_S = 1e6  # grpc reports a huge time_remaining() when the client set no deadline


def _requested_version(spec: serving_pb2.ModelSpec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


def _serving_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Count and time the call, and turn ServingErrors into gRPC status codes; anything unexpected is
    INTERNAL, never a crash. The method reports what it served to the tracker it is given."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            with self._metrics.track("grpc", method.__name__, request.model_spec.name) as tracker:
                return method(self, request, context, tracker)
        except ServingError as error:
            context.abort(grpc.StatusCode[error.grpc_code], error.message)
        except Exception as exc:
            log.exception("Unexpected error in %s", method.__name__)
            error = Internal(f"Internal error: {exc}")
            context.abort(grpc.StatusCode.INTERNAL, error.message)

    wrapper.__name__ = method.__name__
    return wrapper


class PredictionService(serving_pb2_grpc.PredictionServiceServicer):
    def __init__(self, dataplane: DataPlane, metrics: ServingMetrics) -> None:
        self._dataplane = dataplane
        self._metrics = metrics

    @_serving_errors
    def Predict(
        self, request: serving_pb2.PredictRequest, context: grpc.ServicerContext, tracker: Tracker
    ) -> serving_pb2.PredictResponse:
        remaining = context.time_remaining()
        result = self._dataplane.predict(
            request.model_spec.name,
            _requested_version(request.model_spec),
            {name: tensor_from_proto(proto) for name, proto in request.inputs.items()},
            list(request.output_filter),
            remaining if remaining is not None and remaining < _NO_DEADLINE_S else None,
        )
        response = serving_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = result.version
        response.model_spec.signature_name = SIGNATURE_NAME
        for name, array in result.outputs.items():
            response.outputs[name].CopyFrom(tensor_to_proto(array, result.precisions[name]))
        context.set_trailing_metadata((("ovms-worker", result.worker), ("ovms-batch-size", str(result.batch_size))))
        tracker.done(result.version, result)
        return response

    @_serving_errors
    def GetModelMetadata(
        self, request: serving_pb2.GetModelMetadataRequest, context: grpc.ServicerContext, tracker: Tracker
    ) -> serving_pb2.GetModelMetadataResponse:
        if list(request.metadata_field) != ["signature_def"]:
            raise InvalidArgument("Invalid signature name")
        version, signature = self._dataplane.model_metadata(
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


class ModelService(serving_pb2_grpc.ModelServiceServicer):
    def __init__(self, dataplane: DataPlane, metrics: ServingMetrics) -> None:
        self._dataplane = dataplane
        self._metrics = metrics

    @_serving_errors
    def GetModelStatus(
        self, request: serving_pb2.GetModelStatusRequest, context: grpc.ServicerContext, tracker: Tracker
    ) -> serving_pb2.GetModelStatusResponse:
        statuses = self._dataplane.model_status(request.model_spec.name, _requested_version(request.model_spec))
        response = serving_pb2.GetModelStatusResponse()
        for status in statuses:
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = serving_pb2.ModelVersionStatus.State.Value(status.state)
            entry.status.error_code = status_code(status.error_code)
            entry.status.error_message = status.error_message
        tracker.done(_requested_version(request.model_spec))
        return response
