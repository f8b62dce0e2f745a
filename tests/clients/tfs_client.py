"""Talk to a model server with the official TensorFlow Serving client and print what it says, as JSON.

Runs in the separate TensorFlow venv (.venv-tfs), never inside pytest. TensorFlow takes seconds to
import, so one run executes several commands and prints one JSON list, an entry per command:

    tfs_client.py ADDRESS "predict MODEL INPUT FILE.npy [VERSION]" "status MODEL [VERSION]" "metadata MODEL [VERSION]"
                          "images MODEL INPUT FILE.jpg [FILE.png ...]"

predict -> {"outputs": {name: {"dtype": "DT_FLOAT", "shape": [...], "values": [...]}}}
images  -> the same, for the files' bytes sent as one DT_STRING tensor of shape [N] (encoded images)
status  -> {"versions": [{"version": 1, "state": "AVAILABLE", "error_code": 0, "error_message": "OK"}]}
metadata -> {"model_spec": {...}, "signature_def": {...}} (the unpacked SignatureDefMap)
any failure -> {"error": {"code": "NOT_FOUND", "message": "..."}}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

TIMEOUT_S = 30


def set_spec(spec: Any, model: str, version: list[str]) -> None:
    spec.name = model
    if version:
        spec.version.value = int(version[0])


def predict(channel: grpc.Channel, model: str, input_name: str, path: str, *version: str) -> dict[str, Any]:
    request = predict_pb2.PredictRequest()
    set_spec(request.model_spec, model, list(version))
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(np.load(path)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=TIMEOUT_S)
    return {"outputs": {name: describe(proto) for name, proto in response.outputs.items()}}


def images(channel: grpc.Channel, model: str, input_name: str, *paths: str) -> dict[str, Any]:
    request = predict_pb2.PredictRequest()
    set_spec(request.model_spec, model, [])
    encoded = [Path(path).read_bytes() for path in paths]
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(encoded, shape=[len(encoded)]))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=TIMEOUT_S)
    return {"outputs": {name: describe(proto) for name, proto in response.outputs.items()}}


def describe(proto: Any) -> dict[str, Any]:
    array = tf.make_ndarray(proto)
    return {"dtype": types_pb2.DataType.Name(proto.dtype), "shape": list(array.shape), "values": array.tolist()}


def status(channel: grpc.Channel, model: str, *version: str) -> dict[str, Any]:
    request = get_model_status_pb2.GetModelStatusRequest()
    set_spec(request.model_spec, model, list(version))
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=TIMEOUT_S)
    versions = [
        {
            "version": entry.version,
            "state": get_model_status_pb2.ModelVersionStatus.State.Name(entry.state),
            "error_code": entry.status.error_code,
            "error_message": entry.status.error_message,
        }
        for entry in response.model_version_status
    ]
    return {"versions": versions}


def metadata(channel: grpc.Channel, model: str, *version: str) -> dict[str, Any]:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    set_spec(request.model_spec, model, list(version))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=TIMEOUT_S)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(signatures):
        raise ValueError(f"signature_def holds a {response.metadata['signature_def'].type_url}")
    return {
        "model_spec": json_format.MessageToDict(response.model_spec),
        "signature_def": json_format.MessageToDict(signatures)["signatureDef"],
    }


COMMANDS = {"predict": predict, "status": status, "metadata": metadata, "images": images}


def run(channel: grpc.Channel, command: str) -> dict[str, Any]:
    name, *args = command.split()
    try:
        return COMMANDS[name](channel, *args)
    except grpc.RpcError as error:
        return {"error": {"code": error.code().name, "message": error.details()}}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    address, commands = argv[0], argv[1:]
    with grpc.insecure_channel(address) as channel:
        print(json.dumps([run(channel, command) for command in commands]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
