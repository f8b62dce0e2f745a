"""The KServe v2 (Open Inference Protocol) REST API of a real `ovms`, spoken with plain HTTP (requests).

Server and model metadata, health and model readiness, inference with JSON (flat and nested) and with
Triton's binary tensor data both ways, every datatype the `types` model has (compared with the TF Serving
REST answer for the same input), id echo, outputs selection, the timeout parameter, versions, errors with
their codes, the repository extension, metrics, and malformed bodies: each a 400 that says what is wrong,
after which the server still serves. A second server checks bearer tokens and the body size limit on /v2.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.support.stack import OvmsProcess, start_ovms

TIMEOUT_S = 60
HEADER_LENGTH = "Inference-Header-Content-Length"
TOKEN = "v2-token-5e1f"
NUMPY_TYPES = {
    "BOOL": "?",
    "FP16": "<f2",
    "FP32": "<f4",
    "INT8": "i1",
    "UINT8": "u1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
}

# The `types` model: identity per element type (extremes included), as v2 datatypes
TYPES = {
    "f16": ("FP16", np.float16, [[65504, -0.5]]),
    "i8": ("INT8", np.int8, [[-128, 127]]),
    "u8": ("UINT8", np.uint8, [[0, 255]]),
    "i16": ("INT16", np.int16, [[-32768, 32767]]),
    "i32": ("INT32", np.int32, [[-(2**31), 2**31 - 1]]),
    "i64": ("INT64", np.int64, [[-(2**31), 2**31 - 1]]),
    "boolean": ("BOOL", np.bool_, [[True, False]]),
}


# --------------------------------------------------------------------------- helpers


def url(server: OvmsProcess, model: str, version: str | None = None, action: str = "") -> str:
    base = f"{server.rest_url}/v2/models/{model}" + (f"/versions/{version}" if version is not None else "")
    return f"{base}/{action}" if action else base


def infer(server: OvmsProcess, model: str, body: Any, version: str | None = None, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return requests.post(url(server, model, version, "infer"), data=data, timeout=TIMEOUT_S, **kwargs)


def infer_binary(
    server: OvmsProcess, model: str, document: dict[str, Any], *contents: bytes, version: str | None = None
) -> requests.Response:
    """A body in Triton's binary tensor data layout: the JSON, then the binary inputs' contents."""
    header = json.dumps(document).encode()
    body = header + b"".join(contents)
    return infer(server, model, body, version, headers={HEADER_LENGTH: str(len(header))})


def answer(response: requests.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A 200 answer's JSON and its outputs as arrays, whether JSON or binary."""
    assert response.status_code == 200, response.text
    header_length = response.headers.get(HEADER_LENGTH)
    content = response.content
    if header_length is None:
        assert response.headers["Content-Type"] == "application/json"
        document, binary = json.loads(content), b""
    else:
        assert response.headers["Content-Type"] == "application/octet-stream"
        document, binary = json.loads(content[: int(header_length)]), content[int(header_length) :]
    arrays, offset = {}, 0
    for output in document["outputs"]:
        dtype = numpy_dtype(output["datatype"])
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arrays[output["name"]] = np.array(output["data"], dtype=dtype).reshape(output["shape"])
        else:
            assert "data" not in output
            arrays[output["name"]] = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(output["shape"])
            offset += size
    assert offset == len(binary)
    return document, arrays


def numpy_dtype(datatype: str) -> np.dtype:
    return np.dtype(NUMPY_TYPES[datatype])


def error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    return response.json()["error"]


def fp32(name: str, array: np.ndarray, **fields: Any) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": list(array.shape), **fields}


def serialized(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


@pytest.fixture(scope="module")
def digits(models_dir: Path) -> np.ndarray:
    return np.load(models_dir / "data" / "imgs.npy")[:16].astype(np.float32)


# --------------------------------------------------------------------------- server, health, metadata


def test_server_metadata_and_health(server: OvmsProcess) -> None:
    metadata = requests.get(f"{server.rest_url}/v2", timeout=TIMEOUT_S).json()
    assert metadata == {
        "name": "ovms-celery",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "model_repository", "model_configuration", "statistics"],
    }
    live = requests.get(f"{server.rest_url}/v2/health/live", timeout=TIMEOUT_S)
    assert (live.status_code, live.json()) == (200, {"live": True})
    ready = requests.get(f"{server.rest_url}/v2/health/ready", timeout=TIMEOUT_S)
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert requests.get(f"{server.rest_url}/v1/health/ready", timeout=TIMEOUT_S).status_code == 200


def test_model_metadata_lists_the_versions_that_serve(server: OvmsProcess) -> None:
    expected = {
        "name": "versioned",
        "versions": ["1", "2"],
        "platform": "OpenVINO",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
    for version in (None, "1", "2", "0"):
        response = requests.get(url(server, "versioned", version), timeout=TIMEOUT_S)
        assert (response.status_code, response.json()) == (200, expected)
    types = requests.get(url(server, "types"), timeout=TIMEOUT_S).json()
    assert {tensor["name"]: tensor["datatype"] for tensor in types["inputs"]} == {n: t[0] for n, t in TYPES.items()}


def test_model_metadata_errors(server: OvmsProcess) -> None:
    assert error(requests.get(url(server, "nope"), timeout=TIMEOUT_S), 404) == "Model with requested name is not found"
    missing = requests.get(url(server, "versioned", "3"), timeout=TIMEOUT_S)
    assert error(missing, 404) == "Model with requested version is not found"
    assert error(requests.get(url(server, "versioned", "x1"), timeout=TIMEOUT_S), 400) == "Invalid version: x1"


def test_model_configuration(server: OvmsProcess) -> None:
    """The same document as gRPC ModelConfig (api.kserve.repository.model_config)."""
    expected = {
        "name": "versioned",
        "platform": "OpenVINO",
        "backend": "openvino",
        "max_batch_size": 0,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [-1, 4]}],
    }
    for version in (None, "1", "0"):
        response = requests.get(url(server, "versioned", version, "config"), timeout=TIMEOUT_S)
        assert (response.status_code, response.json()) == (200, expected)
    unknown = requests.get(url(server, "nope", None, "config"), timeout=TIMEOUT_S)
    assert error(unknown, 404) == "Model with requested name is not found"
    missing = requests.get(url(server, "versioned", "3", "config"), timeout=TIMEOUT_S)
    assert error(missing, 404) == "Model with requested version is not found"


def test_model_readiness(server: OvmsProcess) -> None:
    for version in (None, "1", "2"):
        response = requests.get(url(server, "versioned", version, "ready"), timeout=TIMEOUT_S)
        assert (response.status_code, response.json()) == (200, {"name": "versioned", "ready": True})
    unknown = requests.get(url(server, "nope", None, "ready"), timeout=TIMEOUT_S)
    assert error(unknown, 400) == "Model version not ready: Model with requested name is not found"
    no_version = requests.get(url(server, "versioned", "3", "ready"), timeout=TIMEOUT_S)
    assert error(no_version, 400) == "Model version not ready: Model with requested version is not found"


# --------------------------------------------------------------------------- inference


def test_json_inference_matches_tf_serving_rest(server: OvmsProcess, digits: np.ndarray) -> None:
    response = infer(server, "digits", {"id": "req-1", "inputs": [fp32("x", digits, data=digits.tolist())]})
    document, outputs = answer(response)
    assert (document["model_name"], document["model_version"], document["id"]) == ("digits", "1", "req-1")
    assert document["outputs"][0]["shape"] == [16, 10] and "parameters" not in document["outputs"][0]
    assert response.headers["X-Ovms-Worker"] and int(response.headers["X-Ovms-Batch-Size"]) >= 16
    tfs = requests.post(
        f"{server.rest_url}/v1/models/digits:predict", json={"instances": digits.tolist()}, timeout=TIMEOUT_S
    ).json()["predictions"]
    np.testing.assert_allclose(outputs["probabilities"], np.array(tfs, dtype=np.float32), rtol=1e-6)


def test_flat_and_nested_data_answer_the_same(server: OvmsProcess, digits: np.ndarray) -> None:
    flat = answer(infer(server, "digits", {"inputs": [fp32("x", digits, data=digits.reshape(-1).tolist())]}))[1]
    nested = answer(infer(server, "digits", {"inputs": [fp32("x", digits, data=digits.tolist())]}))[1]
    np.testing.assert_array_equal(flat["probabilities"], nested["probabilities"])


def test_binary_inputs_and_outputs_every_way(server: OvmsProcess, digits: np.ndarray) -> None:
    expected = answer(infer(server, "digits", {"inputs": [fp32("x", digits, data=digits.tolist())]}))[1]
    as_json = {"inputs": [fp32("x", digits, data=digits.tolist())]}
    as_binary = {"inputs": [fp32("x", digits, parameters={"binary_data_size": digits.nbytes})]}
    all_binary = {"parameters": {"binary_data_output": True}}
    one_binary = {"outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    for response in (
        infer(server, "digits", {**as_json, **all_binary}),
        infer(server, "digits", {**as_json, **one_binary}),
        infer_binary(server, "digits", {**as_binary, **all_binary}, digits.tobytes()),
        infer_binary(server, "digits", {**as_binary, **one_binary}, digits.tobytes()),
    ):
        header, got = answer(response)
        assert response.headers[HEADER_LENGTH] == str(len(json.dumps(header).encode()))
        assert header["outputs"][0]["parameters"] == {"binary_data_size": 16 * 10 * 4}
        np.testing.assert_array_equal(got["probabilities"], expected["probabilities"])
    json_out = infer_binary(server, "digits", as_binary, digits.tobytes())
    assert HEADER_LENGTH not in json_out.headers
    np.testing.assert_array_equal(answer(json_out)[1]["probabilities"], expected["probabilities"])


def test_binary_data_false_for_an_output_wins_over_binary_data_output(server: OvmsProcess) -> None:
    body = {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
                   {"name": "b", "datatype": "FP32", "shape": [1, 2], "data": [3, 4]}],
        "outputs": [{"name": "sum", "parameters": {"binary_data": False}}, {"name": "product"}],
        "parameters": {"binary_data_output": True},
    }  # fmt: skip
    document, outputs = answer(infer(server, "multi", body))
    assert [output["name"] for output in document["outputs"]] == ["sum", "product"]
    assert document["outputs"][0]["data"] == [4.0, 6.0]
    assert document["outputs"][1]["parameters"] == {"binary_data_size": 8}
    np.testing.assert_array_equal(outputs["product"], [[3.0, 8.0]])


def test_every_type_of_the_types_model_json_and_binary(server: OvmsProcess) -> None:
    arrays = {name: np.array(values, dtype=dtype) for name, (_, dtype, values) in TYPES.items()}
    tfs = requests.post(
        f"{server.rest_url}/v1/models/types:predict",
        json={"inputs": {name: array.tolist() for name, array in arrays.items()}},
        timeout=TIMEOUT_S,
    ).json()["outputs"]
    json_inputs = [
        {"name": name, "datatype": TYPES[name][0], "shape": [1, 2], "data": array.tolist()}
        for name, array in arrays.items()
    ]
    binary_inputs = [
        {"name": name, "datatype": TYPES[name][0], "shape": [1, 2], "parameters": {"binary_data_size": array.nbytes}}
        for name, array in arrays.items()
    ]
    for response in (
        infer(server, "types", {"inputs": json_inputs}),
        infer_binary(server, "types", {"inputs": binary_inputs, "parameters": {"binary_data_output": True}},
                     *(array.tobytes() for array in arrays.values())),
    ):  # fmt: skip
        document, outputs = answer(response)
        for name, array in arrays.items():
            assert outputs[f"{name}_out"].dtype == array.dtype
            np.testing.assert_array_equal(outputs[f"{name}_out"], array)
            np.testing.assert_array_equal(outputs[f"{name}_out"], np.array(tfs[f"{name}_out"], dtype=array.dtype))
        assert {o["name"]: o["datatype"] for o in document["outputs"]} == {f"{n}_out": t[0] for n, t in TYPES.items()}


def test_datatypes_the_model_does_not_have_are_told_apart(server: OvmsProcess) -> None:
    """Every v2 datatype reaches validation as its precision: a model of another type names both."""
    for datatype, precision, data in [
        ("FP64", "FP64", [1, 2, 3, 4]), ("FP16", "FP16", [1, 2, 3, 4]), ("BF16", "BF16", [1, 2, 3, 4]),
        ("UINT16", "U16", [1, 2, 3, 4]), ("UINT32", "U32", [1, 2, 3, 4]), ("UINT64", "U64", [1, 2, 3, 4]),
        ("INT32", "I32", [1, 2, 3, 4]), ("BOOL", "BOOL", [True] * 4), ("BYTES", "BYTES", ["a", "b", "c", "d"]),
    ]:  # fmt: skip
        body = {"inputs": [{"name": "x", "datatype": datatype, "shape": [1, 4], "data": data}]}
        message = error(infer(server, "versioned", body), 400)
        assert message.startswith(f"Invalid input precision - Expected: FP32; Actual: {precision}")
    content = serialized(b"\xff\xd8jpeg", b"")
    bytes_input = {"name": "x", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(content)}}
    message = error(infer_binary(server, "versioned", {"inputs": [bytes_input]}, content), 400)
    assert message == (
        "Invalid input precision - Expected: FP32; Actual: BYTES - encoded images (JPEG, PNG) go to a 4-D input of "
        "1 or 3 channels in layout NHWC or NCHW; input x takes none: it is not 4-D but (-1,4)"
    )


def test_values_the_type_cannot_hold_are_refused(server: OvmsProcess) -> None:
    def types_body(name: str, values: list[Any]) -> dict[str, Any]:
        inputs = [
            {"name": n, "datatype": t, "shape": [1, 2], "data": values if n == name else v[0]}
            for n, (t, _, v) in TYPES.items()
        ]
        return {"inputs": inputs}

    assert "values out of range" in error(infer(server, "types", types_body("u8", [256, 0])), 400)
    assert "NaN or infinite values" in error(infer(server, "types", types_body("i32", [float("nan"), 0])), 400)
    assert "outside -2147483648..2147483647" in error(infer(server, "types", types_body("i64", [2**40, 0])), 400)
    assert "fractional values" in error(infer(server, "types", types_body("i8", [1.5, 0])), 400)
    assert "booleans in a INT16 tensor" in error(infer(server, "types", types_body("i16", [True, False])), 400)


def test_outputs_selection(server: OvmsProcess) -> None:
    inputs = [{"name": n, "datatype": "FP32", "shape": [1, 2], "data": d} for n, d in (("a", [1, 2]), ("b", [3, 4]))]
    document, outputs = answer(infer(server, "multi", {"inputs": inputs, "outputs": [{"name": "product"}]}))
    assert list(outputs) == ["product"] and document["outputs"][0]["data"] == [3.0, 8.0]
    unknown = infer(server, "multi", {"inputs": inputs, "outputs": [{"name": "product"}, {"name": "ratio"}]})
    assert error(unknown, 400) == "Invalid output name - not found in model outputs: ratio"


def test_the_id_is_echoed_only_when_given(server: OvmsProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    assert "id" not in answer(infer(server, "versioned", body))[0]
    assert answer(infer(server, "versioned", {**body, "id": "ünïcode-id"}))[0]["id"] == "ünïcode-id"


def test_versions(server: OvmsProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    doubled, plus_one = [2, 4, 6, 8], [2, 3, 4, 5]
    for version, model_version, expected in (
        (None, "2", doubled),
        ("1", "1", plus_one),
        ("2", "2", doubled),
        ("0", "2", doubled),
    ):
        document, outputs = answer(infer(server, "versioned", body, version))
        assert document["model_version"] == model_version
        np.testing.assert_array_equal(outputs["y"], [expected])
    assert error(infer(server, "versioned", body, "3"), 404) == "Model with requested version is not found"


def test_the_timeout_parameter_is_the_deadline(server: OvmsProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    expired = infer(server, "versioned", {**body, "parameters": {"timeout": 1}})
    assert error(expired, 504) == "Deadline exceeded while waiting for the inference result"
    generous = infer(
        server, "versioned", {**body, "parameters": {"timeout": 30_000_000}}, headers={"X-Request-Timeout": "1e-9"}
    )
    answer(generous)  # the parameter wins over the header
    assert error(infer(server, "versioned", body, headers={"X-Request-Timeout": "1e-9"}), 504)
    assert "Invalid 'timeout' parameter" in error(
        infer(server, "versioned", {**body, "parameters": {"timeout": "1s"}}), 400
    )
    answer(infer(server, "versioned", {**body, "parameters": {"timeout": 0, "priority": 3, "sequence_id": 9}}))


def test_inference_errors_and_their_codes(server: OvmsProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    assert error(infer(server, "nope", body), 404) == "Model with requested name is not found"
    renamed = {"inputs": [{**body["inputs"][0], "name": "z"}]}
    assert error(infer(server, "versioned", renamed), 400) == "Missing input with specific name - Required input: x"
    wide = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [1, 2, 3, 4, 5]}]}
    assert error(infer(server, "versioned", wide), 400) == "Invalid input shape - Expected: (-1,4); Actual: (1,5)"
    get = requests.get(url(server, "versioned", None, "infer"), timeout=TIMEOUT_S)
    assert error(get, 405) == "Method Not Allowed"
    gzip = infer(server, "versioned", body, headers={"Content-Encoding": "gzip"})
    assert error(gzip, 400) == "Content-Encoding gzip is not supported: send the body uncompressed"


def test_inference_is_counted_as_v2_rest(server: OvmsProcess) -> None:
    answer(
        infer(server, "onnx_add", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
    )
    requests.get(url(server, "onnx_add"), timeout=TIMEOUT_S)
    requests.get(url(server, "onnx_add", None, "ready"), timeout=TIMEOUT_S)
    metrics = requests.get(f"{server.rest_url}/metrics", timeout=TIMEOUT_S).text
    for method in ("ModelInfer", "ModelMetadata", "ModelReady"):
        assert f'ovms_requests_success_total{{interface="v2-rest",method="{method}",name="onnx_add"' in metrics
    assert 'ovms_request_time_us_count{interface="v2-rest",name="onnx_add",tenant="",version="1"}' in metrics


# --------------------------------------------------------------------------- the repository extension


def test_repository_index_load_and_unload(server: OvmsProcess) -> None:
    index = requests.post(f"{server.rest_url}/v2/repository/index", timeout=TIMEOUT_S).json()
    assert {"name": "versioned", "version": "1", "state": "READY"} in index
    assert {"name": "versioned", "version": "2", "state": "READY"} in index
    assert {entry["name"] for entry in index} >= {"digits", "types", "multi"}
    ready = requests.post(f"{server.rest_url}/v2/repository/index", json={"ready": True}, timeout=TIMEOUT_S).json()
    assert ready == [entry for entry in index if entry["state"] == "READY"]
    bad = requests.post(f"{server.rest_url}/v2/repository/index", json={"ready": "yes"}, timeout=TIMEOUT_S)
    assert error(bad, 400) == "Unable to parse 'ready': true or false"

    load = requests.post(f"{server.rest_url}/v2/repository/models/versioned/load", timeout=TIMEOUT_S)
    assert (load.status_code, load.json()) == (200, {})
    unknown = requests.post(f"{server.rest_url}/v2/repository/models/nope/load", timeout=TIMEOUT_S)
    assert error(unknown, 404).startswith("Model nope is not in the configuration")
    override = requests.post(
        f"{server.rest_url}/v2/repository/models/versioned/load",
        json={"parameters": {"config": "{}"}},
        timeout=TIMEOUT_S,
    )
    assert error(override, 400).startswith("Invalid load parameters (config): a model is loaded as config.json")
    null = requests.post(
        f"{server.rest_url}/v2/repository/models/versioned/load", json={"parameters": None}, timeout=TIMEOUT_S
    )
    assert error(null, 400) == "Unable to parse 'parameters': a JSON object"
    unload = requests.post(f"{server.rest_url}/v2/repository/models/versioned/unload", timeout=TIMEOUT_S)
    assert "Model versioned cannot be unloaded on request: remove it from config.json" in error(unload, 501)
    unknown = requests.post(f"{server.rest_url}/v2/repository/models/nope/unload", timeout=TIMEOUT_S)
    assert error(unknown, 404) == "Model with requested name is not found"
    assert requests.get(url(server, "versioned", None, "ready"), timeout=TIMEOUT_S).status_code == 200


# --------------------------------------------------------------------------- hostile bodies


def hostile_bodies() -> Iterator[tuple[str, bytes, dict[str, str], str]]:
    """(case, body, headers, what the 400 says) for bodies that try to make the server misread, over-allocate
    or crash."""
    four = {"name": "x", "datatype": "FP32", "shape": [1, 4]}
    binary = {"inputs": [{**four, "parameters": {"binary_data_size": 16}}]}
    header = json.dumps(binary).encode()
    body = header + bytes(16)
    yield "header longer than the body", body, {HEADER_LENGTH: str(len(body) + 1)}, "the JSON header takes 1.."
    yield "header of 2**40", body, {HEADER_LENGTH: str(2**40)}, "the JSON header takes 1.."
    yield "header 0", body, {HEADER_LENGTH: "0"}, "the JSON header takes 1.."
    yield "negative header", body, {HEADER_LENGTH: "-1"}, "Invalid Inference-Header-Content-Length header: -1"
    yield "header cuts the JSON", body, {HEADER_LENGTH: str(len(header) - 3)}, "Invalid JSON"
    overrun = json.dumps({"inputs": [{**four, "parameters": {"binary_data_size": 17}}]}).encode()
    yield "binary_data_size overruns", overrun + bytes(16), {HEADER_LENGTH: str(len(overrun))}, "17 bytes, but 16"
    huge = json.dumps({"inputs": [{**four, "parameters": {"binary_data_size": 2**62}}]}).encode()
    yield (
        "binary_data_size of 2**62",
        huge + bytes(16),
        {HEADER_LENGTH: str(len(huge))},
        "bytes of binary data are left",
    )
    yield (
        "binary data left over",
        body + b"xx",
        {HEADER_LENGTH: str(len(header))},
        "2 bytes after the last binary input",
    )
    yield "binary without the header", body, {}, "Invalid JSON"
    claim = json.dumps({"inputs": [{**four, "shape": [10**9], "parameters": {"binary_data_size": 4 * 10**9}}]}).encode()
    yield "10**9 elements claimed", claim + bytes(16), {HEADER_LENGTH: str(len(claim))}, "exceeds 268435456 elements"
    count = json.dumps({"inputs": [{**four, "shape": [1, 10**9], "data": [1]}]}).encode()
    yield "10**9 elements in JSON", count, {}, "exceeds 268435456 elements"
    negative = json.dumps({"inputs": [{**four, "shape": [-1, 4], "data": [1, 2, 3, 4]}]}).encode()
    yield "negative shape", negative, {}, "a list of at most 32 non-negative integers"
    mismatch = json.dumps({"inputs": [{**four, "data": [1, 2, 3]}]}).encode()
    yield "shape and data disagree", mismatch, {}, "shape [1, 4] holds 4 elements; 'data' has 3"
    short = json.dumps({"inputs": [{**four, "parameters": {"binary_data_size": 12}}]}).encode()
    yield (
        "binary size and shape disagree",
        short + bytes(12),
        {HEADER_LENGTH: str(len(short))},
        "takes 16 bytes; got 12",
    )
    yield "deep nesting", b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", {}, "Invalid JSON"
    nested = json.dumps({"inputs": [{**four, "data": json.loads("[" * 100 + "1" + "]" * 100)}]})
    yield "data nested deeper than numpy allows", nested.encode(), {}, "ragged or too deeply nested lists"
    mixed = json.dumps({"inputs": [{**four, "data": [1, "2", 3, 4]}]}).encode()
    yield "mixed types", mixed, {}, "strings in a FP32 tensor"
    objects = json.dumps({"inputs": [{**four, "data": [1, {"a": 1}, 3, 4]}]}).encode()
    yield "objects in data", objects, {}, "mixed values"
    long_id = json.dumps({"id": "i" * (1 << 20), "inputs": [{**four, "data": [1, 2, 3, 4]}]}).encode()
    yield "an id of 1 MB", long_id, {}, "Invalid 'id': 1048576 characters; the limit is 1024"
    for label, content in (
        ("BYTES length overruns", struct.pack("<I", 1000) + b"abc"),
        ("BYTES length of 2**32-1", struct.pack("<I", 2**32 - 1)),
        ("BYTES length cut short", b"\x01\x00"),
    ):
        document = json.dumps(
            {
                "inputs": [
                    {"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(content)}}
                ]
            }
        ).encode()
        yield label, document + content, {HEADER_LENGTH: str(len(document))}, "Invalid BYTES data of input 'x'"
    many = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2**24], "data": ["a"]}]}).encode()
    yield "2**24 BYTES elements claimed", many, {}, "BYTES elements exceed the limit of 65536"
    yield "not JSON", b"\xff\xfe\x00garbage", {}, "Invalid JSON"
    yield "empty body", b"", {}, "Invalid JSON: empty request body"


@pytest.mark.parametrize(("body", "headers", "message"), [case[1:] for case in hostile_bodies()],
                         ids=[case[0] for case in hostile_bodies()])  # fmt: skip
def test_hostile_bodies_are_400s_that_say_what_is_wrong(
    server: OvmsProcess, body: bytes, headers: dict[str, str], message: str
) -> None:
    response = infer(server, "versioned", body, headers=headers)
    assert message in error(response, 400)
    still = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    np.testing.assert_array_equal(answer(infer(server, "versioned", still))[1]["y"], [[2, 4, 6, 8]])


# --------------------------------------------------------------------------- tokens and size limits


@pytest.fixture(scope="module")
def guarded(models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvmsProcess]:
    """Bearer tokens and a 1 MB body limit."""
    tokens = tmp_path_factory.mktemp("v2-auth") / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    process = start_ovms(
        [
            "--model_name", "guarded", "--model_path", str(models_dir / "versioned"), "--broker_url", redis_url,
            "--auth_token_file", str(tokens), "--max_request_mb", "1",
        ]
    )  # fmt: skip
    yield process
    process.stop()


def test_tokens_guard_v2_as_v1_and_health_stays_open(guarded: OvmsProcess) -> None:
    base = guarded.rest_url
    for path in ("/v2/health/live", "/v2/health/ready", "/v1/health/live"):
        assert requests.get(base + path, timeout=TIMEOUT_S).status_code == 200, path
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    calls = [
        ("GET", "/v2", None), ("GET", "/v2/models/guarded", None), ("GET", "/v2/models/guarded/ready", None),
        ("POST", "/v2/models/guarded/infer", body), ("POST", "/v2/repository/index", None),
        ("GET", "/v1/models/guarded", None),
    ]  # fmt: skip
    for method, path, data in calls:
        refused = requests.request(method, base + path, data=data, timeout=TIMEOUT_S)
        assert (refused.status_code, refused.json()) == (401, {"error": "Missing or invalid bearer token"}), path
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="ovms"'
        wrong = requests.request(
            method, base + path, data=data, headers={"Authorization": "Bearer x"}, timeout=TIMEOUT_S
        )
        assert wrong.status_code == 401, path
        allowed = requests.request(
            method, base + path, data=data, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT_S
        )
        assert allowed.status_code == 200, (path, allowed.text)
    outputs = answer(infer(guarded, "guarded", json.loads(body), headers={"Authorization": f"Bearer {TOKEN}"}))[1]
    np.testing.assert_array_equal(outputs["y"], [[2, 4, 6, 8]])


def test_the_body_limit_applies_to_binary_bodies(guarded: OvmsProcess) -> None:
    rows = np.ones((70_000, 4), dtype=np.float32)  # 1.1 MB
    document = {"inputs": [fp32("x", rows, parameters={"binary_data_size": rows.nbytes})]}
    header = json.dumps(document).encode()
    response = requests.post(
        url(guarded, "guarded", None, "infer"),
        data=header + rows.tobytes(),
        headers={HEADER_LENGTH: str(len(header)), "Authorization": f"Bearer {TOKEN}"},
        timeout=TIMEOUT_S,
    )
    assert error(response, 413) == "Request body too large: the limit is 1 MB (--max_request_mb)"
    within = rows[:60_000]
    document = {"inputs": [fp32("x", within, parameters={"binary_data_size": within.nbytes})]}
    header = json.dumps(document).encode()
    response = requests.post(
        url(guarded, "guarded", None, "infer"),
        data=header + within.tobytes(),
        headers={HEADER_LENGTH: str(len(header)), "Authorization": f"Bearer {TOKEN}"},
        timeout=TIMEOUT_S,
    )
    np.testing.assert_array_equal(answer(response)[1]["y"], within * 2)
