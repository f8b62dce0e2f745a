"""Talk to a server with the official Triton HTTP client (tritonclient.http, and its asyncio client
tritonclient.http.aio) and print what it says, as JSON.

Runs in the separate Triton venv (.venv-triton: tritonclient pins protobuf below what the server needs),
never inside pytest. One run executes several commands and prints one JSON list, an entry per command:

    triton_http_client.py HOST:PORT "live" "ready" "model_ready MODEL [VERSION]" "server_metadata"
        "metadata MODEL [VERSION]" "infer MODEL FILE.npz BINARY_IN BINARY_OUT [VERSION [ID]]"
        "async_infer MODEL FILE.npz" "aio MODEL FILE.npz" "index"

FILE.npz holds the inputs by name; BINARY_IN / BINARY_OUT are 0 or 1 (binary tensor data or JSON).
infer -> {"model_version", "id", "outputs": {name: {"datatype", "shape", "values"}}}
aio -> {"live", "ready", "metadata", "infer"} through tritonclient.http.aio
any InferenceServerException -> {"error": {"status": "404", "message": "..."}}
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

TIMEOUT_S = 30.0


def inputs(path: str, binary: bool = True) -> list[httpclient.InferInput]:
    arrays = np.load(path)
    made = []
    for name in arrays.files:
        array = arrays[name]
        tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        made.append(tensor)
    return made


def described(result: httpclient.InferResult) -> dict[str, Any]:
    response = result.get_response()
    outputs = {}
    for output in response["outputs"]:
        array = result.as_numpy(output["name"])
        outputs[output["name"]] = {"datatype": output["datatype"], "shape": list(array.shape), "values": array.tolist()}
    return {"model_version": response["model_version"], "id": response.get("id"), "outputs": outputs}


def infer(
    client: httpclient.InferenceServerClient,
    model: str,
    path: str,
    binary_in: str,
    binary_out: str,
    version: str = "",
    request_id: str = "",
) -> dict[str, Any]:
    names = [output["name"] for output in client.get_model_metadata(model, version)["outputs"]]
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary_out == "1") for name in names]
    result = client.infer(
        model, inputs(path, binary_in == "1"), model_version=version, outputs=outputs, request_id=request_id
    )
    return described(result)


def async_infer(client: httpclient.InferenceServerClient, model: str, path: str) -> dict[str, Any]:
    pending = [client.async_infer(model, inputs(path), request_id=str(index)) for index in range(4)]
    results = [described(request.get_result(timeout=TIMEOUT_S)) for request in pending]
    return {"ids": [result["id"] for result in results], "first": results[0]}


async def aio(url: str, model: str, path: str) -> dict[str, Any]:
    client = aioclient.InferenceServerClient(url, conn_timeout=TIMEOUT_S)
    try:
        live, ready = await client.is_server_live(), await client.is_server_ready()
        metadata = await client.get_model_metadata(model)
        result = await client.infer(model, inputs(path))
        try:
            await client.infer("no-such-model", inputs(path))
            missing: dict[str, Any] = {}
        except InferenceServerException as error:
            missing = {"status": error.status(), "message": error.message()}
        return {"live": live, "ready": ready, "metadata": metadata, "infer": described(result), "missing": missing}
    finally:
        await client.close()


def run(url: str, client: httpclient.InferenceServerClient, command: str) -> Any:
    verb, *args = command.split()
    try:
        if verb == "live":
            return client.is_server_live()
        if verb == "ready":
            return client.is_server_ready()
        if verb == "model_ready":
            return client.is_model_ready(*args)
        if verb == "server_metadata":
            return client.get_server_metadata()
        if verb == "metadata":
            return client.get_model_metadata(*args)
        if verb == "infer":
            return infer(client, *args)
        if verb == "async_infer":
            return async_infer(client, *args)
        if verb == "aio":
            return asyncio.run(aio(url, *args))
        if verb == "index":
            return client.get_model_repository_index()
        if verb == "config":
            return client.get_model_config(*args)
        if verb == "stats":
            return client.get_inference_statistics(*args)
        if verb == "load":
            return client.load_model(*args)
        if verb == "unload":
            return client.unload_model(*args)
        raise ValueError(f"unknown command {verb}")
    except InferenceServerException as error:
        return {"error": {"status": error.status(), "message": error.message()}}


def main() -> None:
    url, commands = sys.argv[1], sys.argv[2:]
    client = httpclient.InferenceServerClient(url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
    try:
        print(json.dumps([run(url, client, command) for command in commands]))
    finally:
        client.close()


if __name__ == "__main__":
    main()
