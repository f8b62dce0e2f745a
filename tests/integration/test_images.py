"""Image inputs through a real server: encoded JPEG and PNG photographs sent as TF Serving REST b64 and TF
Serving gRPC DT_STRING (ovmsclient, raw protos), decoded on the worker.

What a model answers for an image must be what it answers for the tensor a client decodes from the same
bytes (with OpenCV, the library the workers use) and sends itself: `resnet` (FP32 NCHW, fixed 224x224),
`image_u8` (U8 NHWC identity, fixed 32x48: the pixels as the server decoded them), `image_mean` (per-channel
mean of FP32 NCHW images of any size), `image_gray` (one channel).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import ovmsclient
import psutil
import pytest
import redis
import requests
from ovmsclient.tfs_compat.protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from api.protos import grpc_service_pb2 as v2
from api.protos import grpc_service_pb2_grpc
from inference.bytes_tensors import bytes_array
from inference.request import InferenceRequest
from tasks.app import app, configure
from tasks.messages import ComputedOutputs, pack_requests
from tasks.publisher import PredictPublisher, store_client
from tasks.routing import queue_for
from tests.support import images
from tests.support.jobs import wait_for_end
from tests.support.leaks import rss_bytes
from tests.support.stack import OvmsProcess, child_named

PHOTOS = images.photographs()
CHINA = PHOTOS["china"]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def client(server: OvmsProcess) -> ovmsclient.tfs_compat.grpc.serving_client.GrpcClient:
    return ovmsclient.make_grpc_client(server.grpc_address)


@pytest.fixture(scope="module")
def stub(server: OvmsProcess):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


def rest(server: OvmsProcess, model: str, body: Any) -> requests.Response:
    return requests.post(f"{server.rest_url}/v1/models/{model}:predict", json=body, timeout=60)


def rest_ok(server: OvmsProcess, model: str, body: Any) -> np.ndarray:
    reply = rest(server, model, body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    return np.array(answer["predictions"] if "predictions" in answer else answer["outputs"])


def strings(*elements: bytes, shape: tuple[int, ...] | None = None) -> tensor_pb2.TensorProto:
    """A DT_STRING tensor, as TensorFlow and ovmsclient send encoded images."""
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in (shape or (len(elements),))]
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims), string_val=elements
    )


def grpc_error(stub, model: str, tensor: tensor_pb2.TensorProto, name: str = "image") -> grpc.RpcError:
    request = predict_pb2.PredictRequest(inputs={name: tensor})
    request.model_spec.name = model
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=60)
    return error.value


# --------------------------------------------------------------------------- the answer for an image


@pytest.mark.parametrize("photo", list(PHOTOS))
@pytest.mark.parametrize("encode", [images.jpeg, images.png])
def test_resnet_answers_an_image_as_the_tensor_decoded_from_it(server, client, photo, encode) -> None:
    data = encode(PHOTOS[photo], 224, 224)
    from_tensor = client.predict({"data": images.nchw(images.decoded(data))}, "resnet")
    from_grpc = client.predict({"data": data}, "resnet")  # ovmsclient sends bytes as DT_STRING
    from_rest = rest_ok(server, "resnet", {"instances": [b64(data)]})
    for answer in (from_grpc, from_rest):
        np.testing.assert_allclose(answer, from_tensor, rtol=1e-4, atol=1e-6)
        assert answer.argmax() == from_tensor.argmax()


def test_an_image_of_another_size_is_resized_to_the_models_as_opencv_resizes(server, client) -> None:
    data = images.jpeg(CHINA)  # 640x427, to a 224x224 model
    expected = client.predict({"data": images.nchw(images.resized(images.decoded(data), 224, 224))}, "resnet")
    np.testing.assert_allclose(client.predict({"data": data}, "resnet"), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rest_ok(server, "resnet", {"inputs": b64(data)}), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("encode", [images.jpeg, images.png])
def test_pixels_arrive_bgr_in_nhwc_u8_as_a_client_decodes_them(server, client, encode) -> None:
    sizes = [(48, 32), (640, 427), (20, 90)]  # the model's own, then two resized to it
    encoded = [encode(photo, *size) for photo, size in zip([CHINA, PHOTOS["flower"], CHINA], sizes, strict=True)]
    expected = np.stack([images.resized(images.decoded(data), 48, 32) for data in encoded])
    np.testing.assert_array_equal(client.predict({"image": encoded}, "image_u8"), expected)
    served = rest_ok(server, "image_u8", {"instances": [b64(data) for data in encoded]})
    np.testing.assert_array_equal(served, expected)
    # an independent decoder sees the same pixels (within JPEG decoders' rounding): the order is BGR
    assert np.abs(served[0] - images.decoded_by_pillow(encoded[0]).astype(int)).max() <= 2
    red = rest_ok(server, "image_u8", {"inputs": {"image": b64(images.png(images.solid(0, 0, 255)))}})
    assert np.unique(red.reshape(-1, 3), axis=0).tolist() == [[0, 0, 255]]


def test_a_model_of_any_size_takes_each_images_own_size_in_nchw_fp32(server, client) -> None:
    for size in [(640, 427), (31, 17)]:
        encoded = [images.png(CHINA, *size), images.jpeg(PHOTOS["flower"], *size)]
        expected = [images.decoded(data).reshape(-1, 3).mean(axis=0) for data in encoded]
        np.testing.assert_allclose(client.predict({"image": encoded}, "image_mean"), expected, rtol=1e-5)
        rows = rest_ok(server, "image_mean", {"inputs": {"image": [b64(data) for data in encoded]}})
        np.testing.assert_allclose(rows, expected, rtol=1e-5)


def test_images_of_different_sizes_for_a_dynamic_size_are_refused_naming_both(server, stub) -> None:
    small, large = images.png(CHINA, 31, 17), images.jpeg(CHINA)
    message = (
        "Invalid image size - the images of one request must have one size for input image, whose height or width "
        "is dynamic: image 0 is 31x17, image 1 is 640x427"
    )
    reply = rest(server, "image_mean", {"instances": [b64(small), b64(large)]})
    assert (reply.status_code, reply.json()) == (400, {"error": message})
    error = grpc_error(stub, "image_mean", strings(small, large))
    assert (error.code(), error.details()) == (INVALID, message)


def test_a_one_channel_input_gets_gray_pixels(server, client) -> None:
    data = images.jpeg(CHINA, 32, 24)
    expected = images.decoded(data, gray=True)[None, None].astype(np.float32)
    np.testing.assert_array_equal(client.predict({"image": data}, "image_gray"), expected)
    np.testing.assert_array_equal(rest_ok(server, "image_gray", {"instances": [b64(data)]}), expected)


def test_the_official_shapes_n_and_n_by_1_and_a_scalar_are_n_images(server, stub) -> None:
    data = images.png(CHINA, 48, 32)
    for shape in [(2,), (2, 1)]:
        request = predict_pb2.PredictRequest(inputs={"image": strings(data, data, shape=shape)})
        request.model_spec.name = "image_u8"
        assert stub.Predict(request, timeout=30).outputs["pixels"].tensor_shape.dim[0].size == 2
    request = predict_pb2.PredictRequest(inputs={"image": strings(data, shape=())})
    request.model_spec.name = "image_u8"
    assert [d.size for d in stub.Predict(request, timeout=30).outputs["pixels"].tensor_shape.dim] == [1, 32, 48, 3]


def test_kserve_v2_grpc_bytes_are_images_too(server) -> None:
    """The KServe v2 frontend hands the same BYTES tensor to the data plane: a batch of JPEGs in Triton's
    raw serialization (4-byte little-endian length, then the bytes) or in bytes_contents."""
    encoded = [images.jpeg(CHINA, 48, 32), images.png(PHOTOS["flower"], 640, 427)]
    expected = np.stack([images.resized(images.decoded(data), 48, 32) for data in encoded])
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for raw in (True, False):
            request = v2.ModelInferRequest(model_name="image_u8")
            tensor = request.inputs.add(name="image", datatype="BYTES", shape=[len(encoded)])
            if raw:
                request.raw_input_contents.append(b"".join(len(d).to_bytes(4, "little") + d for d in encoded))
            else:
                tensor.contents.bytes_contents.extend(encoded)
            response = stub.ModelInfer(request, timeout=60)
            pixels = np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(tuple(response.outputs[0].shape))
            np.testing.assert_array_equal(pixels, expected)


def test_kserve_v2_rest_bytes_are_images_too(server) -> None:
    """The v2 REST frontend hands the data plane the same BYTES tensor (api.kserve.tensors): a batch of
    images as binary tensor data in Triton's serialization, and as base64 JSON strings."""
    encoded = [images.jpeg(CHINA, 48, 32), images.png(PHOTOS["flower"], 640, 427)]
    expected = np.stack([images.resized(images.decoded(data), 48, 32) for data in encoded])
    url = f"{server.rest_url}/v2/models/image_u8/infer"
    content = b"".join(len(d).to_bytes(4, "little") + d for d in encoded)
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(encoded)]}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(content)}}]}).encode()
    binary = requests.post(
        url, data=header + content, headers={"Inference-Header-Content-Length": str(len(header))}, timeout=60
    )
    as_base64 = {**tensor, "parameters": {"content_type": "base64"}, "data": [b64(d)["b64"] for d in encoded]}
    text = requests.post(url, json={"inputs": [as_base64]}, timeout=60)
    for reply in (binary, text):
        assert reply.status_code == 200, reply.text
        (output,) = reply.json()["outputs"]
        pixels = np.array(output["data"], np.uint8).reshape(output["shape"])
        np.testing.assert_array_equal(pixels, expected)


# --------------------------------------------------------------------------- batches


def test_requests_batched_together_fail_only_where_their_image_is_bad(server, stub) -> None:
    """Concurrent requests share inferences; a truncated image passes the api's header check and fails on the
    worker, alone."""
    good = [images.png(CHINA, 48, 32), images.jpeg(PHOTOS["flower"], 48, 32)]
    truncated = images.jpeg(CHINA)[:5000]

    def send(data: bytes) -> grpc.RpcError | np.ndarray:
        request = predict_pb2.PredictRequest(inputs={"image": strings(data)})
        request.model_spec.name = "image_u8"
        try:
            proto = stub.Predict(request, timeout=60).outputs["pixels"]
        except grpc.RpcError as error:
            return error
        return np.frombuffer(proto.tensor_content, np.uint8).reshape(32, 48, 3)

    sent = [good[i % 2] if i % 3 else truncated for i in range(48)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, sent))
    for data, answer in zip(sent, answers, strict=True):
        if data is truncated:
            assert (answer.code(), answer.details()) == (
                INVALID,
                "Invalid image - image 0, a JPEG of 640x427, cannot be decoded (truncated or corrupt)",
            )
        else:
            np.testing.assert_array_equal(answer, images.decoded(data))


def _served_as_one_message(redis_url: str, model: str, requests_: list[InferenceRequest], edit=None) -> dict:
    """Publish `requests_` as one predict message (as the api's coalescing does), optionally with its payload
    edited, and return the worker's results by request id."""
    configure(redis_url)
    store = store_client(redis_url)
    reply_to = f"ovms:reply:test-{uuid.uuid4().hex}"
    envelope, payload = pack_requests(requests_, {"image": "U8"})
    if edit is not None:
        payload = [edit(b"".join(payload))]
    PredictPublisher(app, store, store).publish(
        "images-" + uuid.uuid4().hex, envelope, payload, queue_for("CPU", model), reply_to, 30
    )
    _, raw = redis.Redis.from_url(redis_url).brpop([reply_to], timeout=30)
    return app.backend.decode(raw)["result"]["results"]


def test_in_one_message_each_request_gets_its_images_or_its_own_error(server, redis_url) -> None:
    """The worker checks again what the api checked (it trusts nothing read from Redis): a bomb's header, a
    truncated image and a wrong count fail their own request only."""
    good = images.png(CHINA, 48, 32)
    now = time.time()
    sent = {
        "good.0": [good],
        "bomb": [good, images.png_claiming(100_000, 100_000)],
        "good.1": [good, images.jpeg(CHINA, 48, 32)],
        "truncated": [images.jpeg(CHINA)[:-3]],
        "empty": [b""],
    }
    requests_ = [
        InferenceRequest("image_u8", 1, {"image": bytes_array(data)}, None, now + 30, request_id, pinned=False)
        for request_id, data in sent.items()
    ]
    results = _served_as_one_message(redis_url, "image_u8", requests_)
    for request_id in ("good.0", "good.1"):
        pixels = ComputedOutputs.from_wire(results[request_id]).arrays()["pixels"]
        np.testing.assert_array_equal(pixels, np.stack([images.decoded(data) for data in sent[request_id]]))
    assert results["bomb"]["error"] == [
        "InvalidArgument",
        "Invalid image - image 1 is a PNG of 100000x100000 pixels; at most 16777216 pixels are decoded for this input",
    ]
    assert results["truncated"]["error"][1].endswith("cannot be decoded (truncated or corrupt)")
    assert results["empty"]["error"] == ["InvalidArgument", "Invalid image - image 0 is empty"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda payload: b"\xff\xff\xff\x7f" + payload[4:], "claims 2147483647 bytes"),  # a length beyond the payload
        (lambda payload: (len(payload) - 5).to_bytes(4, "little") + payload[4:], "1 bytes follow the last BYTES"),
        (lambda payload: payload[:-1], "tensor metadata does not match the payload"),
    ],
)
def test_length_prefixes_that_lie_fail_their_message_not_the_worker(server, client, redis_url, edit, message):
    good = images.png(CHINA, 48, 32)
    request = InferenceRequest("image_u8", 1, {"image": bytes_array([good])}, None, time.time() + 30, "r.0")
    results = _served_as_one_message(redis_url, "image_u8", [request], edit)
    assert results["r.0"]["error"][0] == "InvalidArgument" and message in results["r.0"]["error"][1]
    np.testing.assert_array_equal(client.predict({"image": good}, "image_u8")[0], images.decoded(good))


def test_a_batch_of_n_images_is_n_rows_each_answered_as_alone(server, client) -> None:
    encoded = [images.jpeg(photo, 48, 32, quality=q) for photo in PHOTOS.values() for q in (50, 95)]
    together = client.predict({"image": encoded}, "image_u8")
    assert together.shape == (4, 32, 48, 3)
    for row, data in zip(together, encoded, strict=True):
        np.testing.assert_array_equal(row, client.predict({"image": data}, "image_u8")[0])


def test_ten_thousand_tiny_images_are_one_request_of_ten_thousand_rows(server, stub) -> None:
    tiny = images.png(CHINA, 1, 1)
    request = predict_pb2.PredictRequest(inputs={"image": strings(*[tiny] * 10_000)})
    request.model_spec.name = "image_mean"
    started = time.monotonic()
    means = stub.Predict(request, timeout=60).outputs["mean"]
    assert [d.size for d in means.tensor_shape.dim] == [10_000, 3]
    assert time.monotonic() - started < 30
    # resized to a fixed 224x224 they would be 1.5 G elements: refused before anything is decoded
    error = grpc_error(stub, "resnet", strings(*[tiny] * 10_000), name="data")
    assert (error.code(), error.details()) == (INVALID, "Invalid input batch size - Expected: 1; Actual: 10000")


# --------------------------------------------------------------------------- inputs that take no images


def test_an_image_for_an_input_that_takes_none_is_refused_naming_why(server, stub) -> None:
    data = images.jpeg(CHINA, 8, 8)
    error = grpc_error(stub, "digits", strings(data), name="x")
    assert (error.code(), error.details()) == (
        INVALID,
        "Invalid input precision - Expected: FP32; Actual: BYTES - encoded images (JPEG, PNG) go to a 4-D input "
        "of 1 or 3 channels in layout NHWC or NCHW; input x takes none: it is not 4-D but (-1,64)",
    )
    reply = rest(server, "digits", {"instances": [b64(data)]})
    assert reply.status_code == 400
    assert reply.json()["error"].startswith("Invalid b64 value - a JPEG image, but b64 on input x (-1,64) is the raw")


def test_b64_that_is_not_base64_is_refused(server) -> None:
    reply = rest(server, "resnet", {"instances": [{"b64": "not base64 at all!"}]})
    assert (reply.status_code, reply.json()) == (400, {"error": "Invalid b64 value: not base64"})


# --------------------------------------------------------------------------- hostile images


def _worker(server: OvmsProcess) -> psutil.Process:
    return child_named(server, "worker")


CLEAN = images.png(CHINA, 48, 32)
HOSTILE = {
    "truncated jpeg": (images.jpeg(CHINA)[:9000], "cannot be decoded (truncated or corrupt)"),
    "truncated png": (images.png(CHINA)[:20000], "cannot be decoded (truncated or corrupt)"),
    "not an image": (b"<html>hello</html>", "neither JPEG nor PNG (starts with 3c68746d6c3e6865)"),
    "empty": (b"", "Invalid image - image 0 is empty"),
    "png of 100000x100000": (images.png_claiming(100_000, 100_000), "a PNG of 100000x100000 pixels; at most"),
    "jpeg of 65000x65000": (images.jpeg_claiming(images.jpeg(CHINA), 65_000, 65_000), "JPEG of 65000x65000 pixels"),
    "jpeg hiding an 8000x8000 frame behind FF 00": (
        images.jpeg_hiding_its_frame(images.jpeg(CHINA, 48, 32), 8000, 8000),
        "JPEG with a stuffed zero (FF 00) where a segment marker should be",
    ),
    "progressive jpeg of 1000 scans": (images.jpeg_of_many_scans(2048, 2048, 1000), "JPEG of 1000 scans; at most 100"),
    "png chunk claiming 100 MB": (
        images.png_with_chunk(CLEAN, b"\x05\xf5\xe1\x00zTXt" + bytes(64)),
        "cannot be decoded (truncated or corrupt)",
    ),
    "png with a 200 MB zTXt bomb": (
        images.png_with_chunk(CLEAN, images.png_chunk(b"zTXt", b"k\0\0" + zlib.compress(bytes(200 << 20), 9))),
        None,  # libpng bounds text chunks: the image itself decodes (Pillow refuses the file)
    ),
    "png with a 200 MB iCCP bomb": (
        images.png_with_chunk(CLEAN, images.png_chunk(b"iCCP", b"p\0\0" + zlib.compress(bytes(200 << 20), 9))),
        None,
    ),
    "cmyk jpeg": (images.pillow(images.resized(CHINA, 48, 32), "CMYK", "JPEG", quality=95), None),
    "16-bit png": (images.png_sixteen_bits(images.resized(CHINA, 48, 32)), None),
    "palette png with alpha": (images.pillow(images.resized(CHINA, 48, 32), "P", "PNG", transparency=0), None),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_image_is_refused_or_decoded_never_more(server, stub, case: str) -> None:
    data, refusal = HOSTILE[case]
    worker = _worker(server)
    before = rss_bytes(worker.pid)
    reply = rest(server, "image_u8", {"instances": [b64(data)]})
    request = predict_pb2.PredictRequest(inputs={"image": strings(data)})
    request.model_spec.name = "image_u8"
    if refusal is None:
        assert reply.status_code == 200, reply.text
        served = np.array(reply.json()["predictions"][0])
        seen_by_pillow = images.decoded_by_pillow(CLEAN if "bomb" in case else data)
        assert np.abs(served - seen_by_pillow.astype(int)).max() <= 1
        pixels = stub.Predict(request, timeout=60).outputs["pixels"].tensor_content
        np.testing.assert_array_equal(np.frombuffer(pixels, np.uint8).reshape(32, 48, 3), served)
    else:
        rest_refusal = (  # REST says what b64 is on an image input before the image checks
            refusal
            if data.startswith((b"\xff\xd8\xff", b"\x89PNG"))
            else "Invalid b64 value - not a JPEG or PNG image: b64 on image input image (-1,32,48,3)"
        )
        assert reply.status_code == 400 and rest_refusal in reply.json()["error"], reply.text
        error = grpc_error(stub, "image_u8", strings(data))
        assert error.code() == INVALID and refusal in error.details()
    assert rss_bytes(worker.pid) - before < 64 << 20  # nothing near a bomb's size was allocated
    assert worker.is_running() and _worker(server).pid == worker.pid  # never a crash


def test_images_go_through_async_jobs_too(server) -> None:
    encoded = [images.png(CHINA, 31, 17), images.jpeg(PHOTOS["flower"], 31, 17)] * 3
    body = {"model": "image_mean", "instances": [b64(data) for data in encoded]}
    reply = requests.post(f"{server.rest_url}/v1/jobs", json=body, timeout=30)
    assert reply.status_code == 202, reply.text
    status = wait_for_end(server.rest_url + reply.json()["status_url"], timeout_s=60)
    assert status["state"] == "SUCCESS", json.dumps(status)
    result = requests.get(server.rest_url + reply.json()["status_url"] + "/result", timeout=30).json()["outputs"][
        "mean"
    ]
    expected = [images.decoded(data).reshape(-1, 3).mean(axis=0) for data in encoded]
    np.testing.assert_allclose(result, expected, rtol=1e-5)


# --------------------------------------------------------------------------- raw b64 on an image input


def test_rest_b64_raw_reads_b64_as_raw_bytes_while_grpc_strings_stay_images(models_dir, launch) -> None:
    stack = launch("--model_name", "pixels", "--model_path", str(models_dir / "image_u8"), "--rest_b64", "raw")
    tensor = images.resized(CHINA, 48, 32)[None]
    reply = requests.post(
        f"{stack.rest_url}/v1/models/pixels:predict", json={"inputs": {"image": b64(tensor.tobytes())}}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    np.testing.assert_array_equal(reply.json()["outputs"], tensor)
    data = images.png(CHINA, 48, 32)
    served = ovmsclient.make_grpc_client(stack.grpc_address).predict({"image": data}, "pixels")
    np.testing.assert_array_equal(served[0], images.decoded(data))


# --------------------------------------------------------------------------- decoded size against the worker's budget


def test_images_decoding_beyond_the_workers_whole_budget_are_refused_not_decoded(models_dir, launch) -> None:
    """Three black 3000 x 3000 JPEGs are ~150 KB on the wire and 324 MB decoded as FP32: beyond a 64 MiB
    worker budget, they are refused (a holder alone is admitted only for tensors the api has bounded)."""
    stack = launch(
        "--model_name", "mean", "--model_path", str(models_dir / "image_mean"), "--worker_max_inflight_mb", "64"
    )  # fmt: skip
    black = images.jpeg(images.solid(0, 0, 0, 3000, 3000))
    client = ovmsclient.make_grpc_client(stack.grpc_address)
    with pytest.raises(ovmsclient.tfs_compat.base.errors.InvalidInputError) as refused:
        client.predict({"image": [black] * 3}, "mean")
    assert "more than this worker holds for all its requests" in str(refused.value)
    small = images.jpeg(images.solid(10, 20, 30, 64, 64))
    np.testing.assert_allclose(client.predict({"image": [small]}, "mean"), [[10, 20, 30]], atol=2)
