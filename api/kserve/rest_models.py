"""REST routes of the models in the Open Inference Protocol (KServe v2): metadata, configuration, readiness
and inference, over the same data plane as TensorFlow Serving's routes (api.rest_models), counted as
interface "v2-rest" under the v2 RPC names."""

from __future__ import annotations

from flask import Blueprint, Response, request

from api.dataplane import DataPlane
from api.kserve.repository import model_config, model_metadata, not_ready_reason
from api.kserve.request_fields import model_version
from api.kserve.rest_codec import BINARY_CONTENT_TYPE, HEADER_LENGTH, infer_response, parse_infer_body
from api.metrics import ServingMetrics, Tracker
from api.rest_http import header_priority, header_timeout_s, json_response, raw_body, served_by, tracked
from inference.errors import InvalidArgument

INTERFACE = "v2-rest"
IDENTITY = "identity"


def v2_models_blueprint(dataplane: DataPlane, metrics: ServingMetrics) -> Blueprint:
    """/v2/models/...: the app registers the `segment` converter (api.rest_models.Segment) these routes use."""
    routes = Blueprint("v2_models", __name__)

    @routes.get("/v2/models/<segment:name>")
    @routes.get("/v2/models/<segment:name>/versions/<segment:version>")
    @tracked(metrics, "ModelMetadata", INTERFACE)
    def metadata(tracker: Tracker, name: str, version: str | None) -> Response:
        resolved, document = model_metadata(dataplane.models, name, model_version(version))
        tracker.done(resolved)
        return json_response(document)

    @routes.get("/v2/models/<segment:name>/config")
    @routes.get("/v2/models/<segment:name>/versions/<segment:version>/config")
    @tracked(metrics, "ModelConfig", INTERFACE)
    def config(tracker: Tracker, name: str, version: str | None) -> Response:
        resolved, document = model_config(dataplane.models, name, model_version(version))
        tracker.done(resolved)
        return json_response(document)

    @routes.get("/v2/models/<segment:name>/ready")
    @routes.get("/v2/models/<segment:name>/versions/<segment:version>/ready")
    @tracked(metrics, "ModelReady", INTERFACE)
    def model_ready(tracker: Tracker, name: str, version: str | None) -> Response:
        """200 when the version serves, else 400 (as Triton answers, an unknown model included) saying why:
        counted as a failure, so that names a client makes up add no metric series."""
        number = model_version(version)
        reason = not_ready_reason(dataplane.models, name, number)
        if reason is not None:
            raise InvalidArgument(f"Model version not ready: {reason}")
        tracker.done(number)
        return json_response({"name": name, "ready": True})

    @routes.post("/v2/models/<segment:name>/infer")
    @routes.post("/v2/models/<segment:name>/versions/<segment:version>/infer")
    @tracked(metrics, "ModelInfer", INTERFACE)
    def infer(tracker: Tracker, name: str, version: str | None) -> Response:
        number = model_version(version)
        encoding = request.headers.get("Content-Encoding", IDENTITY).strip().lower()
        if encoding != IDENTITY:
            raise InvalidArgument(f"Content-Encoding {encoding:.40} is not supported: send the body uncompressed")
        body = parse_infer_body(raw_body(), request.headers.get(HEADER_LENGTH))
        timeout_s = body.timeout_s if body.timeout_s is not None else header_timeout_s()
        priority = body.priority if body.priority is not None else header_priority()
        result = dataplane.inference.predict(name, number, body.inputs, body.outputs, timeout_s, priority)
        parts, json_length = infer_response(name, result, body)
        headers = served_by(result)
        headers["Content-Length"] = str(sum(len(part) for part in parts))
        if json_length is None:
            response = Response(parts, mimetype="application/json", headers=headers)
        else:
            headers[HEADER_LENGTH] = str(json_length)
            response = Response(parts, mimetype=BINARY_CONTENT_TYPE, headers=headers)
        tracker.done(result.version, result)
        return response

    return routes
