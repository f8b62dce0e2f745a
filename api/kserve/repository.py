"""The model repository extension (Triton's), for both v2 frontends: the index of the models and their
versions, and `load` as a configuration reload on every worker. Models are configured in config.json,
so unloading one through the API is refused with the way to do it."""

from __future__ import annotations

from typing import Any, NoReturn

from api.dataplane import DataPlane
from inference.errors import InvalidArgument, NotFound, ServingError, Unavailable, Unimplemented
from inference.states import VersionState, VersionStatus

READY = "READY"
# Triton's model states for ours: a version on its way in is LOADING, one that is gone or that no live worker
# reports is UNAVAILABLE
_INDEX_STATES = {
    VersionState.AVAILABLE: READY,
    VersionState.START: "LOADING",
    VersionState.LOADING: "LOADING",
    VersionState.UNLOADING: "UNLOADING",
    VersionState.END: "UNAVAILABLE",
    VersionState.UNKNOWN: "UNAVAILABLE",
}


def index(dataplane: DataPlane, ready_only: bool = False) -> list[dict[str, Any]]:
    """Every known model version as {"name", "version", "state"[, "reason"]}; a model whose versions cannot
    be told (its repository cannot be read) as one entry without a version. `ready_only`: READY ones only."""
    entries = []
    for name, statuses in dataplane.models.config_status().items():
        entries += [_entry(name, status) for status in statuses] or [_unversioned(dataplane, name)]
    return [entry for entry in entries if entry["state"] == READY or not ready_only]


def load(dataplane: DataPlane, name: str) -> None:
    """Every live worker re-reads its configuration; returns once `name` serves. NOT_FOUND for a model the
    configuration does not have, INVALID_ARGUMENT for an invalid configuration or a model that does not serve."""
    dataplane.models.reload_config()
    if name not in dataplane.models.expected_models():
        raise NotFound(f"Model {name} is not in the configuration: add it to config.json (--config_path), then load it")
    try:
        dataplane.models.model_metadata(name, None)
    except (NotFound, Unavailable) as error:
        raise InvalidArgument(f"Model {name} does not serve after the configuration reload: {error.message}") from None


def unload(name: str) -> NoReturn:
    raise Unimplemented(
        f"Unloading is not supported: remove model {name} from config.json (--config_path); workers apply it "
        "within --file_system_poll_wait_seconds, or at once on POST /v1/config/reload"
    )


def _entry(name: str, status: VersionStatus) -> dict[str, Any]:
    entry = {"name": name, "version": str(status.version), "state": _INDEX_STATES[status.state]}
    if entry["state"] != READY:
        entry["reason"] = status.error_message if status.error_message != "OK" else status.state.value
    return entry


def _unversioned(dataplane: DataPlane, name: str) -> dict[str, Any]:
    try:
        dataplane.models.model_status(name, None)
        reason = "no version"
    except ServingError as error:
        reason = error.message
    return {"name": name, "state": "UNAVAILABLE", "reason": reason}
