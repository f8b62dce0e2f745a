"""The protocol's metadata documents as plain dicts: REST answers them as JSON, gRPC fills its messages
from them (field names are the same in both)."""

from __future__ import annotations

from typing import Any

from api.kserve.datatypes import datatype_of
from inference.signature import ModelSignature, TensorSpec

SERVER_NAME = "ovms-celery"
PLATFORM = "OpenVINO"  # what OpenVINO Model Server reports for its models


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
