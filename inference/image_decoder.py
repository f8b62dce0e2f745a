"""Decoding a request's encoded images into its image input's tensor, on the worker, with OpenCV — the
library OVMS decodes with, so that the same image gives the same tensor:

- colour order BGR, as OVMS; one-channel inputs get gray (OpenCV's luma), three-channel ones colour —
  gray images are repeated into three channels, alpha is dropped, 16-bit PNGs are scaled to 8 bits,
  CMYK and palette images are converted; the EXIF orientation is ignored (the pixels as stored, as
  OVMS reads them);
- values 0..255 in the input's element type (U8 as decoded; FP32 and the other types the same numbers);
- resized (bilinear, cv2.INTER_LINEAR, as OVMS) to a fixed height and width when they differ;
- laid out as the input's layout, NHWC or NCHW.

Only the worker imports this module: the api reads image headers only (inference.images).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from inference.images import MAX_IMAGE_PIXELS, ImageBatch, image_batch

# OpenCV refuses beyond this many pixels whatever the bytes (its own limit, 2^30 = 3 GB decoded, is read
# once, when it loads): a second bound, should an image's header ever be read otherwise than its decoder reads it.
os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(MAX_IMAGE_PIXELS)

import cv2
import numpy as np

from inference import dtypes
from inference.bytes_tensors import is_bytes_array
from inference.errors import DeadlineExceeded, InvalidArgument
from inference.layouts import NHWC
from inference.request import Tensors
from inference.signature import ModelSignature

_COLOUR = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_GRAY = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION


def decode_images(
    signature: ModelSignature, inputs: Tensors, deadline: float, reserve: Callable[[int], None]
) -> Tensors:
    """`inputs` with each BYTES input decoded for `signature`; `reserve(nbytes)` is called with what the
    decoding will hold, before it starts (it raises to refuse). InvalidArgument for an image that is
    refused or cannot be decoded, DeadlineExceeded once `deadline` (time.time()) passed."""
    batches = {
        name: image_batch(signature.inputs[name], array.shape, array, signature.auto_batch)
        for name, array in inputs.items()
        if is_bytes_array(array) and name in signature.inputs
    }
    if not batches:
        return inputs
    reserve(sum(batch.decoded_nbytes for batch in batches.values()))
    return {**inputs, **{name: decode_batch(batch, deadline) for name, batch in batches.items()}}


def decode_batch(batch: ImageBatch, deadline: float) -> np.ndarray:
    """The batch's images as one tensor of its input's type, size and layout."""
    precision = dtypes.by_name(batch.precision)
    tensor = np.empty(batch.shape, dtype=precision.numpy)
    flags = _GRAY if batch.geometry.decoded_channels == 1 else _COLOUR
    for index, (image, header) in enumerate(zip(batch.images, batch.headers, strict=True)):
        if time.time() > deadline:
            raise DeadlineExceeded(f"Deadline exceeded while decoding image {index} of {len(batch.images)}")
        try:
            pixels = cv2.imdecode(np.frombuffer(image, dtype=np.uint8), flags)
        except cv2.error:
            pixels = None
        if pixels is None or pixels.shape[:2] != (header.height, header.width):
            raise InvalidArgument(
                f"Invalid image - image {index}, a {header.format} of {header.size_text}, cannot be decoded "
                "(truncated or corrupt)"
            )
        if pixels.shape[:2] != (batch.height, batch.width):
            pixels = cv2.resize(pixels, (batch.width, batch.height), interpolation=cv2.INTER_LINEAR)
        pixels = pixels.reshape(batch.height, batch.width, -1)  # gray images decode without a channel axis
        if precision.name == "BF16":
            pixels = dtypes.float_to_bf16_bits(pixels)
        tensor[index] = pixels if batch.geometry.layout == NHWC else pixels.transpose(2, 0, 1)
    return tensor
