"""REST routes of the models (TensorFlow Serving's REST API): status, metadata and predict."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from werkzeug.routing import BaseConverter

from api.dataplane import DataPlane
from api.grpc_service import SIGNATURE_NAME
from api.metrics import ServingMetrics, Tracker
from api.rest_codec import parse_predict_body, predict_response
from api.rest_http import header_priority, header_timeout_s, json_body, json_response, served_by, tracked
from api.versions import parse_version
from inference import dtypes
from inference.signature import ModelSignature
from inference.states import VersionStatus


class Segment(BaseConverter):
    """A model name or version in /v1/models/{name}[/versions/{version}][/metadata | :predict]: no '/' and no
    ':', so that "digits:predict" only matches the predict routes (GET on it is a 405, not model "digits:predict")."""

    regex = r"[^/:]+"


def models_blueprint(dataplane: DataPlane, metrics: ServingMetrics) -> Blueprint:
    """/v1/models/...: the app registers the `segment` converter (Segment) these routes use."""
    routes = Blueprint("models", __name__)

    @routes.get("/v1/models/<segment:name>")
    @routes.get("/v1/models/<segment:name>/versions/<segment:version>")
    @tracked(metrics, "GetModelStatus")
    def model_status(tracker: Tracker, name: str, version: str | None) -> Response:
        number = parse_version(version)
        document = status_json(dataplane.models.model_status(name, number))
        tracker.done(number)  # only once it is known: a metric label per version a client makes up would leak
        return json_response(document)

    @routes.get("/v1/models/<segment:name>/metadata")
    @routes.get("/v1/models/<segment:name>/versions/<segment:version>/metadata")
    @tracked(metrics, "GetModelMetadata")
    def model_metadata(tracker: Tracker, name: str, version: str | None) -> Response:
        resolved, signature = dataplane.models.model_metadata(name, parse_version(version))
        tracker.done(resolved)
        return json_response(_metadata_json(name, resolved, signature))

    @routes.post("/v1/models/<segment:name>:predict")
    @routes.post("/v1/models/<segment:name>/versions/<segment:version>:predict")
    @tracked(metrics, "Predict")
    def predict(tracker: Tracker, name: str, version: str | None) -> Response:
        number = parse_version(version)
        body = json_body()
        _, signature = dataplane.models.model_metadata(name, number)
        inputs, form = parse_predict_body(body, signature)
        del body  # parsed JSON takes many times its tensors' size: not kept while the request waits
        timeout_s, priority = header_timeout_s(), header_priority()
        result = dataplane.inference.predict(name, number, inputs, None, timeout_s, priority)  # unpinned stays so
        response = json_response(predict_response(result.outputs, result.precisions, form), headers=served_by(result))
        tracker.done(result.version, result)
        return response

    return routes


def status_json(statuses: list[VersionStatus]) -> dict[str, Any]:
    """TF Serving's GetModelStatus answer as JSON."""
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


def _metadata_json(name: str, version: int, signature: ModelSignature) -> dict[str, Any]:
    return {
        "modelSpec": {"name": name, "signatureName": "", "version": str(version)},
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
