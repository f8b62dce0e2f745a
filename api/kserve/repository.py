"""What the v2 protocol asks of the model repository (api.dataplane.models), answered as plain data for
both frontends: why a model version is not ready, its metadata and configuration documents, the
repository index, and the repository extension's load and unload.

Models come from config.json: loading one re-reads the configuration on every worker (as POST
/v1/config/reload does) and answers once the model serves; unloading is done by removing the model from
config.json, so an unload request is refused (UNIMPLEMENTED / 501) with the way to do it.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any, NoReturn

from api.dataplane.models import ModelRepository
from api.kserve import model_info
from inference.errors import MODEL_NOT_FOUND, InvalidArgument, NotFound, ServingError, Unavailable, Unimplemented
from inference.states import PREPARING, VersionState, VersionStatus

LOAD_TIMEOUT_S = 120.0  # a repository load without a deadline waits at most this long for the model
LOAD_POLL_S = 0.1  # how often a load looks whether the model's new versions are AVAILABLE yet
NAME_CHARS = 200  # of a client's model name quoted in a message

# Version states as the repository index names them (Triton's model states): a version on its way in is
# LOADING, one that is gone or that no live worker reports is UNAVAILABLE.
_INDEX_STATES = {
    VersionState.AVAILABLE: "READY",
    VersionState.START: "LOADING",
    VersionState.LOADING: "LOADING",
    VersionState.UNLOADING: "UNLOADING",
    VersionState.END: "UNAVAILABLE",
    VersionState.UNKNOWN: "UNAVAILABLE",
}
READY = _INDEX_STATES[VersionState.AVAILABLE]
UNLOAD_REFUSED = (
    "Model {name} cannot be unloaded on request: remove it from config.json, then reload the configuration "
    "(POST /v1/config/reload, or a repository load of any model); workers also follow a changed config.json "
    "by themselves every --file_system_poll_wait_seconds"
)


def not_ready_reason(models: ModelRepository, name: str, version: int | None) -> str | None:
    """None when the version (None: the default one) serves now, else why not: the error a predict would
    meet. An unknown model or version is not ready rather than an error, as Triton answers."""
    try:
        models.model_metadata(name, version)
    except (NotFound, Unavailable) as error:
        return error.message
    return None


def model_metadata(models: ModelRepository, name: str, version: int | None) -> tuple[int, dict[str, Any]]:
    """The metadata document of a version that serves (None: the default one), listing the versions that
    serve, and the version it describes: NOT_FOUND / UNAVAILABLE as a predict would meet them."""
    resolved, signature = models.model_metadata(name, version)
    serving = [status.version for status in models.model_status(name, None) if status.state == VersionState.AVAILABLE]
    return resolved, model_info.model_metadata(name, serving, signature)


def model_config(models: ModelRepository, name: str, version: int | None) -> tuple[int, dict[str, Any]]:
    """The configuration document of a version that serves (None: the default one), and that version."""
    resolved, signature = models.model_metadata(name, version)
    return resolved, model_info.model_config(name, signature)


def repository_index(models: ModelRepository, ready_only: bool) -> list[dict[str, str]]:
    """Every known model version as {"name", "version", "state"[, "reason"]} with Triton's state names
    (READY, LOADING, UNLOADING, UNAVAILABLE), a reason for those not READY; a model whose versions cannot
    be told (its repository cannot be read) as one entry without a version. `ready_only`: READY ones only."""
    entries = []
    for name, statuses in models.config_status().items():
        entries += [_index_entry(name, status) for status in statuses] or [_unversioned(models, name)]
    return [entry for entry in entries if entry["state"] == READY or not ready_only]


def load_model(models: ModelRepository, name: str, parameters: Collection[str], timeout_s: float) -> None:
    """Re-read the configuration on every worker, then return once the model serves: NOT_FOUND if the
    configuration has no such model, INVALID_ARGUMENT if none of its versions became AVAILABLE (within
    `timeout_s` for versions still loading). `parameters`: the names of the request's parameters (a
    configuration or files to load with), which this server does not take."""
    if parameters:
        raise InvalidArgument(
            f"Invalid load parameters ({', '.join(sorted(parameters))[:NAME_CHARS]}): a model is loaded as "
            "config.json configures it; edit config.json, then load"
        )
    deadline = time.monotonic() + timeout_s
    models.reload_config()
    if name not in models.expected_models():
        raise NotFound(f"Model {name:.{NAME_CHARS}} is not in the configuration: add it to config.json, then load it")
    while True:
        try:
            statuses = models.model_status(name, None)
        except NotFound as error:
            if error.message != MODEL_NOT_FOUND:  # reported, but with no version to load (an empty repository)
                raise InvalidArgument(f"Model {name:.{NAME_CHARS}} did not load: {error.message}") from None
            raise NotFound(
                f"Model {name:.{NAME_CHARS}} is configured, but no live worker reports it: is a worker running "
                "for its target device?"
            ) from None
        if any(status.state == VersionState.AVAILABLE for status in statuses):
            return
        if not any(status.state in PREPARING for status in statuses) or time.monotonic() >= deadline:
            raise InvalidArgument(f"Model {name:.{NAME_CHARS}} did not load: {_versions_said(statuses)}")
        time.sleep(LOAD_POLL_S)


def unload_model(models: ModelRepository, name: str) -> NoReturn:
    """Refused (UNIMPLEMENTED, naming the way: config.json and a reload), or NOT_FOUND for an unknown model."""
    models.model_status(name, None)
    raise Unimplemented(UNLOAD_REFUSED.format(name=f"{name:.{NAME_CHARS}}"))


def _index_entry(name: str, status: VersionStatus) -> dict[str, str]:
    entry = {"name": name, "version": str(status.version), "state": _INDEX_STATES[status.state]}
    if entry["state"] != READY:
        entry["reason"] = status.error_message if status.error_message != "OK" else status.state.value
    return entry


def _unversioned(models: ModelRepository, name: str) -> dict[str, str]:
    try:
        models.model_status(name, None)
        reason = "no version found"
    except ServingError as error:
        reason = error.message
    return {"name": name, "state": "UNAVAILABLE", "reason": reason}


def _versions_said(statuses: list[VersionStatus]) -> str:
    if not statuses:
        return "no version found in its repository"
    return "; ".join(f"version {s.version} {s.state}: {s.error_message}" for s in statuses[:10])
