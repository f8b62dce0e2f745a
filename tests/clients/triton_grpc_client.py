"""Talk to a model server with the official KServe v2 / Triton gRPC client (tritonclient.grpc) and print
what it says, as JSON.

Runs in the client's own venv (.venv-triton: tritonclient pins a protobuf older than the server's), never
inside pytest. One run executes several commands, each a JSON object, and prints one JSON list, an entry
per command:

    triton_grpc_client.py ADDRESS '{"op": "live"}' '{"op": "infer", "model": "digits", "inputs": "x.npz"}' ...

ops: live, ready, model_ready, server_metadata, metadata, config, index, load, unload (the sync client);
infer (raw inputs from an .npz, optional "version", "outputs", "id", "timeout_us", "client_timeout"),
async_infer (the same through async_infer and its callback), aio (the grpc.aio client: readiness, metadata
and an infer), descriptors (the client's own message fields, to compare with the server's protos).
Any failure -> {"error": {"status": "StatusCode.NOT_FOUND", "message": "..."}}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

TIMEOUT_S = 60


def inputs_of(path: str) -> list[grpcclient.InferInput]:
    """Every array of an .npz as an input of its name, sent raw (what set_data_from_numpy does)."""
    inputs = []
    with np.load(path) as arrays:  # a BYTES tensor is a fixed-width bytes array (dtype S)
        for name in arrays.files:
            array = arrays[name]
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
    return inputs


def infer_arguments(command: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_name": command["model"],
        "inputs": inputs_of(command["inputs"]),
        "model_version": command.get("version", ""),
        "outputs": [grpcclient.InferRequestedOutput(name) for name in command.get("outputs", [])] or None,
        "request_id": command.get("id", ""),
        "timeout": command.get("timeout_us"),
        "client_timeout": command.get("client_timeout", TIMEOUT_S),
    }


def describe(result: grpcclient.InferResult) -> dict[str, Any]:
    response = result.get_response()
    outputs = {}
    for tensor in response.outputs:
        array = result.as_numpy(tensor.name)
        outputs[tensor.name] = {"datatype": tensor.datatype, "shape": list(array.shape), "values": array.tolist()}
    return {"model_version": response.model_version, "id": response.id, "outputs": outputs}


def async_infer(client: grpcclient.InferenceServerClient, command: dict[str, Any]) -> dict[str, Any]:
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def callback(result: grpcclient.InferResult | None, error: InferenceServerException | None) -> None:
        outcome.update(error=error, result=result)
        done.set()

    client.async_infer(callback=callback, **infer_arguments(command))
    if not done.wait(TIMEOUT_S):
        raise TimeoutError("async_infer: no callback")
    if outcome["error"] is not None:
        raise outcome["error"]
    return describe(outcome["result"])


async def aio(address: str, command: dict[str, Any]) -> dict[str, Any]:
    async with aioclient.InferenceServerClient(address) as client:
        return {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(command["model"]),
            "metadata": await client.get_model_metadata(command["model"], as_json=True),
            "infer": describe(await client.infer(**infer_arguments(command))),
        }


def descriptors() -> dict[str, dict[str, list]]:
    """Every field of the client's messages: full message name -> field name -> [number, type, label]."""
    fields: dict[str, dict[str, list]] = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        fields[name] = {f.name: [f.number, f.type, f.label, f.type_name] for f in message.field}
        for nested in message.nested_type:
            walk(name, nested)

    for module in (service_pb2, model_config_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        for message in proto.message_type:
            walk(proto.package, message)
        for enum in proto.enum_type:
            fields[f"{proto.package}.{enum.name}"] = {value.name: [value.number] for value in enum.value}
    return fields


def run(client: grpcclient.InferenceServerClient, address: str, command: dict[str, Any]) -> Any:
    op, model = command["op"], command.get("model", "")
    if op == "live":
        return {"live": client.is_server_live(client_timeout=TIMEOUT_S)}
    if op == "ready":
        return {"ready": client.is_server_ready(client_timeout=TIMEOUT_S)}
    if op == "model_ready":
        return {"ready": client.is_model_ready(model, command.get("version", ""), client_timeout=TIMEOUT_S)}
    if op == "server_metadata":
        return client.get_server_metadata(as_json=True, client_timeout=TIMEOUT_S)
    if op == "metadata":
        return client.get_model_metadata(model, command.get("version", ""), as_json=True, client_timeout=TIMEOUT_S)
    if op == "config":
        return client.get_model_config(model, command.get("version", ""), as_json=True, client_timeout=TIMEOUT_S)
    if op == "index":
        return client.get_model_repository_index(as_json=True, client_timeout=TIMEOUT_S)
    if op == "load":
        client.load_model(model, client_timeout=TIMEOUT_S)
        return {"loaded": model}
    if op == "unload":
        client.unload_model(model, client_timeout=TIMEOUT_S)
        return {"unloaded": model}
    if op == "infer":
        return describe(client.infer(**infer_arguments(command)))
    if op == "async_infer":
        return async_infer(client, command)
    if op == "aio":
        return asyncio.run(aio(address, command))
    if op == "descriptors":
        return descriptors()
    raise ValueError(f"unknown op {op}")


def main(address: str, commands: list[str]) -> None:
    client = grpcclient.InferenceServerClient(address)
    results = []
    for text in commands:
        try:
            results.append(run(client, address, json.loads(text)))
        except InferenceServerException as error:
            results.append({"error": {"status": error.status(), "message": error.message()}})
    client.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
