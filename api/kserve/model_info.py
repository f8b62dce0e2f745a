"""The protocol's metadata documents as plain dicts: REST answers them as JSON, gRPC fills its messages
from them (field names are the same in both)."""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

from api.kserve.datatypes import config_data_type, datatype_of
from inference.signature import ModelSignature, TensorSpec

SERVER_NAME = "ovms-celery"
PLATFORM = "OpenVINO"  # what OpenVINO Model Server reports for its models
BACKEND = "openvino"  # Triton's name of the OpenVINO backend, in a model configuration
# The protocol extensions both frontends serve (ServerMetadata): the repository (index, load), model
# configurations and statistics.
EXTENSIONS = ["model_repository", "model_configuration", "statistics"]


@functools.cache
def server_version() -> str:
    """The installed package's version (the package is named as the server)."""
    return metadata.version(SERVER_NAME)


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


def model_config(name: str, signature: ModelSignature) -> dict[str, Any]:
    """A model configuration as Triton's ModelConfig names it (what ModelConfig answers). `max_batch_size`
    is 0 and `dims` are whole shapes: a request's first dimension is its own, any size the model takes
    (the batching this server does across requests is no limit on it)."""
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "max_batch_size": 0,
        "input": [_config_tensor(spec) for spec in signature.inputs.values()],
        "output": [_config_tensor(spec) for spec in signature.outputs.values()],
    }


def _config_tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "data_type": config_data_type(spec.precision), "dims": list(spec.shape)}
