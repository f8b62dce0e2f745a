"""REST routes of asynchronous jobs (/v1/jobs): submit (TF Serving JSON, or a .npy / .npz upload, with
optional dead letters and a callback URL), list, status, cancel, retry of dead letters, and the result as
JSON, .npy or .npz. With bearer tokens, a caller sees only the jobs of its own token (api.auth)."""

from __future__ import annotations

import math

from flask import Blueprint, Response, request

from api.admission import request_bytes
from api.auth import BearerTokens
from api.dataplane import DataPlane
from api.job_results import json_body as json_result
from api.job_results import npy_body, npy_length, npz_body
from api.rest_codec import parse_predict_body
from api.rest_http import json_body, json_response
from api.rest_limits import RAW_BODY_TYPES
from api.uploads import NPY_KEY, Upload, inspect_upload
from api.versions import parse_version
from inference import dtypes
from inference.errors import InvalidArgument
from inference.signature import ModelSignature
from inference.validation import RequestTensor
from tasks.job_result import JobResult
from tasks.job_states import JobState
from tasks.jobs import JobOptions

_RESULT_TYPES = {"application/x-npy": "npy", "application/x-npz": "npz", "application/zip": "npz"}


def jobs_blueprint(dataplane: DataPlane, max_request_bytes: int, tokens: BearerTokens | None) -> Blueprint:
    """`max_request_bytes` also bounds what an .npz upload may unpack to."""
    routes = Blueprint("jobs", __name__)

    def owner() -> str | None:
        """With tokens, the caller's owner id: it sees only its own jobs (api.auth); without, None: all."""
        return tokens.owner_of(request.headers.get("Authorization")) if tokens is not None else None

    @routes.post("/v1/jobs")
    def submit_job() -> Response:
        job_id = _submit(dataplane, max_request_bytes, owner())
        url = f"/v1/jobs/{job_id}"
        return json_response({"id": job_id, "status_url": url, "result_url": f"{url}/result"}, 202, {"Location": url})

    @routes.get("/v1/jobs")
    def list_jobs() -> Response:
        return json_response({"jobs": [status.to_dict() for status in dataplane.jobs.recent(owner())]})

    @routes.route("/v1/jobs/<job_id>", methods=["GET", "DELETE"])
    def job(job_id: str) -> Response:
        jobs = dataplane.jobs
        status = jobs.cancel(job_id, owner()) if request.method == "DELETE" else jobs.status(job_id, owner())
        return json_response(status.to_dict())

    @routes.post("/v1/jobs/<job_id>/retry")
    def retry_job(job_id: str) -> Response:
        return json_response(dataplane.jobs.retry(job_id, owner()).to_dict())

    @routes.get("/v1/jobs/<job_id>/result")
    def job_result(job_id: str) -> Response:
        status = dataplane.jobs.status(job_id, owner())
        if status.state != JobState.SUCCESS:
            return json_response({"error": f"Job {job_id} is {status.state}", **status.to_dict()}, 409)
        if not status.total:  # refused at submit now, but one queued before that may still be kept
            return json_response({"error": f"Job {job_id} has no samples, so no outputs", **status.to_dict()}, 409)
        return _result_response(dataplane.jobs.result(job_id, owner()))

    return routes


def _submit(dataplane: DataPlane, max_request_bytes: int, owner: str | None) -> str:
    """A job body is TF Serving JSON, or a .npy / .npz file (.npy for a single-input model, .npz keyed by input
    name); ?model=&version= name the model, or "model" (and "version") in a JSON body, which win; likewise
    ?dead_letters=true&callback_url= or "dead_letters" and "callback_url"."""
    name, version = request.args.get("model", ""), parse_version(request.args.get("version"))
    extras = {key: request.args[key] for key in _OPTIONS if key in request.args}
    body = None
    if request.mimetype not in RAW_BODY_TYPES:
        body = json_body()
        if not isinstance(body, dict) or not isinstance(body.get("model", name), str):
            raise InvalidArgument('A job needs "model" (and optionally "version") with "instances" or "inputs"')
        name = body.pop("model", name)
        if "version" in body:
            version = parse_version(str(body.pop("version")))
        extras.update({key: body.pop(key) for key in _OPTIONS if key in body})
    if not name:
        raise InvalidArgument("A job needs a model name")
    options = _options(extras)
    if body is None:
        data = request.get_data(cache=False)
        return _submit_upload(dataplane, name, version, data, max_request_bytes, owner, options)
    _, signature = dataplane.models.model_metadata(name, version)
    inputs, _ = parse_predict_body(body, signature)
    return dataplane.jobs.submit(name, version, lambda: inputs, request_bytes(inputs), owner, options)


_OPTIONS = ("dead_letters", "callback_url")
_SWITCH = {"true": True, "1": True, "false": False, "0": False}  # as a query gives it


def _options(given: dict[str, object]) -> JobOptions:
    """A job's options as given in its body (JSON values) or query (text)."""
    dead = given.get("dead_letters", False)
    if isinstance(dead, str):
        dead = _SWITCH.get(dead.lower(), dead)
    if not isinstance(dead, bool):
        raise InvalidArgument('"dead_letters" is true or false')
    callback = given.get("callback_url")
    if callback is not None and not isinstance(callback, str):
        raise InvalidArgument('"callback_url" is a URL: a string')
    return JobOptions(dead, callback or None, request.host_url.rstrip("/"))


def _submit_upload(
    dataplane: DataPlane,
    name: str,
    version: int | None,
    data: bytes,
    max_unpacked_bytes: int,
    owner: str | None,
    options: JobOptions,
) -> str:
    """A .npy / .npz job: refused from its headers alone if it would unpack beyond `max_unpacked_bytes` or
    --job_max_mb, and unpacked only once what it allocates is held in the in-flight budget."""
    upload = inspect_upload(data, max_unpacked_bytes)
    _, signature = dataplane.models.model_metadata(name, version)
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

    return dataplane.jobs.submit(name, version, decode, upload.unpacked_bytes, owner, options)


def _input_names(upload: Upload, signature: ModelSignature) -> dict[str, str]:
    """The model input each array of the upload is for: an .npz's by member name, a .npy's the only one."""
    if NPY_KEY not in upload.shapes:
        return {key: key for key in upload.shapes}
    if len(signature.inputs) != 1:
        raise InvalidArgument("A .npy upload needs a single-input model; send an .npz keyed by input name")
    return {NPY_KEY: next(iter(signature.inputs))}


def _result_response(result: JobResult) -> Response:
    """JSON by default; .npy (one output) or .npz with ?format=npy|npz or the matching Accept type. The
    body streams chunk by chunk from Redis (api.job_results)."""
    wanted = request.args.get("format")
    if wanted is None:
        wanted = _RESULT_TYPES.get(request.accept_mimetypes.best or "", "json")
    if wanted == "json":
        return Response(json_result(result), mimetype="application/json")
    if wanted == "npy" and len(result.layout) == 1:
        name = next(iter(result.layout))
        length = str(npy_length(result, name))
        return Response(npy_body(result, name), mimetype="application/x-npy", headers={"Content-Length": length})
    if wanted not in ("npy", "npz"):
        raise InvalidArgument(f"Unknown result format {wanted}: use json, npy or npz")
    return Response(npz_body(result), mimetype="application/x-npz")
