"""The protocol's metadata documents as plain dicts: REST answers them as JSON, gRPC fills its messages
from them (field names are the same in both); and whether a model version is ready, which both answer."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from api.dataplane.models import ModelRepository
from api.kserve.datatypes import datatype_of
from inference.errors import NotFound, Unavailable
from inference.signature import ModelSignature, TensorSpec
from inference.states import VersionState

SERVER_NAME = "ovms-celery"
PLATFORM = "OpenVINO"  # what OpenVINO Model Server reports for its models
# Triton's names of the protocol extensions served: binary tensor data (REST), and the model repository's
# index and load (unloading is refused: api.kserve.repository)
EXTENSIONS = ["binary_tensor_data", "model_repository"]


def server_version() -> str:
    """This server's version, as its package is installed."""
    return metadata.version("ovms-celery")


def server_metadata(version: str, extensions: list[str]) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": extensions}


def model_metadata(name: str, versions: list[int], signature: ModelSignature) -> dict[str, Any]:
    """`versions`: the versions that can serve, as the protocol lists them (strings)."""
    return {
        "name": name,
        "versions": [str(version) for version in versions],
        "platform": PLATFORM,
        "inputs": [tensor_metadata(spec) for spec in signature.inputs.values()],
        "outputs": [tensor_metadata(spec) for spec in signature.outputs.values()],
    }


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    """A dynamic dimension is -1, as in our signatures."""
    return {"name": spec.name, "datatype": datatype_of(spec.precision), "shape": list(spec.shape)}


def describe_model(models: ModelRepository, name: str, version: int | None) -> tuple[int, dict[str, Any]]:
    """The metadata document of a version that serves (the default one for None), and that version:
    NOT_FOUND / UNAVAILABLE as a predict would meet them."""
    resolved, signature = models.model_metadata(name, version)
    serving = [status.version for status in models.model_status(name, None) if status.state == VersionState.AVAILABLE]
    return resolved, model_metadata(name, serving, signature)


def not_ready_reason(models: ModelRepository, name: str, version: int | None) -> str | None:
    """None when the version (the default one for None) serves now, else why not: the error a predict
    would meet (an unknown model is not ready, as Triton has it, rather than an error)."""
    try:
        models.model_metadata(name, version)
    except (NotFound, Unavailable) as error:
        return error.message
    return None
