"""TensorFlow Serving REST JSON (row and columnar, named and unnamed, b64) <-> internal tensors.

`{"b64": ...}` is read as OVMS reads it on an input that takes images (4-D, layout NHWC or NCHW: see
inference.images.takes_images): one encoded image (JPEG, PNG) per value, N values making a BYTES tensor
of shape (N,). On every other input — and on image inputs of a model whose `rest_b64` setting is "raw" —
it is the raw little-endian bytes of the input's element type, as before images were served.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

from inference import dtypes
from inference.bytes_tensors import BYTES, bytes_array
from inference.errors import InvalidArgument
from inference.image_headers import JPEG_SIGNATURE, PNG_SIGNATURE
from inference.images import takes_images
from inference.signature import DYNAMIC, ModelSignature, TensorSpec, format_shape
from inference.validation import RequestTensor

ROW, COLUMN = "row", "column"
_NO_FORMAT = "Invalid JSON structure. Could not detect row or column format"


def parse_predict_body(body: Any, signature: ModelSignature) -> tuple[dict[str, RequestTensor], str]:
    """Inputs of a predict body, and whether it used the row ("instances") or column ("inputs") format."""
    if isinstance(body, dict) and not isinstance(body.get("signature_name", ""), str):
        # TF Serving's words (json_tensor.cc); the name itself is not checked: one signature is served
        shown = json.dumps(body["signature_name"], separators=(",", ":"))
        raise InvalidArgument(
            f"JSON Value: {shown} not formatted correctly. 'signature_name' key must be a string value."
        )
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise InvalidArgument(_NO_FORMAT)
    if "instances" in body:
        return _parse_rows(body["instances"], signature), ROW
    return _parse_columns(body["inputs"], signature), COLUMN


def _only_input(signature: ModelSignature) -> TensorSpec:
    if len(signature.inputs) != 1:
        raise InvalidArgument(
            f"Invalid JSON structure. Unnamed inputs need a model with one input; this one has {len(signature.inputs)}"
        )
    return next(iter(signature.inputs.values()))


def _parse_rows(instances: Any, signature: ModelSignature) -> dict[str, RequestTensor]:
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument("Invalid JSON structure. 'instances' must be a non-empty list")
    if all(isinstance(row, dict) and not _is_b64(row) for row in instances):
        names = instances[0].keys()
        if any(row.keys() != names for row in instances):
            raise InvalidArgument("Invalid JSON structure. Every instance must name the same inputs")
        return {
            name: _tensor([row[name] for row in instances], signature, _spec(signature, name), per_instance=True)
            for name in names
        }
    spec = _only_input(signature)
    return {spec.name: _tensor(instances, signature, spec, per_instance=True)}


def _parse_columns(inputs: Any, signature: ModelSignature) -> dict[str, RequestTensor]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return {name: _tensor(value, signature, _spec(signature, name), False) for name, value in inputs.items()}
    spec = _only_input(signature)
    return {spec.name: _tensor(inputs, signature, spec, per_instance=False)}


def _spec(signature: ModelSignature, name: str) -> TensorSpec | None:
    return signature.inputs.get(name)  # unknown names are reported by validation, in the seed's order


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _tensor(value: Any, signature: ModelSignature, spec: TensorSpec | None, per_instance: bool) -> RequestTensor:
    """Numbers become an array of the model's type; {"b64": ...} an encoded image on an image input, else
    raw bytes of that type."""
    if spec is not None and not signature.raw_b64 and takes_images(spec):
        images = _b64_images(value, spec)
        if images is not None:
            return RequestTensor(BYTES, (len(images),), values=bytes_array(images))
    if per_instance and isinstance(value, list) and value and all(_is_b64(v) for v in value):
        rows = [_b64_array(v, spec, per_instance=True) for v in value]
        if any(row.shape != rows[0].shape for row in rows):
            raise InvalidArgument("Invalid JSON structure. b64 instances differ in size")
        array = np.stack(rows)
        return RequestTensor(None, array.shape, values=array)
    if _is_b64(value):
        array = _b64_array(value, spec, per_instance=False)
        return RequestTensor(None, array.shape, values=array)
    try:
        array = np.array(value)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{_NO_FORMAT}: inconsistent array dimensions") from None
    if array.dtype == object:
        raise InvalidArgument(f"{_NO_FORMAT}: inconsistent array dimensions or mixed value types")
    return RequestTensor(None, array.shape, values=array)


def _b64_images(value: Any, spec: TensorSpec) -> list[bytes] | None:
    """The images of one {"b64": ...} or a non-empty list of them; None if `value` is neither."""
    if _is_b64(value):
        values = [value]
    elif isinstance(value, list) and value and all(_is_b64(v) for v in value):
        values = value
    else:
        return None
    images = [_b64_decode(v) for v in values]
    if not all(image.startswith((JPEG_SIGNATURE, PNG_SIGNATURE)) for image in images):
        raise InvalidArgument(
            f"Invalid b64 value - not a JPEG or PNG image: b64 on image input {spec.name} {format_shape(spec.shape)} "
            f'is an encoded image (the model\'s rest_b64 setting "raw" reads it as the raw bytes of its '
            f"{spec.precision} values)"
        )
    return images


def _b64_decode(value: dict[str, Any]) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InvalidArgument("Invalid b64 value: not base64") from None


def _b64_array(value: dict[str, Any], spec: TensorSpec | None, per_instance: bool) -> np.ndarray:
    """Decoded bytes as the model's element type, shaped like the signature where it is fully known."""
    if spec is None:
        raise InvalidArgument("b64 values need an input the model has")
    raw = _b64_decode(value)
    dtype = dtypes.by_name(spec.precision).numpy
    if len(raw) % dtype.itemsize:
        _refuse_an_image(raw, spec)
        raise InvalidArgument(f"Invalid b64 value: {len(raw)} bytes is not a whole number of {spec.precision} values")
    array = np.frombuffer(raw, dtype=dtype)
    shape = spec.shape[1:] if per_instance else spec.shape
    if shape and DYNAMIC not in shape and int(np.prod(shape)) == array.size:
        return array.reshape(shape)
    if not per_instance and len(spec.shape) > 1 and DYNAMIC not in spec.shape[1:]:
        inner = int(np.prod(spec.shape[1:]))
        if inner and array.size % inner == 0:
            return array.reshape((array.size // inner, *spec.shape[1:]))
    if DYNAMIC not in spec.shape[1:]:  # validation would refuse its shape: say why if it is an image
        _refuse_an_image(raw, spec)
    return array


def _refuse_an_image(raw: bytes, spec: TensorSpec) -> None:
    """Raw bytes that do not fit the input, and are an encoded image: say so rather than quote shapes."""
    if raw.startswith((JPEG_SIGNATURE, PNG_SIGNATURE)):
        kind = "JPEG" if raw.startswith(JPEG_SIGNATURE) else "PNG"
        why = (
            "the model's rest_b64 setting is raw"
            if takes_images(spec)
            else "images go to 4-D inputs of 1 or 3 channels in layout NHWC or NCHW"
        )
        raise InvalidArgument(
            f"Invalid b64 value - a {kind} image, but b64 on input {spec.name} {format_shape(spec.shape)} is the raw "
            f"bytes of its {spec.precision} values: {why}"
        )


def _jsonable(array: np.ndarray, precision: str) -> Any:
    if precision == "BF16":
        array = dtypes.bf16_bits_to_float(array)
    return array.tolist()


def predict_response(outputs: dict[str, np.ndarray], precisions: dict[str, str], form: str) -> dict[str, Any]:
    """{"predictions": ...} for row requests, {"outputs": ...} for columnar; a single output is unnamed."""
    values = {name: _jsonable(array, precisions[name]) for name, array in outputs.items()}
    if form == COLUMN:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    rows = len(next(iter(outputs.values())))
    return {"predictions": [{name: value[i] for name, value in values.items()} for i in range(rows)]}
