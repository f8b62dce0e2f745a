"""The TensorFlow Serving REST API of a real `ovms` (real Redis, Celery worker and OpenVINO).

Covers status, metadata and predict (row / columnar, named / unnamed, b64), the seed's error
messages with their HTTP statuses, malformed requests (always 4xx, never 500), the REST-only
headers, and the `ovmsclient` HTTP client, which asks for version 0 when no version is given.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import ovmsclient
import pytest
import requests
from ovmsclient.tfs_compat.base.errors import ModelNotFoundError

from tests.support import images
from tests.support.stack import OvmsProcess

TIMEOUT_S = 60
NO_FORMAT = "Invalid JSON structure. Could not detect row or column format"
MODEL_NOT_FOUND = "Model with requested name is not found"
VERSION_NOT_FOUND = "Model with requested version is not found"
AVAILABLE = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": "OK"}}


# --------------------------------------------------------------------------- helpers


def model_url(server: OvmsProcess, model: str, version: int | str | None = None) -> str:
    url = f"{server.rest_url}/v1/models/{model}"
    return url if version is None else f"{url}/versions/{version}"


def predict(
    server: OvmsProcess,
    model: str,
    body: Any,
    version: int | str | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """POST a predict body: a JSON-able document, or raw bytes / text sent as they are."""
    url = model_url(server, model, version) + ":predict"
    if isinstance(body, (bytes, str)):
        return requests.post(url, data=body, headers=headers, timeout=TIMEOUT_S)
    return requests.post(url, json=body, headers=headers, timeout=TIMEOUT_S)


def predict_ok(server: OvmsProcess, model: str, body: Any, version: int | None = None) -> Any:
    reply = predict(server, model, body, version)
    assert reply.status_code == 200, reply.text
    return reply.json()


def assert_error(reply: requests.Response, status: int, message: str) -> None:
    assert (reply.status_code, reply.json()) == (status, {"error": message}), reply.text


def assert_client_error(reply: requests.Response) -> None:
    """A bad request is a 400 with a JSON error message: never a 500, never a dropped connection."""
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert set(body) == {"error"} and body["error"], body


def b64(array: np.ndarray | bytes) -> dict[str, str]:
    data = array if isinstance(array, bytes) else np.ascontiguousarray(array).tobytes()
    return {"b64": base64.b64encode(data).decode("ascii")}


BLACK_JPEG = images.jpeg(np.zeros((8, 8, 3), np.uint8))


def tensor_meta(dtype: str, shape: list[int], name: str) -> dict[str, Any]:
    return {
        "dtype": dtype,
        "tensorShape": {"dim": [{"size": str(d), "name": ""} for d in shape], "unknownRank": False},
        "name": name,
    }


def nested_lists(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture(scope="module")
def http_client(server: OvmsProcess) -> Any:
    return ovmsclient.make_http_client(f"localhost:{server.rest_port}")


@pytest.fixture(scope="module")
def digits_data(models_dir: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.load(models_dir / "data" / "imgs.npy"), np.load(models_dir / "data" / "labels.npy")


# --------------------------------------------------------------------------- status


def test_status_of_default_model_lists_its_version(server: OvmsProcess) -> None:
    reply = requests.get(model_url(server, "digits"), timeout=TIMEOUT_S)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == {"model_version_status": [AVAILABLE]}


@pytest.mark.parametrize("version", [1, 0])
def test_status_of_explicit_version_and_version_zero(server: OvmsProcess, version: int) -> None:
    reply = requests.get(model_url(server, "digits", version), timeout=TIMEOUT_S)
    assert reply.status_code == 200
    assert reply.json() == {"model_version_status": [AVAILABLE]}


def test_status_lists_every_served_version(server: OvmsProcess) -> None:
    reply = requests.get(model_url(server, "versioned"), timeout=TIMEOUT_S)
    assert reply.status_code == 200
    assert reply.json() == {"model_version_status": [AVAILABLE, {**AVAILABLE, "version": "2"}]}


def test_status_of_one_version_of_many(server: OvmsProcess) -> None:
    reply = requests.get(model_url(server, "versioned", 2), timeout=TIMEOUT_S)
    assert reply.json() == {"model_version_status": [{**AVAILABLE, "version": "2"}]}


@pytest.mark.parametrize("suffix", ["", "/metadata"])
def test_unknown_model_is_404(server: OvmsProcess, suffix: str) -> None:
    assert_error(requests.get(model_url(server, "no_such_model") + suffix, timeout=TIMEOUT_S), 404, MODEL_NOT_FOUND)


@pytest.mark.parametrize("suffix", ["", "/metadata"])
def test_unknown_version_is_404(server: OvmsProcess, suffix: str) -> None:
    reply = requests.get(model_url(server, "versioned", 3) + suffix, timeout=TIMEOUT_S)
    assert_error(reply, 404, VERSION_NOT_FOUND)


def test_unknown_model_and_version_on_predict_are_404(server: OvmsProcess) -> None:
    body = {"instances": [[1, 2, 3, 4]]}
    assert_error(predict(server, "no_such_model", body), 404, MODEL_NOT_FOUND)
    assert_error(predict(server, "versioned", body, version=7), 404, VERSION_NOT_FOUND)


@pytest.mark.parametrize("version", ["abc", "-1", "1.5"])
def test_non_numeric_version_is_400(server: OvmsProcess, version: str) -> None:
    reply = requests.get(model_url(server, "versioned", version), timeout=TIMEOUT_S)
    assert_error(reply, 400, f"Invalid version: {version}")


def test_unknown_route_is_404(server: OvmsProcess) -> None:
    assert_error(requests.get(f"{server.rest_url}/v1/nothing", timeout=TIMEOUT_S), 404, "Not Found")
    assert_error(requests.post(model_url(server, "versioned") + ":explain", timeout=TIMEOUT_S), 404, "Not Found")


# --------------------------------------------------------------------------- metadata


def test_metadata_of_digits(server: OvmsProcess) -> None:
    reply = requests.get(model_url(server, "digits") + "/metadata", timeout=TIMEOUT_S)
    assert reply.status_code == 200
    assert reply.json() == {
        "modelSpec": {"name": "digits", "signatureName": "", "version": "1"},
        "metadata": {
            "signature_def": {
                "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                "signatureDef": {
                    "serving_default": {
                        "inputs": {"x": tensor_meta("DT_FLOAT", [-1, 64], "x")},
                        "outputs": {"probabilities": tensor_meta("DT_FLOAT", [-1, 10], "probabilities")},
                        "methodName": "tensorflow/serving/predict",
                    }
                },
            }
        },
    }


def signature(document: dict[str, Any]) -> dict[str, Any]:
    return document["metadata"]["signature_def"]["signatureDef"]["serving_default"]


@pytest.mark.parametrize(("version", "resolved"), [(None, "2"), (0, "2"), (1, "1"), (2, "2")])
def test_metadata_resolves_the_version(server: OvmsProcess, version: int | None, resolved: str) -> None:
    reply = requests.get(model_url(server, "versioned", version) + "/metadata", timeout=TIMEOUT_S)
    assert reply.status_code == 200
    assert reply.json()["modelSpec"] == {"name": "versioned", "signatureName": "", "version": resolved}


def test_metadata_of_resnet_and_multi(server: OvmsProcess) -> None:
    resnet = requests.get(model_url(server, "resnet") + "/metadata", timeout=TIMEOUT_S).json()
    assert signature(resnet)["inputs"] == {"data": tensor_meta("DT_FLOAT", [1, 3, 224, 224], "data")}
    assert signature(resnet)["outputs"] == {"prob": tensor_meta("DT_FLOAT", [1, 1000], "prob")}
    multi = requests.get(model_url(server, "multi") + "/metadata", timeout=TIMEOUT_S).json()
    assert set(signature(multi)["inputs"]) == {"a", "b"}
    assert set(signature(multi)["outputs"]) == {"sum", "product"}


def test_metadata_uses_mapping_aliases(server: OvmsProcess) -> None:
    document = requests.get(model_url(server, "mapped") + "/metadata", timeout=TIMEOUT_S).json()
    assert signature(document)["inputs"] == {"in": tensor_meta("DT_FLOAT", [-1, 3], "in")}
    assert signature(document)["outputs"] == {"out": tensor_meta("DT_FLOAT", [-1, 3], "out")}


def test_metadata_of_types_model_names_each_tensorflow_dtype(server: OvmsProcess) -> None:
    document = requests.get(model_url(server, "types") + "/metadata", timeout=TIMEOUT_S).json()
    dtypes = {name: spec["dtype"] for name, spec in signature(document)["inputs"].items()}
    assert dtypes == {
        "f16": "DT_HALF",
        "i8": "DT_INT8",
        "u8": "DT_UINT8",
        "i16": "DT_INT16",
        "i32": "DT_INT32",
        "i64": "DT_INT64",
        "boolean": "DT_BOOL",
    }


# --------------------------------------------------------------------------- predict formats


def test_row_format_unnamed(server: OvmsProcess) -> None:
    body = {"instances": [[1, 2, 3, 4], [-1, 0, 0.5, 10]]}
    assert predict_ok(server, "versioned", body) == {"predictions": [[2, 4, 6, 8], [-2, 0, 1, 20]]}


def test_row_format_named(server: OvmsProcess) -> None:
    body = {"instances": [{"x": [1, 2, 3, 4]}, {"x": [5, 6, 7, 8]}]}
    assert predict_ok(server, "versioned", body) == {"predictions": [[2, 4, 6, 8], [10, 12, 14, 16]]}


def test_row_format_ignores_signature_name(server: OvmsProcess) -> None:
    body = {"signature_name": "serving_default", "instances": [[1, 2, 3, 4]]}
    assert predict_ok(server, "versioned", body) == {"predictions": [[2, 4, 6, 8]]}


@pytest.mark.parametrize(("name", "shown"), [(5, "5"), (None, "null"), (["a"], '["a"]'), ({"k": 1}, '{"k":1}')])
@pytest.mark.parametrize("form", ["instances", "inputs"])
def test_a_signature_name_that_is_not_a_string_is_400_as_tf_serving(
    server: OvmsProcess, name: Any, shown: str, form: str
) -> None:
    """TF Serving refuses it (json_tensor.cc) before looking at the inputs; it was served (200)."""
    reply = predict(server, "versioned", {"signature_name": name, form: [[1, 2, 3, 4]]})
    message = f"JSON Value: {shown} not formatted correctly. 'signature_name' key must be a string value."
    assert_error(reply, 400, message)


def test_columnar_format_named(server: OvmsProcess) -> None:
    body = {"inputs": {"x": [[1, 2, 3, 4], [0, 0, 0, 1]]}}
    assert predict_ok(server, "versioned", body) == {"outputs": [[2, 4, 6, 8], [0, 0, 0, 2]]}


def test_columnar_format_bare_value(server: OvmsProcess) -> None:
    assert predict_ok(server, "versioned", {"inputs": [[1, 2, 3, 4]]}) == {"outputs": [[2, 4, 6, 8]]}


def test_multiple_outputs_are_named_in_row_format(server: OvmsProcess) -> None:
    body = {"instances": [{"a": [1, 2], "b": [3, 4]}, {"a": [-1, 0.5], "b": [2, 2]}]}
    assert predict_ok(server, "multi", body) == {
        "predictions": [{"sum": [4, 6], "product": [3, 8]}, {"sum": [1, 2.5], "product": [-2, 1]}]
    }


def test_multiple_outputs_are_named_in_columnar_format(server: OvmsProcess) -> None:
    body = {"inputs": {"a": [[1, 2], [3, -4]], "b": [[5, 6], [0.5, 2]]}}
    assert predict_ok(server, "multi", body) == {
        "outputs": {"sum": [[6, 8], [3.5, -2]], "product": [[5, 12], [1.5, -8]]}
    }


@pytest.mark.parametrize("body", [{"instances": [[1, 2], [3, 4]]}, {"inputs": [[1, 2]]}])
def test_unnamed_inputs_need_a_single_input_model(server: OvmsProcess, body: dict[str, Any]) -> None:
    reply = predict(server, "multi", body)
    assert_error(reply, 400, "Invalid JSON structure. Unnamed inputs need a model with one input; this one has 2")


def test_types_model_round_trips_each_json_type(server: OvmsProcess) -> None:
    inputs = {
        "f16": [[1.5, -2.25]],
        "i8": [[-128, 127]],
        "u8": [[0, 255]],
        "i16": [[-32768, 32767]],
        "i32": [[-(2**31), 2**31 - 1]],
        "i64": [[-5, 2**31 - 1]],
        "boolean": [[True, False]],
    }
    outputs = predict_ok(server, "types", {"inputs": inputs})["outputs"]
    assert outputs == {f"{name}_out": value for name, value in inputs.items()}
    assert outputs["boolean_out"][0][0] is True


@pytest.mark.parametrize(
    "encode", [lambda rows: rows, lambda rows: b64(np.array(rows, dtype="<i8"))], ids=["json", "b64"]
)
def test_i64_values_beyond_what_openvino_computes_are_400(server: OvmsProcess, encode) -> None:
    """The CPU plugin runs I64 as 32-bit integers: [[2**40+5, -2**33]] used to come back [[5, 0]]."""
    inputs = {
        "f16": [[1, 2]],
        "i8": [[1, 2]],
        "u8": [[1, 2]],
        "i16": [[1, 2]],
        "i32": [[1, 2]],
        "i64": encode([[2**40 + 5, -(2**33)]]),
        "boolean": [[True, False]],
    }
    assert_error(
        predict(server, "types", {"inputs": inputs}),
        400,
        f"Invalid input values - I64 input i64 holds {2**40 + 5}, outside -2147483648..2147483647: "
        "OpenVINO computes I64 as 32-bit integers",
    )


def test_integers_are_accepted_for_float_inputs(server: OvmsProcess) -> None:
    assert predict_ok(server, "onnx_add", {"inputs": {"x": [[1, 2, 3]]}}) == {"outputs": [[11, 12, 13]]}


# --------------------------------------------------------------------------- b64


def test_b64_row_instances_are_raw_bytes_of_the_input_type(server: OvmsProcess) -> None:
    rows = np.array([[1, 2, 3, 4], [0.5, -1, 0, 8]], dtype="<f4")
    body = {"instances": [b64(row) for row in rows]}
    assert predict_ok(server, "versioned", body) == {"predictions": (rows * 2).tolist()}


def test_b64_named_row_instances(server: OvmsProcess) -> None:
    rows = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype="<f4")
    body = {"instances": [{"x": b64(row)} for row in rows]}
    assert predict_ok(server, "versioned", body, version=1) == {"predictions": (rows + 1).tolist()}


def test_b64_columnar_tensor_takes_the_signature_shape(server: OvmsProcess) -> None:
    tensor = np.arange(12, dtype="<f4").reshape(3, 4)
    assert predict_ok(server, "versioned", {"inputs": b64(tensor)}) == {"outputs": (tensor * 2).tolist()}
    assert predict_ok(server, "versioned", {"inputs": {"x": b64(tensor)}}) == {"outputs": (tensor * 2).tolist()}


def test_b64_of_integer_input_uses_its_element_size(server: OvmsProcess) -> None:
    inputs: dict[str, Any] = {
        "f16": b64(np.array([[1.5, -2]], dtype="<f2")),
        "i8": b64(np.array([[-3, 4]], dtype="i1")),
        "u8": b64(np.array([[200, 7]], dtype="u1")),
        "i16": b64(np.array([[-300, 301]], dtype="<i2")),
        "i32": [[1, 2]],
        "i64": b64(np.array([[-(2**20), 9]], dtype="<i8")),
        "boolean": [[False, True]],
    }
    outputs = predict_ok(server, "types", {"inputs": inputs})["outputs"]
    assert outputs == {
        "f16_out": [[1.5, -2]],
        "i8_out": [[-3, 4]],
        "u8_out": [[200, 7]],
        "i16_out": [[-300, 301]],
        "i32_out": [[1, 2]],
        "i64_out": [[-(2**20), 9]],
        "boolean_out": [[False, True]],
    }


def test_b64_on_an_image_input_is_an_encoded_image_not_raw_floats(server: OvmsProcess) -> None:
    """resnet's input [1,3,224,224] takes images: b64 there is a JPEG or PNG (tests/integration/test_images.py),
    and raw tensor bytes are refused saying how to get them read (the model's rest_b64 "raw")."""
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    assert_error(
        predict(server, "resnet", {"inputs": {"data": b64(image)}}),
        400,
        "Invalid b64 value - not a JPEG or PNG image: b64 on image input data (1,3,224,224) is an encoded image "
        '(the model\'s rest_b64 setting "raw" reads it as the raw bytes of its FP32 values)',
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!not base64!!", "Invalid b64 value: not base64"),
        (123, "Invalid b64 value: not base64"),
        (base64.b64encode(b"\0\0\0").decode(), "Invalid b64 value: 3 bytes is not a whole number of FP32 values"),
    ],
)
def test_bad_b64_is_400(server: OvmsProcess, value: Any, message: str) -> None:
    assert_error(predict(server, "versioned", {"inputs": {"b64": value}}), 400, message)


def test_b64_instances_of_different_sizes_are_400(server: OvmsProcess) -> None:
    body = {"instances": [b64(np.zeros(4, "<f4")), b64(np.zeros(2, "<f4"))]}
    assert_error(predict(server, "versioned", body), 400, "Invalid JSON structure. b64 instances differ in size")


# --------------------------------------------------------------------------- malformed requests


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]},
        {"signature_name": "serving_default"},
        {"instance": [[1, 2, 3, 4]]},
        [[1, 2, 3, 4]],
        None,
        "text",
        42,
    ],
)
def test_both_or_neither_instances_and_inputs_is_400(server: OvmsProcess, body: Any) -> None:
    assert_error(predict(server, "versioned", json.dumps(body)), 400, NO_FORMAT)


def test_malformed_json_is_400(server: OvmsProcess) -> None:
    reply = predict(server, "versioned", b'{"instances": [[1, 2, 3, 4]]')
    assert_client_error(reply)
    assert reply.json()["error"].startswith("Invalid JSON: ")


def test_empty_body_is_400(server: OvmsProcess) -> None:
    assert_error(predict(server, "versioned", b""), 400, "Invalid JSON: empty request body")


def test_invalid_utf8_body_is_400(server: OvmsProcess) -> None:
    assert_client_error(predict(server, "versioned", b"\xff\xfe\x00"))


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [["a", "b", "c", "d"]]},
        {"inputs": {"x": [["1", "2", "3", "4"]]}},
        {"instances": [[1, 2, "3", 4]]},
    ],
)
def test_strings_for_a_numeric_model_are_400(server: OvmsProcess, body: dict[str, Any]) -> None:
    assert_error(
        predict(server, "versioned", body), 400, "Invalid input precision - Expected: FP32; Actual: non-numeric values"
    )


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [[1, 2, 3, 4], [1, 2]]},
        {"inputs": {"x": [[1, 2, 3, 4], [1, 2, 3]]}},
        {"instances": [[1, 2, 3, None]]},
        {"instances": [{"x": [1, 2, 3, 4]}, [1, 2, 3, 4]]},
        {"instances": [{"x": {"nested": 1}}]},
    ],
)
def test_ragged_or_mixed_arrays_are_400(server: OvmsProcess, body: dict[str, Any]) -> None:
    reply = predict(server, "versioned", body)
    assert_client_error(reply)
    assert reply.json()["error"].startswith(NO_FORMAT)


def test_instances_naming_different_inputs_are_400(server: OvmsProcess) -> None:
    body = {"instances": [{"a": [1, 2], "b": [3, 4]}, {"a": [1, 2], "c": [3, 4]}]}
    assert_error(
        predict(server, "multi", body), 400, "Invalid JSON structure. Every instance must name the same inputs"
    )


@pytest.mark.parametrize("instances", [[], {}, "abc", 7])
def test_instances_must_be_a_non_empty_list(server: OvmsProcess, instances: Any) -> None:
    reply = predict(server, "versioned", {"instances": instances})
    assert_error(reply, 400, "Invalid JSON structure. 'instances' must be a non-empty list")


@pytest.mark.parametrize(
    "body",
    [
        '{"instances": ' + nested_lists(100_000) + "}",
        '{"inputs": {"x": ' + nested_lists(100_000) + "}}",
        nested_lists(100_000),
        '{"instances": [' + '{"x": ' * 100_000 + "1" + "}" * 100_000 + "]}",
    ],
    ids=["instances", "inputs", "bare", "objects"],
)
def test_deeply_nested_json_is_400(server: OvmsProcess, body: str) -> None:
    assert_client_error(predict(server, "versioned", body))


@pytest.mark.parametrize("depth", [40, 70, 500])
def test_nesting_too_deep_for_a_tensor_is_400(server: OvmsProcess, depth: int) -> None:
    body = '{"instances": ' + "[" * depth + "1" + "]" * depth + "}"
    assert_client_error(predict(server, "versioned", body))


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ":predict"),
        ("PUT", ":predict"),
        ("DELETE", ":predict"),
        ("POST", ""),
        ("POST", "/metadata"),
        ("PUT", ""),
        ("DELETE", "/versions/1"),
    ],
)
def test_wrong_http_method_is_405(server: OvmsProcess, method: str, suffix: str) -> None:
    body = {"instances": [[1, 2, 3, 4]]}
    reply = requests.request(method, model_url(server, "versioned") + suffix, json=body, timeout=TIMEOUT_S)
    assert_error(reply, 405, "Method Not Allowed")


# --------------------------------------------------------------------------- versions and mapping


@pytest.mark.parametrize(("version", "expected"), [(1, [[2, 3, 4, 5]]), (2, [[2, 4, 6, 8]]), (None, [[2, 4, 6, 8]])])
def test_versioned_model_serves_the_requested_version(
    server: OvmsProcess, version: int | None, expected: list[list[float]]
) -> None:
    assert predict_ok(server, "versioned", {"instances": [[1, 2, 3, 4]]}, version) == {"predictions": expected}


def test_version_zero_is_the_default_version(server: OvmsProcess) -> None:
    assert predict_ok(server, "versioned", {"inputs": [[1, 2, 3, 4]]}, version=0) == {"outputs": [[2, 4, 6, 8]]}


def test_mapped_model_takes_and_returns_aliases(server: OvmsProcess) -> None:
    assert predict_ok(server, "mapped", {"instances": [{"in": [1, -2, 0.5]}]}) == {"predictions": [[3, -6, 1.5]]}
    assert predict_ok(server, "mapped", {"inputs": {"in": [[1, 2, 3]]}}) == {"outputs": [[3, 6, 9]]}


def test_mapped_model_rejects_the_original_tensor_name(server: OvmsProcess) -> None:
    reply = predict(server, "mapped", {"inputs": {"input_tensor": [[1, 2, 3]]}})
    assert_error(reply, 400, "Missing input with specific name - Required input: in")


def test_digits_accuracy_through_rest(server: OvmsProcess, digits_data: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits_data
    predicted = []
    for batch in np.array_split(images, 4):
        reply = predict(server, "digits", {"instances": batch.tolist()})
        assert reply.status_code == 200, reply.text
        probabilities = np.array(reply.json()["predictions"])
        assert probabilities.shape == (len(batch), 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
        predicted.extend(probabilities.argmax(axis=1))
    accuracy = float(np.mean(np.array(predicted) == labels))
    assert accuracy >= 0.95, accuracy


# --------------------------------------------------------------------------- the seed's validation messages


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        (
            "resnet",
            {"inputs": {"data": [b64(BLACK_JPEG), b64(BLACK_JPEG)]}},
            "Invalid input batch size - Expected: 1; Actual: 2",
        ),
        (
            "resnet",
            {"instances": [b64(BLACK_JPEG), b64(BLACK_JPEG)]},
            "Invalid input batch size - Expected: 1; Actual: 2",
        ),
        (
            "resnet",
            {"inputs": [[1, 2, 3, 4]]},
            "Invalid number of shape dimensions - Expected: (1,3,224,224); Actual: (1,4)",
        ),
        ("versioned", {"instances": [[1, 2, 3]]}, "Invalid input shape - Expected: (-1,4); Actual: (1,3)"),
        (
            "versioned",
            {"instances": [[[1, 2, 3, 4]]]},
            "Invalid number of shape dimensions - Expected: (-1,4); Actual: (1,1,4)",
        ),
        ("multi", {"inputs": {"a": [[1, 2]]}}, "Invalid number of inputs - Expected: 2; Actual: 1"),
        ("multi", {"inputs": {"a": [[1, 2]], "c": [[1, 2]]}}, "Missing input with specific name - Required input: b"),
        (
            "versioned",
            {"inputs": {"x": [[1, 2, 3, 4]], "y": [[1]]}},
            "Invalid number of inputs - Expected: 1; Actual: 2",
        ),
        ("versioned", {"inputs": {}}, "Invalid number of inputs - Expected: 1; Actual: 0"),
    ],
)
def test_seed_validation_messages(server: OvmsProcess, model: str, body: dict[str, Any], message: str) -> None:
    assert_error(predict(server, model, body), 400, message)


def test_fractional_values_for_an_integer_input_are_400(server: OvmsProcess) -> None:
    inputs = {"f16": [[1, 2]], "i8": [[1, 2]], "u8": [[1, 2]], "i16": [[1, 2]], "i32": [[1.5, 2]]}
    body = {"inputs": {**inputs, "i64": [[1, 2]], "boolean": [[True, False]]}}
    assert_error(
        predict(server, "types", body), 400, "Invalid input precision - Expected: I32; Actual: fractional values"
    )


@pytest.mark.parametrize(("name", "value"), [("i8", 2000), ("u8", -1), ("i16", 40000), ("i32", 2**31)])
def test_integers_out_of_the_input_range_are_400(server: OvmsProcess, name: str, value: int) -> None:
    inputs: dict[str, Any] = {n: [[1, 2]] for n in ("f16", "i8", "u8", "i16", "i32", "i64")}
    inputs["boolean"] = [[True, False]]
    inputs[name] = [[1, value]]
    reply = predict(server, "types", {"inputs": inputs})
    assert_client_error(reply)
    assert reply.json()["error"].startswith("Invalid input precision - Expected: "), reply.text


# --------------------------------------------------------------------------- REST headers


def test_predict_names_the_worker_that_served_it(server: OvmsProcess) -> None:
    reply = predict(server, "versioned", {"instances": [[1, 2, 3, 4]]})
    assert reply.status_code == 200
    assert reply.headers.get("X-Ovms-Worker")


def test_valid_request_timeout_header_is_honoured(server: OvmsProcess) -> None:
    reply = predict(server, "versioned", {"instances": [[1, 2, 3, 4]]}, headers={"X-Request-Timeout": "5"})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"predictions": [[2, 4, 6, 8]]}


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", "1e20", ""])
def test_invalid_request_timeout_header_is_400(server: OvmsProcess, value: str) -> None:
    reply = predict(server, "versioned", {"instances": [[1, 2, 3, 4]]}, headers={"X-Request-Timeout": value})
    assert_error(reply, 400, f"Invalid X-Request-Timeout header: {value}")


# --------------------------------------------------------------------------- ovmsclient's HTTP client


def test_ovmsclient_predict_digits(http_client: Any, digits_data: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits_data
    probabilities = http_client.predict({"x": images[:64]}, "digits")
    assert probabilities.shape == (64, 10)
    assert float(np.mean(probabilities.argmax(axis=1) == labels[:64])) >= 0.9


def test_ovmsclient_predict_multiple_outputs_and_versions(http_client: Any) -> None:
    a = np.array([[1, 2]], dtype=np.float32)
    b = np.array([[3, 4]], dtype=np.float32)
    outputs = http_client.predict({"a": a, "b": b}, "multi")
    np.testing.assert_array_equal(outputs["sum"], a + b)
    np.testing.assert_array_equal(outputs["product"], a * b)
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    np.testing.assert_array_equal(http_client.predict({"x": x}, "versioned", 1), x + 1)
    np.testing.assert_array_equal(http_client.predict({"x": x}, "versioned"), x * 2)


def test_ovmsclient_status(http_client: Any) -> None:
    assert http_client.get_model_status("digits") == {1: {"state": "AVAILABLE", "error_code": 0, "error_message": "OK"}}
    assert set(http_client.get_model_status("versioned")) == {1, 2}
    assert http_client.get_model_status("versioned", 2) == {
        2: {"state": "AVAILABLE", "error_code": 0, "error_message": "OK"}
    }


def test_ovmsclient_metadata(http_client: Any) -> None:
    assert http_client.get_model_metadata("digits") == {
        "model_version": 1,
        "inputs": {"x": {"dtype": "DT_FLOAT", "shape": [-1, 64]}},
        "outputs": {"probabilities": {"dtype": "DT_FLOAT", "shape": [-1, 10]}},
    }
    assert http_client.get_model_metadata("versioned", 1)["model_version"] == 1


def test_ovmsclient_reports_not_found(http_client: Any) -> None:
    with pytest.raises(ModelNotFoundError, match=MODEL_NOT_FOUND):
        http_client.get_model_status("no_such_model")
    with pytest.raises(ModelNotFoundError, match=VERSION_NOT_FOUND):
        http_client.predict({"x": np.zeros((1, 4), np.float32)}, "versioned", 9)
