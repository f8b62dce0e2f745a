"""TensorFlow Serving gRPC services on grpc.aio: translate protos, call the data plane, translate back.

Handlers run on the event loop; whatever blocks or costs CPU (decoding and validating tensors,
publishing to Redis, registry look-ups that may read Redis, encoding large outputs) runs on a thread
pool, and a Predict waits for its answer without holding a thread.
"""

from __future__ import annotations

from typing import Any

import grpc

from api.grpc_codec import signature_def, status_code, tensor_from_proto, tensor_to_proto
from api.grpc_limits import deadline_s
from api.grpc_servicer import LARGE_RESPONSE_BYTES, Servicer, metadata_priority, serving_errors
from api.metrics import Tracker
from api.protos import serving_pb2, serving_pb2_grpc
from inference.errors import InvalidArgument
from inference.request import InferenceResult

SIGNATURE_NAME = "serving_default"


def _requested_version(spec: serving_pb2.ModelSpec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


class _TfServingServicer(Servicer):
    interface = "grpc"

    def model_name(self, request: Any) -> str:
        return request.model_spec.name


class PredictionService(_TfServingServicer, serving_pb2_grpc.PredictionServiceServicer):
    @serving_errors
    async def Predict(
        self, request: serving_pb2.PredictRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> serving_pb2.PredictResponse:
        result = await self._dataplane.inference.predict_async(
            self._executor,
            request.model_spec.name,
            _requested_version(request.model_spec),
            lambda: {name: tensor_from_proto(proto) for name, proto in request.inputs.items()},
            request.ByteSize(),
            list(request.output_filter),
            deadline_s(context),
            metadata_priority(context),
        )
        if sum(array.nbytes for array in result.outputs.values()) > LARGE_RESPONSE_BYTES:
            response = await self._off_loop(_predict_response, request, result)
        else:
            response = _predict_response(request, result)
        context.set_trailing_metadata((("ovms-worker", result.worker), ("ovms-batch-size", str(result.batch_size))))
        tracker.done(result.version, result)
        return response

    @serving_errors
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


class ModelService(_TfServingServicer, serving_pb2_grpc.ModelServiceServicer):
    @serving_errors
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
