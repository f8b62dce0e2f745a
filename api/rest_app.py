"""TensorFlow Serving REST API on Flask: status, metadata and predict."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import MethodNotAllowed

from api.dataplane import DataPlane, VersionStatus
from api.grpc_service import SIGNATURE_NAME
from api.metrics import ServingMetrics
from api.rest_codec import parse_predict_body, predict_response
from inference import dtypes
from inference.errors import InvalidArgument, NotFound, ServingError
from inference.request import InferenceResult
from inference.signature import ModelSignature

log = logging.getLogger("serving")

# /v1/models/{name}[/versions/{version}][/metadata | :predict]
_MODEL_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<action>/metadata|:predict)?$")
_METHODS = {":predict": "Predict", "/metadata": "GetModelMetadata", None: "GetModelStatus"}
TIMEOUT_HEADER = "X-Request-Timeout"  # seconds; REST clients' counterpart of a gRPC deadline
MAX_TIMEOUT_S = 1e6  # larger (or infinite) deadlines overflow the Redis expiry of the request's tensors
WORKER_HEADER = "X-Ovms-Worker"
BATCH_HEADER = "X-Ovms-Batch-Size"  # rows of the inference that served the request (dynamic batching)


def create_app(dataplane: DataPlane, metrics: ServingMetrics) -> Flask:
    app = Flask("ovms")

    @app.errorhandler(ServingError)
    def serving_error(error: ServingError) -> Response:
        return _json({"error": error.message}, error.http_status)

    @app.errorhandler(404)
    def no_route(_: Exception) -> Response:
        return _json({"error": "Not Found"}, 404)

    @app.errorhandler(405)
    def wrong_method(_: Exception) -> Response:
        return _json({"error": "Method Not Allowed"}, 405)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("Unexpected REST error")
        return _json({"error": f"Internal error: {exc}"}, 500)

    @app.route("/v1/models/<path:model_path>", methods=["GET", "POST"])
    def models(model_path: str) -> Response:
        match = _MODEL_PATH.match(model_path)
        if match is None:
            raise NotFound("Not Found")
        name, action = match["name"], match["action"]
        with metrics.track("rest", _METHODS[action], name) as tracker:
            version = _version(match["version"])
            if action == ":predict":
                _require_method("POST")
                response, result = _predict(dataplane, name, version)
                tracker.done(result.version, result)
                return response
            _require_method("GET")
            tracker.done(version)
            if action == "/metadata":
                return _json(_metadata(dataplane, name, version))
            return _json(_status(dataplane, name, version))

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/v1/config")
    def config() -> Response:
        return _json(_config_status(dataplane))

    @app.post("/v1/config/reload")
    def reload_config() -> Response:
        changed = dataplane.reload_config()
        return _json(_config_status(dataplane), 201 if changed else 200)

    @app.get("/v1/health/live")
    def live() -> Response:
        return _json({"status": "live"})

    @app.get("/v1/health/ready")
    def ready() -> Response:
        models = dataplane.readiness()
        is_ready = bool(models) and all(models.values())
        return _json({"ready": is_ready, "models": models}, 200 if is_ready else 503)

    return app


def _require_method(method: str) -> None:
    if request.method != method:
        raise MethodNotAllowed(valid_methods=[method])


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise InvalidArgument(f"Invalid version: {text}")
    return int(text) or None  # version 0 means the default version, as ovmsclient sends it


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(document), status=status, mimetype="application/json", headers=headers)


def _status(dataplane: DataPlane, name: str, version: int | None) -> dict[str, Any]:
    return _status_json(dataplane.model_status(name, version))


def _status_json(statuses: list[VersionStatus]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(status.version),
                "state": status.state,
                "status": {"error_code": status.error_code, "error_message": status.error_message},
            }
            for status in statuses
        ]
    }


def _config_status(dataplane: DataPlane) -> dict[str, Any]:
    """OVMS's GET /v1/config: model name -> its version statuses."""
    return {name: _status_json(statuses) for name, statuses in dataplane.config_status().items()}


def _metadata(dataplane: DataPlane, name: str, version: int | None) -> dict[str, Any]:
    resolved, signature = dataplane.model_metadata(name, version)
    return {
        "modelSpec": {"name": name, "signatureName": "", "version": str(resolved)},
        "metadata": {
            "signature_def": {
                "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                "signatureDef": {SIGNATURE_NAME: _signature_json(signature)},
            }
        },
    }


def _signature_json(signature: ModelSignature) -> dict[str, Any]:
    def tensors(specs: dict) -> dict[str, Any]:
        return {
            name: {
                "dtype": dtypes.by_name(spec.precision).tf_name,
                "tensorShape": {"dim": [{"size": str(d), "name": ""} for d in spec.shape], "unknownRank": False},
                "name": name,
            }
            for name, spec in specs.items()
        }

    return {
        "inputs": tensors(signature.inputs),
        "outputs": tensors(signature.outputs),
        "methodName": "tensorflow/serving/predict",
    }


def _predict(dataplane: DataPlane, name: str, version: int | None) -> tuple[Response, InferenceResult]:
    body = _json_body()
    _, signature = dataplane.model_metadata(name, version)
    inputs, form = parse_predict_body(body, signature)
    result = dataplane.predict(name, version, inputs, timeout_s=_timeout())  # unpinned stays unpinned
    headers = {WORKER_HEADER: result.worker, BATCH_HEADER: str(result.batch_size)}
    return _json(predict_response(result.outputs, result.precisions, form), headers=headers), result


def _json_body() -> Any:
    raw = request.get_data(cache=False)
    if not raw:
        raise InvalidArgument("Invalid JSON: empty request body")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"Invalid JSON: {exc}") from None


def _timeout() -> float | None:
    text = request.headers.get(TIMEOUT_HEADER)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise InvalidArgument(f"Invalid {TIMEOUT_HEADER} header: {text}") from None
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise InvalidArgument(f"Invalid {TIMEOUT_HEADER} header: {text}")
    return seconds
