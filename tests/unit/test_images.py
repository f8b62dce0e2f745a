"""Image inputs without a server: headers read from the first bytes, the BYTES serialization, layouts (from
the settings, the model file, the shape), the checks before decoding, and the decoder itself."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from inference import bytes_tensors
from inference.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from inference.image_decoder import decode_batch, decode_images
from inference.image_headers import MAX_JPEG_SCANS, MAX_JPEG_SEGMENTS, ImageHeader, ImageHeaderError, read_header
from inference.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGES, MIN_PIXEL_CAP, image_batch
from inference.layouts import NCHW, NHWC, image_layout
from inference.model import CompiledVersion
from inference.model_config import ModelConfig
from inference.signature import DYNAMIC, MAX_ELEMENTS, ModelSignature, TensorSpec
from inference.validation import RequestTensor, validate_inputs
from tests.support import images

CHINA = images.photographs()["china"]
RESNET = TensorSpec("data", "FP32", (1, 3, 224, 224), layout=NCHW)
U8_NHWC = TensorSpec("image", "U8", (DYNAMIC, 32, 48, 3), layout=NHWC)
ANY_SIZE = TensorSpec("image", "FP32", (DYNAMIC, 3, DYNAMIC, DYNAMIC), layout=NCHW)


def batch_of(spec: TensorSpec, *encoded: bytes, shape: tuple[int, ...] | None = None, any_batch: bool = False):
    return image_batch(spec, shape or (len(encoded),), bytes_tensors.bytes_array(encoded), any_batch)


def refusal(spec: TensorSpec, *encoded: object, shape: tuple[int, ...] | None = None) -> str:
    with pytest.raises(InvalidArgument) as error:
        image_batch(spec, shape or (len(encoded),), bytes_tensors.bytes_array(encoded), False)
    return error.value.message


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (images.jpeg(CHINA), ImageHeader("JPEG", 640, 427)),
        (images.jpeg(CHINA, 48, 32), ImageHeader("JPEG", 48, 32)),
        (images.pillow(CHINA, "RGB", "JPEG", progressive=True), ImageHeader("JPEG", 640, 427)),
        (images.pillow(CHINA, "CMYK", "JPEG"), ImageHeader("JPEG", 640, 427)),
        (images.pillow(CHINA, "RGB", "JPEG", exif=b"Exif\0\0" + bytes(60000)), ImageHeader("JPEG", 640, 427)),
        (images.png(CHINA, 7, 5), ImageHeader("PNG", 7, 5)),
        (images.png_claiming(100_000, 100_000), ImageHeader("PNG", 100_000, 100_000)),
    ],
)
def test_the_header_gives_format_and_size(data: bytes, expected: ImageHeader) -> None:
    assert read_header(data) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "neither JPEG nor PNG (starts with nothing)"),
        (b"GIF89a...", "neither JPEG nor PNG (starts with 474946383961"),
        (images.jpeg(CHINA)[:20], "JPEG cut short before its frame header (SOF)"),
        (images.png(CHINA)[:20], "PNG cut short before the end of its header (IHDR)"),
        (b"\x89PNG\r\n\x1a\n" + images.png_chunk(b"tEXt", b"a\0b" * 5), "PNG whose first chunk is not a header"),
        (b"\xff\xd8\xff\xda\x00\x08" + bytes(10), "JPEG without a frame header (SOF) before its image data"),
        (b"\xff\xd8\xff\xe0\x00\x00" + bytes(10), "JPEG segment of impossible length 0"),
        (b"\xff\xd8\xff\xe0\x00\x04ab\x12\x34" + bytes(10), "bytes where a segment marker should be"),
        (b"\xff\xd8" + b"\xff\xfe\x00\x02" * 100_000, f"more than {MAX_JPEG_SEGMENTS} segments"),
        (images.jpeg_hiding_its_frame(images.jpeg(CHINA, 48, 32), 20_000, 20_000), "stuffed zero (FF 00) where"),
        (images.jpeg_of_many_scans(64, 64, MAX_JPEG_SCANS + 1), f"JPEG of 101 scans; at most {MAX_JPEG_SCANS}"),
    ],
)
def test_a_header_that_cannot_be_read_says_why(data: bytes, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ImageHeaderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_header(data)
    assert time.perf_counter() - started < 0.05  # a header is read in microseconds, whatever follows it


# --------------------------------------------------------------------------- BYTES serialization


def test_bytes_elements_round_trip_with_empty_ones_and_trailing_zeros() -> None:
    elements = [b"\xff\xd8\xff", b"", b"ab\0\0", bytes(1000)]
    data = bytes_tensors.serialize(bytes_tensors.bytes_array(elements))
    assert data[:7] == b"\x03\x00\x00\x00\xff\xd8\xff"  # Triton's: 4-byte little-endian length, then the bytes
    assert list(bytes_tensors.deserialize(memoryview(data), 4)) == elements
    assert bytes_tensors.payload_nbytes(bytes_tensors.bytes_array(elements)) == len(data) == 4 * 4 + 1007


@pytest.mark.parametrize(
    ("data", "count", "message"),
    [
        (b"\x03\x00\x00\x00abc", 2**40, "cannot fit"),  # a count no payload holds: refused before allocating
        (b"\xff\xff\xff\xffabc", 1, "claims 4294967295 bytes; 3 remain"),
        (b"\x03\x00\x00\x00abc\x01\x00", 2, "end before their last length"),
        (b"\x03\x00\x00\x00abcd", 1, "1 bytes follow the last BYTES element"),
        (b"\x03\x00\x00\x00abc", -1, "cannot fit"),
    ],
)
def test_bytes_elements_that_do_not_fill_their_payload_exactly_are_refused(data: bytes, count: int, message: str):
    with pytest.raises(ValueError, match=message):
        bytes_tensors.deserialize(data, count)


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    ("configured", "from_model", "exported", "expected"),
    [
        (None, "", (1, 3, 224, 224), NCHW),
        (None, "", (1, 224, 224, 3), NHWC),
        (None, "", (-1, 1, 28, 28), NCHW),
        (None, "", (-1, 28, 28, 1), NHWC),
        (None, "", (1, 3, 3, 3), NCHW),  # both fit: position 1 first
        (None, NHWC, (1, 3, 8, 3), NHWC),  # the model file's layout before the guess
        (NHWC, NCHW, (1, 3, 8, 3), NHWC),  # the setting before all
        (None, "N", (1, 4, 8, 8), ""),  # neither 1 nor 3 channels where they would be
        (None, "", (-1, -1, -1, -1), ""),
        (NCHW, "", (-1, 64), ""),  # not 4-D: never images
    ],
)
def test_the_layout_comes_from_the_setting_the_model_or_the_shape(configured, from_model, exported, expected) -> None:
    assert image_layout(configured, from_model, exported) == expected


def _save_model(directory: Path, shape: list[int], name: str = "image", layout: str | None = None) -> Path:
    parameter = ops.parameter(ov.PartialShape(shape), ov.Type.f32, name=name)
    parameter.output(0).get_tensor().set_names({name})
    if layout:
        parameter.set_layout(ov.Layout(layout))
    result = ops.multiply(parameter, ops.constant(np.float32(1)))
    result.output(0).get_tensor().set_names({"out"})
    version = directory / "1"
    version.mkdir(parents=True)
    ov.save_model(ov.Model([ops.result(result)], [parameter], "m"), str(version / "model.xml"))
    return version


@pytest.mark.parametrize(
    ("shape", "model_layout", "settings", "expected"),
    [
        ([1, 3, 8, 8], None, {}, NCHW),
        ([1, 8, 8, 3], None, {}, NHWC),
        ([1, 3, 8, 3], "NHWC", {}, NHWC),
        ([1, 3, 8, 3], None, {"layout": {None: NHWC}}, NHWC),
        ([1, 3, 8, 3], None, {"layout": {"image": NHWC, "other": NCHW}}, NHWC),
        ([1, 3, 8, 8], None, {"shape": {None: "auto"}}, NCHW),  # guessed from the shape it was exported with
        ([1, 5, 8, 8], None, {}, ""),
        ([1, 64], None, {"layout": {None: NCHW}}, ""),
    ],
)
def test_a_loaded_model_publishes_its_image_layout(tmp_path, shape, model_layout, settings, expected) -> None:
    version_dir = _save_model(tmp_path, shape, layout=model_layout)
    compiled = CompiledVersion(ov.Core(), ModelConfig("m", str(tmp_path), **settings), 1, version_dir)
    try:
        assert compiled.signature.inputs["image"].layout == expected
        assert ModelSignature.from_dict(compiled.signature.to_dict()) == compiled.signature
    finally:
        compiled.close()


def test_rest_b64_raw_travels_in_the_signature(tmp_path) -> None:
    version_dir = _save_model(tmp_path, [1, 3, 8, 8])
    compiled = CompiledVersion(ov.Core(), ModelConfig("m", str(tmp_path), rest_b64="raw"), 1, version_dir)
    try:
        assert compiled.signature.raw_b64
        assert ModelSignature.from_dict(compiled.signature.to_dict()).raw_b64
    finally:
        compiled.close()


# --------------------------------------------------------------------------- checks before decoding


@pytest.mark.parametrize("shape", [(2,), (2, 1)])
def test_n_images_are_n_elements_of_shape_n_or_n_by_1(shape: tuple[int, ...]) -> None:
    batch = batch_of(U8_NHWC, images.jpeg(CHINA), images.png(CHINA, 10, 10), shape=shape)
    assert (batch.shape, [h.format for h in batch.headers]) == ((2, 32, 48, 3), ["JPEG", "PNG"])


def test_one_image_may_come_as_a_scalar() -> None:
    assert batch_of(RESNET, images.jpeg(CHINA), shape=()).shape == (1, 3, 224, 224)


def test_a_dynamic_size_is_the_images_own_and_must_be_one_size() -> None:
    assert batch_of(ANY_SIZE, images.jpeg(CHINA), images.png(CHINA)).shape == (2, 3, 427, 640)
    assert refusal(ANY_SIZE, images.jpeg(CHINA), images.jpeg(CHINA, 100, 50)) == (
        "Invalid image size - the images of one request must have one size for input image, whose height or "
        "width is dynamic: image 0 is 640x427, image 1 is 100x50"
    )


@pytest.mark.parametrize(
    ("spec", "encoded", "shape", "message"),
    [
        (RESNET, 2, None, "Invalid input batch size - Expected: 1; Actual: 2"),
        (U8_NHWC, 0, None, "Invalid input batch size - no image sent to input image"),
        (U8_NHWC, 2, (2, 2), "Invalid input shape - encoded images are sent as (N,), one image per element; "),
        (U8_NHWC, 2, (3,), "Invalid content size of tensor proto - Expected: 3 images; Actual: 2"),
        (
            TensorSpec("x", "FP32", (DYNAMIC, 64)),
            1,
            None,
            "Invalid input precision - Expected: FP32; Actual: BYTES - encoded images (JPEG, PNG) go to a 4-D input "
            "of 1 or 3 channels in layout NHWC or NCHW; input x takes none: it is not 4-D but (-1,64)",
        ),
        (
            TensorSpec("x", "FP32", (1, 4, 8, 8)),
            1,
            None,
            "input x takes none: its layout is unknown: set the model's layout (NHWC or NCHW)",
        ),
        (
            TensorSpec("x", "FP32", (1, 4, 8, 8), layout=NCHW),
            1,
            None,
            "encoded images decode to 1 or 3 channels; input x (1,4,8,8) (NCHW) has 4",
        ),
        (
            TensorSpec("x", "I8", (1, 8, 8, 3), layout=NHWC),
            1,
            None,
            "encoded images decode to values 0..255, which input x of type I8 cannot hold",
        ),
    ],
)
def test_a_batch_that_does_not_fit_the_input_is_refused_naming_why(spec, encoded, shape, message) -> None:
    assert message in refusal(spec, *[images.jpeg(CHINA, 8, 8)] * encoded, shape=shape)


def test_the_batch_size_is_not_checked_for_a_job_chunk() -> None:
    assert batch_of(RESNET, images.jpeg(CHINA), images.jpeg(CHINA), any_batch=True).shape == (2, 3, 224, 224)


@pytest.mark.parametrize(
    ("element", "message"),
    [
        (b"", "Invalid image - image 1 is empty"),
        ("text", "Invalid image - image 1 is not bytes but str"),
        (b"not an image", "Invalid image - image 1: neither JPEG nor PNG (starts with 6e6f7420616e2069)"),
        (images.png_claiming(100_000, 100_000), "image 1 is a PNG of 100000x100000 pixels; at most 33554432 pixels"),
        (images.jpeg_claiming(images.jpeg(CHINA), 65_000, 65_000), "image 1 is a JPEG of 65000x65000 pixels"),
        (images.jpeg_claiming(images.jpeg(CHINA), 640, 0), "Invalid image - image 1 is a JPEG of 640x0 pixels"),
        (images.png_claiming(0, 10), "Invalid image - image 1 is a PNG of 0x10 pixels"),
    ],
)
def test_an_image_is_refused_from_its_header_naming_it(element: object, message: str) -> None:
    assert message in refusal(ANY_SIZE, images.jpeg(CHINA), element)


def test_pixels_are_capped_more_tightly_for_a_model_of_fixed_size() -> None:
    """A 224x224 model decodes at most 16.7 Mpx an image (a phone photo), one of any size at most 33.5 Mpx."""
    assert (MIN_PIXEL_CAP, MAX_IMAGE_PIXELS) == (1 << 24, 1 << 25)
    bomb = images.png_claiming(5000, 5000)  # 25 Mpx
    assert "at most 16777216 pixels are decoded for this input" in refusal(RESNET, bomb)
    assert batch_of(ANY_SIZE, bomb).shape == (1, 3, 5000, 5000)


def test_an_encoded_image_is_bounded_in_bytes() -> None:
    huge = images.png(CHINA, 8, 8) + bytes(MAX_IMAGE_BYTES)
    assert f"image 0 takes {len(huge)} bytes; the limit is {MAX_IMAGE_BYTES}" in refusal(ANY_SIZE, huge)


def test_the_images_of_one_tensor_are_bounded_in_number() -> None:
    tiny = images.png(CHINA, 1, 1)
    started = time.perf_counter()
    assert len(batch_of(ANY_SIZE, *[tiny] * MAX_IMAGES).headers) == MAX_IMAGES
    assert time.perf_counter() - started < 5  # their headers, read on the api
    message = f"Invalid input batch size - {MAX_IMAGES + 1} images; at most {MAX_IMAGES} are taken at once"
    assert refusal(ANY_SIZE, *[tiny] * (MAX_IMAGES + 1)) == message


def test_the_decoded_tensor_is_bounded_in_elements() -> None:
    """10,000 tiny images resized to 224x224 would make 1.5 G elements: refused before any decoding."""
    tiny = images.png(CHINA, 1, 1)
    spec = TensorSpec("data", "FP32", (DYNAMIC, 3, 224, 224), layout=NCHW)
    assert f"10000 images of 224x224 make (10000,3,224,224), beyond {MAX_ELEMENTS} elements" in refusal(
        spec, *[tiny] * 10_000
    )


def test_validation_returns_the_encoded_images_for_the_worker() -> None:
    signature = ModelSignature({"data": RESNET})
    tensor = RequestTensor("BYTES", (1,), values=bytes_tensors.bytes_array([images.jpeg(CHINA)]))
    array = validate_inputs(signature, {"data": tensor})["data"]
    assert array.dtype == object and array.shape == (1,)
    negative = RequestTensor("BYTES", (-1,), values=bytes_tensors.bytes_array([images.jpeg(CHINA)]))
    with pytest.raises(InvalidArgument, match="negative dimension"):
        validate_inputs(signature, {"data": negative})


# --------------------------------------------------------------------------- decoding


def test_decoding_gives_bgr_pixels_in_the_inputs_layout_and_type() -> None:
    data = images.png(images.solid(blue=10, green=20, red=250))
    nhwc = decode_batch(batch_of(U8_NHWC, data), time.time() + 10)
    assert nhwc.dtype == np.uint8 and nhwc.shape == (1, 32, 48, 3)
    assert (nhwc[0, 0, 0].tolist(), np.unique(nhwc.reshape(-1, 3), axis=0).tolist()) == ([10, 20, 250], [[10, 20, 250]])
    nchw = decode_batch(batch_of(ANY_SIZE, data), time.time() + 10)
    assert nchw.dtype == np.float32 and nchw.shape == (1, 3, 32, 48)
    assert nchw[0, :, 5, 7].tolist() == [10.0, 20.0, 250.0]  # 0..255 floats, as OVMS


def test_decoding_equals_a_client_decoding_the_same_bytes_and_resizing_as_opencv() -> None:
    for data in (images.jpeg(CHINA), images.png(CHINA, 100, 60), images.jpeg(CHINA, 48, 32)):
        expected = images.resized(images.decoded(data), 48, 32)
        np.testing.assert_array_equal(decode_batch(batch_of(U8_NHWC, data), time.time() + 10)[0], expected)
    data = images.jpeg(CHINA, 224, 224)
    np.testing.assert_array_equal(
        decode_batch(batch_of(RESNET, data), time.time() + 10), images.nchw(images.decoded(data))
    )


def test_gray_and_colour_follow_the_inputs_channels() -> None:
    gray_input = TensorSpec("image", "FP32", (DYNAMIC, 1, DYNAMIC, DYNAMIC), layout=NCHW)
    colour = images.jpeg(CHINA)
    gray = images.jpeg(images.decoded(colour, gray=True))
    np.testing.assert_array_equal(
        decode_batch(batch_of(gray_input, colour), time.time() + 10)[0, 0], images.decoded(colour, gray=True)
    )
    from_gray = decode_batch(batch_of(ANY_SIZE, gray), time.time() + 10)[0]
    np.testing.assert_array_equal(from_gray[0], from_gray[2])  # a gray image is repeated into the 3 channels
    np.testing.assert_array_equal(from_gray[0], images.decoded(gray, gray=True))


@pytest.mark.parametrize(
    ("data", "tolerance"),
    [
        (images.pillow(CHINA, "CMYK", "JPEG", quality=95), 1),  # the CMYK -> BGR conversions round differently
        (images.png_sixteen_bits(CHINA), 0),  # scaled to 8 bits
        (images.pillow(CHINA, "P", "PNG", transparency=0), 0),  # palette looked up, alpha dropped
        (images.pillow(CHINA, "RGBA", "PNG"), 0),
        (images.pillow(CHINA, "RGB", "JPEG", quality=95, progressive=True), 1),
    ],
    ids=["cmyk-jpeg", "16-bit-png", "palette-png-with-alpha", "rgba-png", "progressive-jpeg"],
)
def test_unusual_but_legitimate_images_decode_as_another_decoder_sees_them(data: bytes, tolerance: int) -> None:
    pixels = decode_batch(batch_of(ANY_SIZE, data), time.time() + 10)[0].transpose(1, 2, 0)
    np.testing.assert_allclose(pixels, images.decoded_by_pillow(data), atol=tolerance)


def test_precisions_other_than_u8_and_fp32_get_the_same_numbers() -> None:
    data = images.png(CHINA, 48, 32)
    expected = images.decoded(data).transpose(2, 0, 1)
    for precision, dtype in (("FP16", np.float16), ("I32", np.int32), ("U16", np.uint16)):
        spec = TensorSpec("image", precision, (DYNAMIC, 3, DYNAMIC, DYNAMIC), layout=NCHW)
        tensor = decode_batch(batch_of(spec, data), time.time() + 10)
        assert tensor.dtype == dtype
        np.testing.assert_array_equal(tensor[0], expected)
    bf16 = TensorSpec("image", "BF16", (DYNAMIC, 3, DYNAMIC, DYNAMIC), layout=NCHW)
    bits = decode_batch(batch_of(bf16, data), time.time() + 10)[0]
    np.testing.assert_array_equal((bits.astype(np.uint32) << 16).view(np.float32), expected)  # 0..255 exact in bf16


@pytest.mark.parametrize(
    "data",
    [
        images.jpeg(CHINA)[: len(images.jpeg(CHINA)) // 2],
        images.jpeg(CHINA)[:-2],
        images.png(CHINA)[:-1],
        images.png_with_chunk(images.png(CHINA), b"\x05\xf5\xe1\x00zTXt" + bytes(50)),  # claims 100 MB
    ],
    ids=["half-jpeg", "jpeg-without-end", "png-without-end", "png-chunk-claiming-100-MB"],
)
def test_an_image_that_cannot_be_decoded_is_invalid_argument(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match=r"^Invalid image - image 0, a (JPEG|PNG) of \d+x\d+, cannot be decoded"):
        decode_batch(batch_of(ANY_SIZE, data), time.time() + 10)


@pytest.mark.parametrize(("width", "height"), [(320, 200), (1280, 854)])
def test_a_jpeg_lying_about_its_size_decodes_at_the_size_it_claims(width: int, height: int) -> None:
    """Its data holds 640x427: what is decoded is bounded by the header that was checked, never beyond."""
    data = images.jpeg_claiming(images.jpeg(CHINA), width, height)
    assert decode_batch(batch_of(ANY_SIZE, data), time.time() + 10).shape == (1, 3, height, width)


def test_a_progressive_jpeg_of_as_many_scans_as_allowed_decodes() -> None:
    data = images.jpeg_of_many_scans(64, 64, MAX_JPEG_SCANS)
    assert read_header(data) == ImageHeader("JPEG", 64, 64)
    assert decode_batch(batch_of(ANY_SIZE, data), time.time() + 10).shape == (1, 3, 64, 64)


def test_opencv_in_a_process_decoding_images_refuses_more_pixels_than_any_header_may_claim() -> None:
    """A second bound, should a header ever be read otherwise than OpenCV reads it: this test process loaded
    OpenCV before the decoder could set its limit, so a fresh one is asked."""
    side = math.isqrt(MAX_IMAGE_PIXELS) + 1
    probe = (
        "import sys, numpy as np, inference.image_decoder as d;"
        "print(d.cv2.imdecode(np.frombuffer(sys.stdin.buffer.read(), np.uint8), d.cv2.IMREAD_COLOR) is None)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        input=images.jpeg_claiming(images.jpeg(CHINA), side, side),
        capture_output=True,
        cwd=Path(__file__).parents[2],
        timeout=60,
    )
    assert b"pixels <= CV_IO_MAX_IMAGE_PIXELS" in done.stderr, done.stderr[-500:]


def test_decoding_stops_at_the_deadline() -> None:
    batch = batch_of(ANY_SIZE, *[images.jpeg(CHINA)] * 3)
    with pytest.raises(DeadlineExceeded, match="while decoding image 0 of 3"):
        decode_batch(batch, time.time() - 1)


def test_decode_images_reserves_what_decoding_holds_before_it_decodes() -> None:
    signature = ModelSignature({"data": RESNET, "scale": TensorSpec("scale", "FP32", (1,))})
    encoded = bytes_tensors.bytes_array([images.jpeg(CHINA)])
    inputs = {"data": encoded, "scale": np.ones(1, np.float32)}
    reserved: list[int] = []
    decoded = decode_images(signature, inputs, time.time() + 10, reserved.append)
    assert decoded["data"].shape == (1, 3, 224, 224) and decoded["scale"] is inputs["scale"]
    assert reserved == [1 * 3 * 224 * 224 * 4 + 2 * 640 * 427 * 3]  # the tensor, one image at full size twice

    def refuse(nbytes: int) -> None:
        raise ResourceExhausted("no room")

    with pytest.raises(ResourceExhausted):
        decode_images(signature, inputs, time.time() + 10, refuse)
