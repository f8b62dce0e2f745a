"""REST routes of the server in the Open Inference Protocol (KServe v2): its metadata, health (the same
truth as /v1/health/*: api.dataplane.readiness), and the model repository extension (api.kserve.repository)."""

from __future__ import annotations

from typing import NoReturn

from flask import Blueprint, Response, request

from api.dataplane import DataPlane
from api.kserve import repository
from api.kserve.model_info import EXTENSIONS, server_metadata, server_version
from api.rest_http import header_timeout_s, json_response, parse_json, without_redis
from inference.errors import InvalidArgument


def v2_operations_blueprint(dataplane: DataPlane) -> Blueprint:
    routes = Blueprint("v2_operations", __name__)
    metadata = server_metadata(server_version(), EXTENSIONS)

    @routes.get("/v2")
    @without_redis
    def server() -> Response:
        return json_response(metadata)

    @routes.get("/v2/health/live")
    @without_redis
    def live() -> Response:
        return json_response({"live": True})

    @routes.get("/v2/health/ready")
    @without_redis
    def ready() -> Response:
        """200, or 400 when not ready: the protocol's (and Triton's) "false" is a 4xx status."""
        is_ready, models = dataplane.readiness.check()
        if is_ready:
            return json_response({"ready": True})
        waiting = [name for name, serves in models.items() if not serves]
        why = f"models not ready: {', '.join(waiting)}" if waiting else "no model to serve, or the api is draining"
        return json_response({"error": f"Server not ready: {why}"}, 400)

    @routes.post("/v2/repository/index")
    def repository_index() -> Response:
        ready_only = _optional_body().get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidArgument("Unable to parse 'ready': true or false")
        return json_response(repository.repository_index(dataplane.models, ready_only))

    @routes.post("/v2/repository/models/<segment:name>/load")
    def load(name: str) -> Response:
        """Answers once the model serves, within X-Request-Timeout if given (else LOAD_TIMEOUT_S)."""
        parameters = _optional_body().get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidArgument("Unable to parse 'parameters': a JSON object")
        timeout = header_timeout_s() or repository.LOAD_TIMEOUT_S
        repository.load_model(dataplane.models, name, list(parameters), timeout)
        return json_response({})

    @routes.post("/v2/repository/models/<segment:name>/unload")
    def unload(name: str) -> NoReturn:
        repository.unload_model(dataplane.models, name)

    return routes


def _optional_body() -> dict:
    """The JSON object of a body that may be empty, as the repository routes take them."""
    raw = request.get_data(cache=False)
    document = parse_json(raw) if raw.strip() else {}
    if not isinstance(document, dict):
        raise InvalidArgument("Invalid request body: a JSON object")
    return document
