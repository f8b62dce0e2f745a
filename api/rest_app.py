"""TensorFlow Serving REST API on Flask: status, metadata and predict."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import yaml
from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.routing import BaseConverter

from api.admission import request_bytes
from api.auth import BearerTokens
from api.dataplane import DataPlane
from api.grpc_service import SIGNATURE_NAME
from api.job_results import json_body, npy_body, npy_length, npz_body
from api.metrics import ServingMetrics
from api.rest_codec import parse_predict_body, predict_response
from api.rest_limits import RAW_BODY_TYPES, RETRY_AFTER_S, body_too_large_message
from api.uploads import NPY_KEY, Upload, inspect_upload
from inference import dtypes
from inference.errors import InvalidArgument, ServingError
from inference.request import InferenceResult
from inference.signature import ModelSignature
from inference.states import VersionStatus
from inference.validation import RequestTensor
from tasks.job_states import JobState
from tasks.jobs import JobResult
from tasks.link import OUTAGES

log = logging.getLogger("serving")

TIMEOUT_HEADER = "X-Request-Timeout"  # seconds; REST clients' counterpart of a gRPC deadline
MAX_TIMEOUT_S = 1e6  # larger (or infinite) deadlines overflow the Redis expiry of the request's tensors
WORKER_HEADER = "X-Ovms-Worker"
BATCH_HEADER = "X-Ovms-Batch-Size"  # rows of the inference that served the request (dynamic batching)
_ERROR_HEADERS = {
    429: {"Retry-After": str(RETRY_AFTER_S)},  # a full queue
    503: {"Retry-After": str(RETRY_AFTER_S)},  # a model without workers
}
_WITHOUT_REDIS = {"live", "ready", "prometheus", "openapi_document"}  # routes that answer while Redis is down
OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")  # served as JSON at /v1/openapi.json
_VERSION = re.compile(r"[0-9]{1,19}")
MAX_VERSION = 2**63 - 1  # ModelSpec.version is an Int64Value


class _Segment(BaseConverter):
    """A model name or version in /v1/models/{name}[/versions/{version}][/metadata | :predict]: no '/' and no
    ':', so that "digits:predict" only matches the predict routes (GET on it is a 405, not model "digits:predict")."""

    regex = r"[^/:]+"


def create_app(
    dataplane: DataPlane, metrics: ServingMetrics, max_request_bytes: int, tokens: BearerTokens | None = None
) -> Flask:
    """The REST app. Bodies above `max_request_bytes` are refused (413) before they are read, and it
    also bounds what an .npz job upload may unpack to; `tokens` (checked on the request head in front
    of the app: api.rest_limits) tell which caller owns which job."""
    app = Flask("ovms", static_folder=None)  # no static files: nothing beside the API is served
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    openapi = load_openapi()

    @app.before_request
    def redis_reachable() -> None:
        """While Redis is unreachable, routes that need it answer 503 at once (see tasks.link)."""
        if request.endpoint not in _WITHOUT_REDIS:
            dataplane.link.check()

    @app.errorhandler(ServingError)
    def serving_error(error: ServingError) -> Response:
        headers = _ERROR_HEADERS.get(error.http_status)
        retry_after_s = getattr(error, "retry_after_s", None)  # e.g. a full job backlog (tasks.jobs)
        if retry_after_s is not None:
            headers = {"Retry-After": str(retry_after_s)}
        return _json({"error": error.message}, error.http_status, headers)

    def redis_outage(exc: Exception) -> Response:
        return serving_error(dataplane.link.failed(exc))

    for outage in OUTAGES:  # Redis calls outside the data plane (the job routes)
        app.register_error_handler(outage, redis_outage)

    @app.errorhandler(404)
    def no_route(_: Exception) -> Response:
        return _json({"error": "Not Found"}, 404)

    @app.errorhandler(413)
    def too_large(_: Exception) -> Response:
        return _json({"error": body_too_large_message(max_request_bytes)}, 413)

    @app.errorhandler(405)
    def wrong_method(error: MethodNotAllowed) -> Response:
        return _json({"error": "Method Not Allowed"}, 405, {"Allow": ", ".join(error.valid_methods or [])})

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("Unexpected REST error")
        return _json({"error": f"Internal error: {exc}"}, 500)

    app.url_map.converters["segment"] = _Segment

    @app.get("/v1/models/<segment:name>")
    @app.get("/v1/models/<segment:name>/versions/<segment:version>")
    def model_status(name: str, version: str | None = None) -> Response:
        with metrics.track("rest", "GetModelStatus", name) as tracker:
            number = _version(version)
            document = _status(dataplane, name, number)
            tracker.done(number)  # only once it is known: a metric label per version a client makes up would leak
            return _json(document)

    @app.get("/v1/models/<segment:name>/metadata")
    @app.get("/v1/models/<segment:name>/versions/<segment:version>/metadata")
    def model_metadata(name: str, version: str | None = None) -> Response:
        with metrics.track("rest", "GetModelMetadata", name) as tracker:
            resolved, document = _metadata(dataplane, name, _version(version))
            tracker.done(resolved)
            return _json(document)

    @app.post("/v1/models/<segment:name>:predict")
    @app.post("/v1/models/<segment:name>/versions/<segment:version>:predict")
    def predict(name: str, version: str | None = None) -> Response:
        with metrics.track("rest", "Predict", name) as tracker:
            response, result = _predict(dataplane, name, _version(version))
            tracker.done(result.version, result)
            return response

    def job_owner() -> str | None:
        """With tokens, the caller's owner id: it sees only its own jobs (api.auth); without, None: all."""
        return tokens.owner_of(request.headers.get("Authorization")) if tokens is not None else None

    @app.post("/v1/jobs")
    def submit_job() -> Response:
        job_id = _submit_job(dataplane, max_request_bytes, job_owner())
        url = f"/v1/jobs/{job_id}"
        return _json({"id": job_id, "status_url": url, "result_url": f"{url}/result"}, 202, {"Location": url})

    @app.get("/v1/jobs")
    def list_jobs() -> Response:
        owner = job_owner()
        jobs = [dataplane.jobs.status(job_id, owner).to_dict() for job_id in dataplane.jobs.recent(owner=owner)]
        return _json({"jobs": jobs})

    @app.route("/v1/jobs/<job_id>", methods=["GET", "DELETE"])
    def job(job_id: str) -> Response:
        if request.method == "DELETE":
            dataplane.jobs.cancel(job_id, job_owner())
        return _json(dataplane.jobs.status(job_id, job_owner()).to_dict())

    @app.get("/v1/jobs/<job_id>/result")
    def job_result(job_id: str) -> Response:
        status = dataplane.jobs.status(job_id, job_owner())
        if status.state != JobState.SUCCESS:
            return _json({"error": f"Job {job_id} is {status.state}", **status.to_dict()}, 409)
        if not status.total:  # refused at submit now, but one queued before that may still be kept
            return _json({"error": f"Job {job_id} has no samples, so no outputs", **status.to_dict()}, 409)
        return _job_result(dataplane.jobs.result(job_id, job_owner()))

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

    @app.get("/v1/openapi.json")
    def openapi_document() -> Response:
        return _json(openapi)

    @app.get("/v1/health/live")
    def live() -> Response:
        return _json({"status": "live"})

    @app.get("/v1/health/ready")
    def ready() -> Response:
        is_ready, models = dataplane.readiness()
        return _json({"ready": is_ready, "models": models}, 200 if is_ready else 503)

    return app


def load_openapi() -> dict[str, Any]:
    """The OpenAPI document of this API."""
    return yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))


def _version(text: str | None) -> int | None:
    """A version from a URL, query or job body: ASCII digits that fit gRPC's int64 (str.isdigit() would
    also take "²", which int() refuses)."""
    if text is None:
        return None
    if not _VERSION.fullmatch(text) or int(text) > MAX_VERSION:
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


def _metadata(dataplane: DataPlane, name: str, version: int | None) -> tuple[int, dict[str, Any]]:
    resolved, signature = dataplane.model_metadata(name, version)
    return resolved, {
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
    del body  # parsed JSON takes many times its tensors' size: not kept while the request waits
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


def _submit_job(dataplane: DataPlane, max_request_bytes: int, owner: str | None) -> str:
    """A job body is TF Serving JSON, or a .npy / .npz file (.npy for a single-input model, .npz keyed by input
    name); ?model=&version= name the model, or "model" (and "version") in a JSON body, which win."""
    name, version = request.args.get("model", ""), _version(request.args.get("version"))
    body = None
    if request.mimetype not in RAW_BODY_TYPES:
        body = _json_body()
        if not isinstance(body, dict) or not isinstance(body.get("model", name), str):
            raise InvalidArgument('A job needs "model" (and optionally "version") with "instances" or "inputs"')
        name = body.pop("model", name)
        if "version" in body:
            version = _version(str(body.pop("version")))
    if not name:
        raise InvalidArgument("A job needs a model name")
    if body is None:
        return _submit_upload(dataplane, name, version, request.get_data(cache=False), max_request_bytes, owner)
    _, signature = dataplane.model_metadata(name, version)
    inputs, _ = parse_predict_body(body, signature)
    return dataplane.submit_job(name, version, lambda: inputs, request_bytes(inputs), owner)


def _submit_upload(
    dataplane: DataPlane, name: str, version: int | None, data: bytes, max_unpacked_bytes: int, owner: str | None
) -> str:
    """A .npy / .npz job: refused from its headers alone if it would unpack beyond `max_unpacked_bytes` or
    --job_max_mb, and unpacked only once what it allocates is held in the in-flight budget."""
    upload = inspect_upload(data, max_unpacked_bytes)
    _, signature = dataplane.model_metadata(name, version)
    names = _input_names(upload, signature)
    dataplane.jobs.refuse_oversized(
        sum(
            math.prod(shape) * dtypes.by_name(signature.inputs[names[key]].precision).numpy.itemsize
            for key, shape in upload.shapes.items()
            if names[key] in signature.inputs
        )
    )

    def decode() -> dict[str, RequestTensor]:
        return {names[key]: RequestTensor(None, array.shape, values=array) for key, array in upload.load().items()}

    return dataplane.submit_job(name, version, decode, upload.unpacked_bytes, owner)


def _input_names(upload: Upload, signature: ModelSignature) -> dict[str, str]:
    """The model input each array of the upload is for: an .npz's by member name, a .npy's the only one."""
    if NPY_KEY not in upload.shapes:
        return {key: key for key in upload.shapes}
    if len(signature.inputs) != 1:
        raise InvalidArgument("A .npy upload needs a single-input model; send an .npz keyed by input name")
    return {NPY_KEY: next(iter(signature.inputs))}


def _job_result(result: JobResult) -> Response:
    """JSON by default; .npy (one output) or .npz with ?format=npy|npz or the matching Accept type. The
    body streams chunk by chunk from Redis (api.job_results)."""
    wanted = request.args.get("format")
    if wanted is None:
        wanted = {
            "application/x-npy": "npy",
            "application/x-npz": "npz",
            "application/zip": "npz",
        }.get(request.accept_mimetypes.best or "", "json")
    if wanted == "json":
        return Response(json_body(result), mimetype="application/json")
    if wanted == "npy" and len(result.layout) == 1:
        name = next(iter(result.layout))
        length = str(npy_length(result, name))
        return Response(npy_body(result, name), mimetype="application/x-npy", headers={"Content-Length": length})
    if wanted not in ("npy", "npz"):
        raise InvalidArgument(f"Unknown result format {wanted}: use json, npy or npz")
    return Response(npz_body(result), mimetype="application/x-npz")


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
