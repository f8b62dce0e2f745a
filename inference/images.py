"""Encoded images (JPEG, PNG) sent to a model's image input, checked from their headers, before decoding.

A BYTES tensor sent to a 4-D input whose layout is known (inference.layouts) is a batch of encoded images:
one image per element, shape (N,) — also (N,1), as some Triton clients send it, and () for one image, as
`tf.make_tensor_proto(bytes)` makes it. The checks here cost microseconds an image and run twice: on the
api, so that a bad request is refused before it is queued, and on the worker before it decodes (it
trusts nothing read from Redis). What they bound:

- each image's encoded size (MAX_IMAGE_BYTES) and its pixels as its header declares them: at most
  MAX_IMAGE_PIXELS, and for a model of fixed height and width at most PIXELS_PER_MODEL_PIXEL times its
  pixels (but never less than MIN_PIXEL_CAP): decompression bombs are refused before any allocation;
- the batch: N against the model's batch dimension and MAX_IMAGES, the decoded tensor within MAX_ELEMENTS;
- sizes: a fixed height and width is what every image is resized to; a dynamic one takes the images'
  own, so the images of one request must then agree on it (resizing them to the first one's would make
  an image's answer depend on its neighbour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from inference import dtypes
from inference.errors import InvalidArgument
from inference.image_headers import ImageHeader, ImageHeaderError, read_header
from inference.layouts import ImageGeometry
from inference.signature import DYNAMIC, MAX_ELEMENTS, TensorSpec, format_shape

MAX_IMAGES = 1 << 16  # in one tensor: reading their headers costs the api at most about a second
MAX_IMAGE_BYTES = 64 << 20  # one encoded image
MAX_IMAGE_PIXELS = 1 << 25  # 33.5 Mpx, e.g. an 8K UHD frame (7680x4320): 100 MB decoded
MIN_PIXEL_CAP = 1 << 24  # 16.7 Mpx: any phone photo (12 Mpx), whatever the model's size
PIXELS_PER_MODEL_PIXEL = 64
# Images decode to 0..255: every type holds that but these.
_UNFIT_PRECISIONS = ("I8", "BOOL")


@dataclass(frozen=True)
class ImageBatch:
    """A request's images for one input, checked: what the worker decodes them into."""

    name: str
    precision: str
    geometry: ImageGeometry
    images: np.ndarray  # 1-D object array of bytes
    headers: tuple[ImageHeader, ...]
    height: int  # every image's, once decoded (and resized)
    width: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.geometry.shape(len(self.images), self.height, self.width)

    @property
    def decoded_nbytes(self) -> int:
        """What decoding holds at most: the tensor, and one image decoded at full size with its resized copy."""
        largest = max(header.pixels for header in self.headers) * self.geometry.decoded_channels
        return math.prod(self.shape) * dtypes.by_name(self.precision).numpy.itemsize + 2 * largest


def image_batch(spec: TensorSpec, shape: tuple[int, ...], values: np.ndarray | None, any_batch: bool) -> ImageBatch:
    """The images of a BYTES tensor sent to input `spec`, checked; InvalidArgument naming what is wrong."""
    geometry = _geometry(spec)
    if len(shape) > 2 or shape[1:] not in ((), (1,)):
        raise InvalidArgument(
            "Invalid input shape - encoded images are sent as (N,), one image per element; "
            f"Actual: {format_shape(shape)}"
        )
    count = shape[0] if shape else 1
    if values is None or values.size != count:
        sent = 0 if values is None else values.size
        raise InvalidArgument(f"Invalid content size of tensor proto - Expected: {count} images; Actual: {sent}")
    if count == 0:
        raise InvalidArgument(f"Invalid input batch size - no image sent to input {spec.name}")
    if count > MAX_IMAGES:
        raise InvalidArgument(f"Invalid input batch size - {count} images; at most {MAX_IMAGES} are taken at once")
    if not any_batch and spec.shape[0] not in (DYNAMIC, count):
        raise InvalidArgument(f"Invalid input batch size - Expected: {spec.shape[0]}; Actual: {count}")
    images = values.reshape(count)
    headers = tuple(_header(index, image, _pixel_cap(geometry)) for index, image in enumerate(images))
    height = geometry.height if geometry.height != DYNAMIC else headers[0].height
    width = geometry.width if geometry.width != DYNAMIC else headers[0].width
    for index, header in enumerate(headers):
        if (geometry.height == DYNAMIC and header.height != height) or (
            geometry.width == DYNAMIC and header.width != width
        ):
            raise InvalidArgument(
                f"Invalid image size - the images of one request must have one size for input {spec.name}, whose "
                f"height or width is dynamic: image 0 is {headers[0].size_text}, image {index} is {header.size_text}"
            )
    batch = ImageBatch(spec.name, spec.precision, geometry, images, headers, height, width)
    if math.prod(batch.shape) > MAX_ELEMENTS:
        raise InvalidArgument(
            f"Invalid input shape - {count} images of {width}x{height} make {format_shape(batch.shape)}, "
            f"beyond {MAX_ELEMENTS} elements"
        )
    return batch


def takes_images(spec: TensorSpec) -> bool:
    """Whether encoded images can be sent to input `spec`."""
    try:
        _geometry(spec)
    except InvalidArgument:
        return False
    return True


def _geometry(spec: TensorSpec) -> ImageGeometry:
    refused = f"Invalid input precision - Expected: {spec.precision}; Actual: BYTES"
    if not spec.layout:
        reason = (
            "its layout is unknown: set the model's layout (NHWC or NCHW)"
            if len(spec.shape) == 4
            else f"it is not 4-D but {format_shape(spec.shape)}"
        )
        raise InvalidArgument(
            f"{refused} - encoded images (JPEG, PNG) go to a 4-D input of 1 or 3 channels in layout NHWC or NCHW; "
            f"input {spec.name} takes none: {reason}"
        )
    geometry = ImageGeometry.of(spec.layout, spec.shape)
    if not geometry.takes_images:
        raise InvalidArgument(
            f"{refused} - encoded images decode to 1 or 3 channels; input {spec.name} "
            f"{format_shape(spec.shape)} ({spec.layout}) has {geometry.channels}"
        )
    if spec.precision in _UNFIT_PRECISIONS:
        raise InvalidArgument(
            f"{refused} - encoded images decode to values 0..255, which input {spec.name} of type {spec.precision} "
            "cannot hold"
        )
    return geometry


def _pixel_cap(geometry: ImageGeometry) -> int:
    if DYNAMIC in (geometry.height, geometry.width):
        return MAX_IMAGE_PIXELS
    return min(MAX_IMAGE_PIXELS, max(MIN_PIXEL_CAP, PIXELS_PER_MODEL_PIXEL * geometry.height * geometry.width))


def _header(index: int, image: object, pixel_cap: int) -> ImageHeader:
    if not isinstance(image, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"Invalid image - image {index} is not bytes but {type(image).__name__}")
    if not len(image):
        raise InvalidArgument(f"Invalid image - image {index} is empty")
    if len(image) > MAX_IMAGE_BYTES:
        raise InvalidArgument(f"Invalid image - image {index} takes {len(image)} bytes; the limit is {MAX_IMAGE_BYTES}")
    try:
        header = read_header(image)
    except ImageHeaderError as error:
        raise InvalidArgument(f"Invalid image - image {index}: {error}") from None
    if not header.pixels:
        raise InvalidArgument(f"Invalid image - image {index} is a {header.format} of {header.size_text} pixels")
    if header.pixels > pixel_cap:
        raise InvalidArgument(
            f"Invalid image - image {index} is a {header.format} of {header.size_text} pixels; at most {pixel_cap} "
            "pixels are decoded for this input"
        )
    return header
