"""What the v2 protocol asks of the model repository (api.dataplane.models), answered as plain data for
both frontends: whether a model is ready, its metadata and configuration documents, the repository index,
and the repository extension's load and unload.

Models come from config.json: loading one re-reads the configuration on every worker (as POST
/v1/config/reload does) and answers once the model serves; unloading is done by removing the model from
config.json, so an unload request is refused with the way to do it.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from api.dataplane.models import ModelRepository
from api.kserve import model_info
from inference.errors import FailedPrecondition, InvalidArgument, NotFound
from inference.states import PREPARING, VersionState, VersionStatus

LOAD_POLL_S = 0.1  # how often a load looks whether the model's new versions are AVAILABLE yet
NAME_CHARS = 200  # of a client's model name quoted in a message

# Version states as the repository index names them (Triton's model states).
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


def model_ready(models: ModelRepository, name: str, version: int | None) -> bool:
    """Whether the version (None: the default one) is AVAILABLE on a live worker; False for a model or
    version nobody knows, as Triton answers."""
    try:
        statuses = models.model_status(name, version)
    except NotFound:
        return False
    return any(status.state == VersionState.AVAILABLE for status in statuses)


def model_metadata(models: ModelRepository, name: str, version: int | None) -> dict[str, Any]:
    """The metadata document of a version (None: the default one), listing the versions that serve."""
    _, signature = models.model_metadata(name, version)
    serving = [status.version for status in models.model_status(name, None) if status.state == VersionState.AVAILABLE]
    return model_info.model_metadata(name, serving, signature)


def model_config(models: ModelRepository, name: str, version: int | None) -> dict[str, Any]:
    """The configuration document of a version (None: the default one)."""
    _, signature = models.model_metadata(name, version)
    return model_info.model_config(name, signature)


def repository_index(models: ModelRepository, ready_only: bool) -> list[dict[str, str]]:
    """Every known model version: {"name", "version", "state", "reason"} with Triton's state names (READY,
    LOADING, UNLOADING, UNAVAILABLE); a model without versions is one entry without a version.
    `ready_only`: the READY versions only."""
    entries = []
    for name, statuses in models.config_status().items():
        if not statuses:
            entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "no version found"})
        entries.extend(_index_entry(name, status) for status in statuses)
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
        except NotFound:
            raise NotFound(
                f"Model {name:.{NAME_CHARS}} is configured, but no live worker reports it: is a worker running "
                "for its target device?"
            ) from None
        if any(status.state == VersionState.AVAILABLE for status in statuses):
            return
        if not any(status.state in PREPARING for status in statuses) or time.monotonic() >= deadline:
            raise InvalidArgument(f"Model {name} did not load: {_versions_said(statuses)}")
        time.sleep(LOAD_POLL_S)


def unload_model(models: ModelRepository, name: str) -> None:
    """Refused (FAILED_PRECONDITION, naming the way: config.json), or NOT_FOUND for an unknown model."""
    models.model_status(name, None)
    raise FailedPrecondition(UNLOAD_REFUSED.format(name=f"{name:.{NAME_CHARS}}"))


def _index_entry(name: str, status: VersionStatus) -> dict[str, str]:
    state = _INDEX_STATES[status.state]
    reason = "" if state == READY or status.error_message == "OK" else status.error_message
    return {"name": name, "version": str(status.version), "state": state, "reason": reason}


def _versions_said(statuses: list[VersionStatus]) -> str:
    if not statuses:
        return "no version found in its repository"
    return "; ".join(f"version {s.version} {s.state}: {s.error_message}" for s in statuses[:10])
