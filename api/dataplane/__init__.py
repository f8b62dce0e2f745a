"""The protocol-neutral data plane: services with one job each, built once by api.server.ApiServer and
injected into every frontend (REST: api.rest_app, gRPC: api.grpc_service), which only translate their
protocol to calls on these services and back.

- inference (api.dataplane.inference): resolve the model version, validate, dispatch, await.
- models (api.dataplane.models): the model repository as the live workers report it: statuses,
  metadata, the configuration and its reload.
- jobs (api.dataplane.jobs): validate and queue many samples as a job; its status, result, cancel.
- readiness (api.dataplane.readiness): whether this api serves every model it must.
- statistics (api.dataplane.statistics): per model version inference statistics, as Triton reports them.
- admission (api.admission): draining, and the in-flight byte budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.admission import Admission
from api.dataplane.inference import InferenceService
from api.dataplane.jobs import JobService
from api.dataplane.models import ModelRepository
from api.dataplane.readiness import Readiness
from api.dataplane.statistics import StatisticsService
from tasks.link import RedisLink


@dataclass(frozen=True)
class DataPlane:
    """Every service a frontend calls, and the Redis link they share (its routes check it up front)."""

    inference: InferenceService
    models: ModelRepository
    jobs: JobService
    readiness: Readiness
    statistics: StatisticsService
    admission: Admission
    link: RedisLink
