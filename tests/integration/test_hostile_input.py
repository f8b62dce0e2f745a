"""Hostile input against real `ovms` processes: size limits, lying headers and shapes, odd versions, NaN.

Every case is a client error: 4xx with {"error": ...} over REST, INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for
an oversized message) over gRPC; never a 500 / INTERNAL, and the server keeps serving. The generated cases
are in test_fuzz_rest.py (schemathesis, from the OpenAPI document) and test_fuzz_grpc.py (hypothesis).
"""

from __future__ import annotations

import io
import json
import math
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from ovmsclient.tfs_compat.protos.tensorflow.core.framework import types_pb2
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.integration.test_grpc import content_tensor, predict_request, raw_tensor
from tests.support.stack import OvmsProcess, start_ovms

TIMEOUT_S = 30
LIMIT_MB = 1
DIGIT = [0.0] * 64


@pytest.fixture(scope="module")
def small_api(server: OvmsProcess, models_dir: Path, redis_url: str) -> Iterator[OvmsProcess]:
    """An api process with --max_request_mb 1 beside the session server, whose workers answer it."""
    config = str(models_dir / "config.json")
    process = start_ovms(
        ["--config_path", config, "--broker_url", redis_url, "--max_request_mb", str(LIMIT_MB)], role="api"
    )
    yield process
    process.stop()


def predict_url(server: OvmsProcess, model: str) -> str:
    return f"{server.rest_url}/v1/models/{model}:predict"


def grpc_predict(server: OvmsProcess, request: object) -> object:
    with grpc.insecure_channel(server.grpc_address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=TIMEOUT_S)


def grpc_error(server: OvmsProcess, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_predict(server, request)
    return caught.value


def assert_error(reply: requests.Response, status: int, message: str | None = None) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error"} and body["error"], body
    if message is not None:
        assert body["error"] == message


# --------------------------------------------------------------------------- request size


def test_rest_body_over_the_limit_is_413_before_it_is_read(small_api: OvmsProcess) -> None:
    reply = requests.post(predict_url(small_api, "digits"), data=b" " * ((LIMIT_MB << 20) + 1), timeout=TIMEOUT_S)
    assert_error(reply, 413, f"Request body too large: the limit is {LIMIT_MB} MB (--max_request_mb)")


def test_chunked_rest_body_over_the_limit_is_413(small_api: OvmsProcess) -> None:
    chunks = (b" " * 65536 for _ in range(20))  # no Content-Length: counted while it is read
    reply = requests.post(predict_url(small_api, "digits"), data=chunks, timeout=TIMEOUT_S)
    assert_error(reply, 413)


def test_rest_body_under_the_limit_is_served(small_api: OvmsProcess) -> None:
    body = b'{"instances": [' + b",".join([str(DIGIT).encode()] * 2000) + b"]}"  # ~0.7 MB
    assert len(body) < LIMIT_MB << 20
    reply = requests.post(predict_url(small_api, "digits"), data=body, timeout=TIMEOUT_S)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["predictions"]) == 2000


def test_grpc_message_over_the_limit_is_resource_exhausted(small_api: OvmsProcess) -> None:
    too_big = predict_request("digits", {"x": content_tensor(np.zeros((5000, 64), np.float32))})  # 1.28 MB
    error = grpc_error(small_api, too_big)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    fits = predict_request("digits", {"x": content_tensor(np.zeros((3000, 64), np.float32))})  # 0.77 MB
    assert len(grpc_predict(small_api, fits).outputs["probabilities"].tensor_content) == 3000 * 10 * 4


def test_npz_upload_inflating_beyond_the_limit_is_413_unread(small_api: OvmsProcess) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((2 * (LIMIT_MB << 20) // 256, 64), np.float32))  # 2 MB, ~2 KB packed
    reply = requests.post(
        f"{small_api.rest_url}/v1/jobs?model=digits",
        data=buffer.getvalue(),
        headers={"Content-Type": "application/x-npz"},
        timeout=TIMEOUT_S,
    )
    assert_error(reply, 413)
    assert "more than the limit" in reply.json()["error"] and "--max_request_mb" in reply.json()["error"]


# --------------------------------------------------------------------------- headers and shapes that lie


def test_npy_header_claiming_terabytes_is_400(server: OvmsProcess) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 64), }".ljust(117) + "\n"
    upload = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(64)
    reply = requests.post(
        f"{server.rest_url}/v1/jobs?model=digits",
        data=upload,
        headers={"Content-Type": "application/x-npy"},
        timeout=TIMEOUT_S,
    )
    assert_error(reply, 400)
    assert reply.json()["error"].startswith("Invalid .npy/.npz upload: the header declares")


def test_npz_member_that_is_not_an_array_is_400(server: OvmsProcess) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x", b"not an array")
    reply = requests.post(
        f"{server.rest_url}/v1/jobs?model=digits",
        data=buffer.getvalue(),
        headers={"Content-Type": "application/x-npz"},
        timeout=TIMEOUT_S,
    )
    assert_error(reply, 400)


GRPC_CASES = {
    "unknown dtype": (raw_tensor(999, (1, 64), tensor_content=bytes(256)), "Actual: DataType(999)"),
    "string dtype": (
        raw_tensor(types_pb2.DT_STRING, (1, 64), string_val=[b"7"] * 64),
        "Actual: BYTES - encoded images (JPEG, PNG) go to a 4-D input",
    ),
    "negative dim": (raw_tensor(types_pb2.DT_FLOAT, (-1, 64)), "negative dimension in (-1,64)"),
    "huge dims": (raw_tensor(types_pb2.DT_FLOAT, (2**40, 2**40)), "exceeds 268435456 elements"),
    "huge dim beside zero": (raw_tensor(types_pb2.DT_FLOAT, (0, 2**62)), "exceeds 268435456 elements"),
    "thousands of dims": (raw_tensor(types_pb2.DT_FLOAT, (1,) * 5000), "5000 dimensions exceed the limit of 32"),
    "content too long": (
        raw_tensor(types_pb2.DT_FLOAT, (1, 64), tensor_content=bytes(257)),
        "Expected: 256 bytes; Actual: 257 bytes",
    ),
    "content not whole values": (
        raw_tensor(types_pb2.DT_FLOAT, (1, 64), tensor_content=bytes(3)),
        "Expected: 256 bytes; Actual: 3 bytes",
    ),
    "values in another type's field": (
        raw_tensor(types_pb2.DT_FLOAT, (1, 64), int_val=list(range(64))),
        "Expected: 256 bytes; Actual: 0 bytes",
    ),
}


@pytest.mark.parametrize(("tensor", "message"), GRPC_CASES.values(), ids=GRPC_CASES.keys())
def test_grpc_tensors_that_lie_are_invalid_argument(server: OvmsProcess, tensor: object, message: str) -> None:
    error = grpc_error(server, predict_request("digits", {"x": tensor}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message in error.details()


# --------------------------------------------------------------------------- REST odds and ends


@pytest.mark.parametrize("version", ["%C2%B2", "%D9%A1", "99999999999999999999", "1" * 5000, "+1", "0x1"])
def test_versions_that_are_not_plain_int64_numbers_are_400(server: OvmsProcess, version: str) -> None:
    reply = requests.get(f"{server.rest_url}/v1/models/digits/versions/{version}", timeout=TIMEOUT_S)
    assert_error(reply, 400)
    assert reply.json()["error"].startswith("Invalid version: ")


def test_405_names_the_allowed_methods(server: OvmsProcess) -> None:
    reply = requests.put(f"{server.rest_url}/v1/config", timeout=TIMEOUT_S)
    assert_error(reply, 405, "Method Not Allowed")
    assert {method.strip() for method in reply.headers["Allow"].split(",")} >= {"GET"}
    reply = requests.get(predict_url(server, "digits"), timeout=TIMEOUT_S)
    assert_error(reply, 405, "Method Not Allowed")
    assert {method.strip() for method in reply.headers["Allow"].split(",")} == {"POST", "OPTIONS"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "image/png", None])
def test_predict_reads_any_content_type_as_json(server: OvmsProcess, content_type: str | None) -> None:
    """As TF Serving: `curl -d` sends application/x-www-form-urlencoded."""
    headers = {"Content-Type": content_type} if content_type else {}
    body = b'{"instances": [[1, 2, 3, 4]]}'
    reply = requests.post(predict_url(server, "versioned"), data=body, headers=headers, timeout=TIMEOUT_S)
    assert (reply.status_code, reply.json()) == (200, {"predictions": [[2, 4, 6, 8]]}), reply.text


def test_nan_and_infinity_pass_through_float_models(server: OvmsProcess) -> None:
    """JSON's NaN / Infinity literals, as Python's json and TF Serving read and write them."""
    reply = requests.post(
        predict_url(server, "versioned"), data=b'{"instances": [[NaN, Infinity, -Infinity, 1]]}', timeout=TIMEOUT_S
    )
    assert reply.status_code == 200, reply.text
    assert "NaN" in reply.text and "-Infinity" in reply.text
    (row,) = reply.json()["predictions"]
    assert math.isnan(row[0]) and row[1:] == [math.inf, -math.inf, 2]


def test_nan_for_an_integer_input_is_400(server: OvmsProcess) -> None:
    inputs = {name: [[1, 2]] for name in ("f16", "i8", "u8", "i16", "i64")}
    body = {"inputs": {**inputs, "i32": [[1, float("nan")]], "boolean": [[True, False]]}}
    reply = requests.post(predict_url(server, "types"), data=json.dumps(body), timeout=TIMEOUT_S)  # NaN literal
    assert_error(reply, 400, "Invalid input precision - Expected: I32; Actual: NaN or infinite values")


def test_made_up_model_names_add_no_metric_series(server: OvmsProcess) -> None:
    names = [f"no-such-{uuid.uuid4().hex}" for _ in range(20)]
    for name in names:
        assert requests.get(f"{server.rest_url}/v1/models/{name}", timeout=TIMEOUT_S).status_code == 404
        version_url = f"{server.rest_url}/v1/models/digits/versions/{hash(name) % 10**9 + 7}"
        assert requests.get(version_url, timeout=TIMEOUT_S).status_code == 404
    exposition = requests.get(f"{server.rest_url}/metrics", timeout=TIMEOUT_S).text
    assert not any(name in exposition for name in names)
    statuses = [line for line in exposition.splitlines() if 'method="GetModelStatus"' in line]
    assert any('name=""' in line and 'version=""' in line for line in statuses), statuses  # counted, nameless
    assert any('name="digits"' in line and 'version=""' in line for line in statuses), statuses
