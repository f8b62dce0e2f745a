"""One error taxonomy for every frontend: each kind carries its gRPC code name and HTTP status."""

from __future__ import annotations

import re

# OpenVINO prefixes its messages with the C++ source locations they passed through: internal detail that
# says nothing to a client ("Exception from src/inference/src/cpp/infer_request.cpp:224:",
# "Check 'x' failed at src/plugins/intel_cpu/src/node.h:99:").
_OPENVINO_LOCATION = re.compile(r"^(Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:)\s*$")


class ServingError(Exception):
    """Base class: a failure that is reported to the client with a code and a message."""

    grpc_code = "INTERNAL"
    http_status = 500
    retry_after_s: int | None = None  # when the client may retry: REST's Retry-After, gRPC's retry-after trailer

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> list[str]:
        """Compact form used inside task results: [kind, message]."""
        return [type(self).__name__, self.message]

    @staticmethod
    def from_wire(wire: list[str]) -> ServingError:
        kind, message = wire
        return _KINDS.get(kind, Internal)(message)


class NotFound(ServingError):
    grpc_code = "NOT_FOUND"
    http_status = 404


class InvalidArgument(ServingError):
    grpc_code = "INVALID_ARGUMENT"
    http_status = 400


class FailedPrecondition(ServingError):
    grpc_code = "FAILED_PRECONDITION"
    http_status = 412


class ResourceExhausted(ServingError):
    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 429


class Unavailable(ServingError):
    grpc_code = "UNAVAILABLE"
    http_status = 503


class DeadlineExceeded(ServingError):
    grpc_code = "DEADLINE_EXCEEDED"
    http_status = 504


class Unauthenticated(ServingError):
    grpc_code = "UNAUTHENTICATED"
    http_status = 401


class Unimplemented(ServingError):
    grpc_code = "UNIMPLEMENTED"
    http_status = 501


class Internal(ServingError):
    grpc_code = "INTERNAL"
    http_status = 500


_KINDS = {cls.__name__: cls for cls in ServingError.__subclasses__()}

# A tenant's limits (api.tenants) as an error message names them
TENANT_LIMITS = {
    "rps": "{:g} requests/s",
    "inflight": "{:g} requests in flight",
    "job_samples": "{:g} job samples queued",
}


class TenantOverLimit(ResourceExhausted):
    """A tenant is beyond one of its limits (a key of TENANT_LIMITS), across every api process: 429 /
    RESOURCE_EXHAUSTED with Retry-After / `retry-after` (whole seconds, at least 1). Raised in the api
    only, never sent on the wire."""

    def __init__(self, tenant: str, limit: str, value: float, retry_after_s: int, detail: str = "") -> None:
        self.tenant = tenant
        self.limit = limit
        self.retry_after_s = max(1, retry_after_s)
        said = TENANT_LIMITS[limit].format(value)
        super().__init__(f"tenant {tenant} is over its {said}{detail}; retry after {self.retry_after_s} s")


# The seed's messages, used verbatim by both frontends.
MODEL_NOT_FOUND = "Model with requested name is not found"
VERSION_NOT_FOUND = "Model with requested version is not found"
VERSION_RETIRED = "Model with requested version is retired"
VERSION_NOT_LOADED = "Model with requested version is not loaded yet"
RESHAPE_FAILED = "Model could not be reshaped with requested shape"
NO_LIVE_WORKER = "No live worker serves the requested model version"
WORKER_LOST = "The worker running this request stopped before answering; retry"
DEADLINE_PASSED = "Deadline exceeded while waiting for the inference result"
TOKEN_REFUSED = "Missing or invalid bearer token"

MAX_REASON_CHARS = 500  # of a reason quoted in a log line, a status or an answer: whole, yet bounded


def load_failed(version: int, reason: str) -> str:
    """Why a predict finds no servable version: this one failed to load (it stays END until its files change)."""
    return f"Model version {version} failed to load: {reason}"


def still_loading(model: str, version: int, retry_after_s: int, worker: str = "") -> Unavailable:
    """A version on its way into memory (loaded on demand) that a request could not wait for."""
    where = f" on worker {worker}" if worker else ""
    error = Unavailable(
        f"Model {model} version {version} is loading{where}: not ready within the request's deadline; "
        f"retry after {retry_after_s} s"
    )
    error.retry_after_s = retry_after_s
    return error


def plain_message(exc: BaseException) -> str:
    """What went wrong, on one line and bounded: every line of the error but OpenVINO's source locations.

    OpenVINO often says it in several lines ("While validating node 'MatMul_19' …:" then "Incompatible
    MatMul matrix dimension …"), so none is dropped; an error that says nothing else is named by its type.
    """
    lines = [line.strip() for line in str(exc).splitlines()]
    said = " ".join(line for line in lines if line and not _OPENVINO_LOCATION.match(line))
    return one_line(said) or type(exc).__name__


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` with its whitespace runs (newlines too) made single spaces, cut at `limit` characters (…)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
