"""The REST app on Flask: TensorFlow Serving's REST API and more, as blueprints over the data plane
(api.dataplane): models (api.rest_models), jobs (api.rest_jobs) and operations (api.rest_operations:
health, config, metrics); and the Open Inference Protocol (KServe v2): models (api.kserve.rest_models),
server and repository (api.kserve.rest_operations) and statistics (api.kserve.rest_statistics). Every error
becomes {"error": ...} with its status in one handler here."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from api.auth import BearerTokens
from api.dataplane import DataPlane
from api.kserve.rest_models import v2_models_blueprint
from api.kserve.rest_operations import v2_operations_blueprint
from api.kserve.rest_statistics import statistics_blueprint
from api.metrics import ServingMetrics
from api.rest_http import json_response, needs_redis
from api.rest_jobs import jobs_blueprint
from api.rest_limits import RETRY_AFTER_S, body_too_large_message
from api.rest_models import Segment, models_blueprint
from api.rest_operations import operations_blueprint
from inference.errors import ServingError
from tasks.link import OUTAGES

log = logging.getLogger("serving")

_ERROR_HEADERS = {
    429: {"Retry-After": str(RETRY_AFTER_S)},  # a full queue
    503: {"Retry-After": str(RETRY_AFTER_S)},  # a model without workers
}


def create_app(
    dataplane: DataPlane, metrics: ServingMetrics, max_request_bytes: int, tokens: BearerTokens | None = None
) -> Flask:
    """The REST app. Bodies above `max_request_bytes` are refused (413) before they are read, and it
    also bounds what an .npz job upload may unpack to; `tokens` (checked on the request head in front
    of the app: api.rest_limits) tell which caller owns which job."""
    app = Flask("ovms", static_folder=None)  # no static files: nothing beside the API is served
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.url_map.converters["segment"] = Segment
    app.register_blueprint(models_blueprint(dataplane, metrics))
    app.register_blueprint(jobs_blueprint(dataplane, max_request_bytes, tokens))
    app.register_blueprint(operations_blueprint(dataplane, metrics))
    app.register_blueprint(v2_models_blueprint(dataplane, metrics))
    app.register_blueprint(v2_operations_blueprint(dataplane))
    app.register_blueprint(statistics_blueprint(dataplane, metrics))

    @app.before_request
    def redis_reachable() -> None:
        """While Redis is unreachable, routes that need it answer 503 at once (see tasks.link)."""
        if needs_redis(app.view_functions.get(request.endpoint or "")):
            dataplane.link.check()

    app.register_error_handler(Exception, _error_handler(dataplane, max_request_bytes))
    return app


def _error_handler(dataplane: DataPlane, max_request_bytes: int) -> Callable[[Exception], Response]:
    """Every error as {"error": message} with its HTTP status: ServingErrors (api.dataplane), Redis
    outages met outside it, routing and size errors, and anything unexpected (a 500, logged)."""

    def error_response(exc: Exception) -> Response:
        if isinstance(exc, OUTAGES):
            exc = dataplane.link.failed(exc)
        if isinstance(exc, ServingError):
            return _serving_error(exc)
        if isinstance(exc, MethodNotAllowed):
            return json_response({"error": "Method Not Allowed"}, 405, {"Allow": ", ".join(exc.valid_methods or [])})
        if isinstance(exc, HTTPException) and exc.code == 404:
            return json_response({"error": "Not Found"}, 404)
        if isinstance(exc, HTTPException) and exc.code == 413:
            return json_response({"error": body_too_large_message(max_request_bytes)}, 413)
        log.exception("Unexpected REST error")
        return json_response({"error": f"Internal error: {exc}"}, 500)

    return error_response


def _serving_error(error: ServingError) -> Response:
    headers = _ERROR_HEADERS.get(error.http_status)
    if error.retry_after_s is not None:  # e.g. a full job backlog (tasks.jobs), a model still loading
        headers = {"Retry-After": str(error.retry_after_s)}
    return json_response({"error": error.message}, error.http_status, headers)
