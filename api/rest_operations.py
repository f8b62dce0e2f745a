"""REST routes for operating the server: health, configuration, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.dataplane import DataPlane
from api.metrics import ServingMetrics
from api.rest_http import json_response, without_redis
from api.rest_models import status_json

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")  # served as JSON at /v1/openapi.json


def operations_blueprint(dataplane: DataPlane, metrics: ServingMetrics) -> Blueprint:
    routes = Blueprint("operations", __name__)
    openapi = load_openapi()

    @routes.get("/v1/health/live")
    @without_redis
    def live() -> Response:
        return json_response({"status": "live"})

    @routes.get("/v1/health/ready")
    @without_redis
    def ready() -> Response:
        is_ready, models = dataplane.readiness.check()
        return json_response({"ready": is_ready, "models": models}, 200 if is_ready else 503)

    @routes.get("/v1/config")
    def config() -> Response:
        return json_response(_config_json(dataplane))

    @routes.get("/v1/status")
    def status() -> Response:
        return json_response(dataplane.statistics.cluster_status())

    @routes.post("/v1/config/reload")
    def reload_config() -> Response:
        changed = dataplane.models.reload_config()
        return json_response(_config_json(dataplane), 201 if changed else 200)

    @routes.get("/metrics")
    @without_redis
    def prometheus() -> Response:
        return Response(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)  # as is: mimetype= adds a charset

    @routes.get("/v1/openapi.json")
    @without_redis
    def openapi_document() -> Response:
        return json_response(openapi)

    return routes


def load_openapi() -> dict[str, Any]:
    """The OpenAPI document of this API."""
    return yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))


def _config_json(dataplane: DataPlane) -> dict[str, Any]:
    """OVMS's GET /v1/config: model name -> its version statuses."""
    return {name: status_json(statuses) for name, statuses in dataplane.models.config_status().items()}
