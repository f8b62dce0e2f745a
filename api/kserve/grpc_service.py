"""The KServe v2 gRPC service (`inference.GRPCInferenceService`, as Triton and OpenVINO Model Server
serve it) on grpc.aio, beside TensorFlow Serving's on the same port and data plane: translate the
protos, call the data plane, translate back.

As in api.grpc_service, whatever blocks or costs CPU runs on the thread pool, and a ModelInfer waits for
its answer without holding a thread. ServerLive and ServerReady answer on the event loop from what the
gRPC health service reports (api.health), so probes, which need no token, cost no thread and no Redis
read.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format

from api.dataplane import DataPlane
from api.grpc_limits import CallLimit, deadline_s
from api.grpc_servicer import LARGE_RESPONSE_BYTES, Servicer, metadata_priority, serving_errors
from api.kserve import model_info, repository
from api.kserve.grpc_codec import infer_inputs, infer_response, parameter_values, requested_outputs
from api.kserve.request_fields import model_version, request_id, timeout_s
from api.metrics import ServingMetrics, Tracker
from api.priority import PRIORITY_PARAMETER, priority_parameter
from api.protos import grpc_service_pb2 as pb
from api.protos import grpc_service_pb2_grpc

SERVICE_NAME = "inference.GRPCInferenceService"
STREAM_UNSUPPORTED = "ModelStreamInfer is not supported by this server (it serves no decoupled model): use ModelInfer"
SHARED_MEMORY_UNSUPPORTED = "{} shared memory is not supported by this server: send tensors in the request"
TRACE_UNSUPPORTED = "Tracing is not supported by this server: its Prometheus metrics time every request"
LOG_SETTINGS_UNSUPPORTED = "Log settings are not changed at run time: start the server with --log_level"


def _unimplemented(reason: str) -> Callable[..., Any]:
    """An RPC of the protocol this server does not serve: UNIMPLEMENTED with the reason."""

    async def refuse(self: KServeService, request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, reason)

    return refuse


class KServeService(Servicer, grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    interface = "v2-grpc"

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: ServingMetrics,
        executor: Executor,
        calls: CallLimit,
        server_ready: Callable[[], bool],
    ) -> None:
        """`server_ready()`: whether the gRPC health service reports SERVING."""
        super().__init__(dataplane, metrics, executor, calls)
        self._server_ready = server_ready

    def model_name(self, request: Any) -> str:
        fields = request.DESCRIPTOR.fields_by_name
        return request.model_name if "model_name" in fields else request.name if "name" in fields else ""

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._server_ready())

    @serving_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> pb.ModelReadyResponse:
        """False for a model or version nobody knows, as Triton answers."""
        version = model_version(request.version)
        reason = await self._off_loop(repository.not_ready_reason, self._dataplane.models, request.name, version)
        tracker.done(version if reason is None else None)  # a metric label only for a version that serves
        return pb.ModelReadyResponse(ready=reason is None)

    @serving_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> pb.ServerMetadataResponse:
        document = model_info.server_metadata(model_info.server_version(), model_info.EXTENSIONS)
        return json_format.ParseDict(document, pb.ServerMetadataResponse())

    @serving_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> pb.ModelMetadataResponse:
        version = model_version(request.version)
        resolved, document = await self._off_loop(
            repository.model_metadata, self._dataplane.models, request.name, version
        )
        tracker.done(resolved)
        return json_format.ParseDict(document, pb.ModelMetadataResponse())

    @serving_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> pb.ModelConfigResponse:
        version = model_version(request.version)
        resolved, document = await self._off_loop(
            repository.model_config, self._dataplane.models, request.name, version
        )
        tracker.done(resolved)
        return json_format.ParseDict({"config": document}, pb.ModelConfigResponse())

    @serving_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> pb.ModelInferResponse:
        version = model_version(request.model_version)
        request_id(request.id)
        parameters = parameter_values(request.parameters, "the request")
        timeout = timeout_s(parameters)
        priority = priority_parameter(parameters.get(PRIORITY_PARAMETER))
        outputs = requested_outputs(request)
        deadline = deadline_s(context)
        result = await self._dataplane.inference.predict_async(
            self._executor,
            request.model_name,
            version,
            lambda: infer_inputs(request),
            request.ByteSize(),
            outputs,
            min((t for t in (timeout, deadline) if t is not None), default=None),
            priority if priority is not None else metadata_priority(context),
        )
        if sum(array.nbytes for array in result.outputs.values()) > LARGE_RESPONSE_BYTES:
            response = await self._off_loop(infer_response, request, result, outputs)
        else:
            response = infer_response(request, result, outputs)
        context.set_trailing_metadata((("ovms-worker", result.worker), ("ovms-batch-size", str(result.batch_size))))
        tracker.done(result.version, result)
        return response

    ModelStreamInfer = _unimplemented(STREAM_UNSUPPORTED)

    @serving_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> pb.ModelStatisticsResponse:
        version = model_version(request.version)
        statistics = self._dataplane.statistics.model_statistics
        document = await self._off_loop(statistics, request.name or None, version)
        return json_format.ParseDict(document, pb.ModelStatisticsResponse())

    @serving_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> pb.RepositoryIndexResponse:
        """One repository (config.json): `repository_name` is not looked at."""
        entries = await self._off_loop(repository.repository_index, self._dataplane.models, request.ready)
        return json_format.ParseDict({"models": entries}, pb.RepositoryIndexResponse())

    @serving_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> pb.RepositoryModelLoadResponse:
        timeout = deadline_s(context) or repository.LOAD_TIMEOUT_S
        load = repository.load_model
        await self._off_loop(load, self._dataplane.models, request.model_name, list(request.parameters), timeout)
        return pb.RepositoryModelLoadResponse()

    @serving_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext, tracker: Tracker
    ) -> NoReturn:
        """Refused: UNIMPLEMENTED (NOT_FOUND for an unknown model)."""
        await self._off_loop(repository.unload_model, self._dataplane.models, request.model_name)

    SystemSharedMemoryStatus = _unimplemented(SHARED_MEMORY_UNSUPPORTED.format("System"))
    SystemSharedMemoryRegister = _unimplemented(SHARED_MEMORY_UNSUPPORTED.format("System"))
    SystemSharedMemoryUnregister = _unimplemented(SHARED_MEMORY_UNSUPPORTED.format("System"))
    CudaSharedMemoryStatus = _unimplemented(SHARED_MEMORY_UNSUPPORTED.format("CUDA"))
    CudaSharedMemoryRegister = _unimplemented(SHARED_MEMORY_UNSUPPORTED.format("CUDA"))
    CudaSharedMemoryUnregister = _unimplemented(SHARED_MEMORY_UNSUPPORTED.format("CUDA"))
    TraceSetting = _unimplemented(TRACE_UNSUPPORTED)
    LogSettings = _unimplemented(LOG_SETTINGS_UNSUPPORTED)
