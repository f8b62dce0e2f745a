"""The v2 REST inference body <-> the data plane's tensors, with Triton's binary tensor data extension.

A request body is JSON, or (with the `Inference-Header-Content-Length` header) that many bytes of JSON
followed by the raw contents of the inputs whose `parameters.binary_data_size` says so, in input order. It
is sliced, never copied: a binary input's content is a memoryview of the body. Every size is checked
against the bytes there before it is used. An answer is JSON, or JSON followed by the raw contents of the
outputs asked for in binary (`"binary_data": true` per output, or `"binary_data_output": true` for all).

JSON `data` is flat or nested (only its element count must match the shape). BYTES elements are strings,
sent as their UTF-8 bytes, or base64 text decoded to bytes when the input's parameters say
`"content_type": "base64"` (MLServer's convention).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from api.kserve.datatypes import BYTES, datatype_of, precision_of
from api.kserve.request_fields import (
    check_parameter_count,
    check_tensor_count,
    check_tensor_parameters,
    request_id,
    timeout_s,
)
from api.kserve.tensors import MAX_BYTES_ELEMENTS, bytes_tensor, output_values, raw_output, raw_tensor, tensor_shape
from api.priority import PRIORITY_PARAMETER, priority_parameter
from api.rest_http import parse_json
from inference.errors import InvalidArgument
from inference.request import InferenceResult
from inference.validation import MAX_RANK, RequestTensor

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
CONTENT_TYPE = "content_type"  # MLServer's per-input content type: "base64" for base64 BYTES elements
_DIGITS = re.compile(r"[0-9]{1,19}")
# the kinds of numpy arrays JSON numbers make that each datatype takes (validation refuses fractions and
# values out of range; an empty list makes float64)
_JSON_KINDS = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf", "BF16": "iuf"}
_KIND_NAMES = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "U": "strings"}


@dataclass(frozen=True)
class InferBody:
    """What an inference request asks for."""

    request_id: str  # "" when it has none
    inputs: dict[str, RequestTensor]
    outputs: list[str] | None  # the outputs asked for, in order; None: every one
    binary_outputs: dict[str, bool]  # the outputs that say whether they want binary data
    binary_by_default: bool  # binary_data_output
    timeout_s: float | None
    priority: int | None  # the `priority` parameter (None: the OVMS-Priority header, if any, says)

    def binary(self, output: str) -> bool:
        return self.binary_outputs.get(output, self.binary_by_default)


def parse_infer_body(body: bytes, header_length: str | None) -> InferBody:
    """An inference request from its body and its Inference-Header-Content-Length header (None if absent)."""
    view = memoryview(body)
    json_length = len(body) if header_length is None else _json_length(header_length, len(body))
    document = parse_json(body if json_length == len(body) else bytes(view[:json_length]))
    if not isinstance(document, dict):
        raise InvalidArgument("Invalid inference request: a JSON object")
    parameters = _parameters(document.get("parameters"), "the request")
    outputs, binary_outputs = _outputs(document.get("outputs"))
    return InferBody(
        request_id=request_id(document.get("id")),
        inputs=_inputs(document.get("inputs"), view[json_length:], header_length is not None),
        outputs=outputs,
        binary_outputs=binary_outputs,
        binary_by_default=_flag(parameters.get(BINARY_DATA_OUTPUT, False), BINARY_DATA_OUTPUT, "the request"),
        timeout_s=timeout_s(parameters),
        priority=priority_parameter(parameters.get(PRIORITY_PARAMETER)),
    )


def infer_response(model: str, result: InferenceResult, body: InferBody) -> tuple[list[bytes | memoryview], int | None]:
    """The answer's parts (its JSON, then the binary outputs' contents) and the length of its JSON when
    any output is binary (None: the JSON is the whole answer)."""
    document: dict[str, Any] = {"model_name": model, "model_version": str(result.version)}
    if body.request_id:
        document["id"] = body.request_id
    outputs, contents = [], []
    for name in body.outputs or list(result.outputs):
        array, precision = result.outputs[name], result.precisions[name]
        output: dict[str, Any] = {"name": name, "datatype": datatype_of(precision), "shape": list(array.shape)}
        if body.binary(name):
            content = raw_output(array)
            output["parameters"] = {BINARY_DATA_SIZE: len(content)}
            contents.append(content)
        else:
            output["data"] = output_values(array, precision)
        outputs.append(output)
    document["outputs"] = outputs
    header = json.dumps(document).encode()
    binary = any(body.binary(output["name"]) for output in outputs)
    return [header, *contents], len(header) if binary else None


def _json_length(header_length: str, body_length: int) -> int:
    if not _DIGITS.fullmatch(header_length):
        raise InvalidArgument(f"Invalid {HEADER_LENGTH} header: {header_length:.40}")
    length = int(header_length)
    if not 0 < length <= body_length:
        raise InvalidArgument(
            f"Invalid {HEADER_LENGTH} header: {length}; the JSON header takes 1..{body_length} bytes of this body"
        )
    return length


def _inputs(items: Any, binary: memoryview, header_given: bool) -> dict[str, RequestTensor]:
    """Each input, binary ones sliced from `binary` in input order; every byte of it must be used."""
    if not isinstance(items, list) or not items:
        raise InvalidArgument("Unable to parse 'inputs': a non-empty list of tensors")
    check_tensor_count(len(items), "inputs")
    inputs: dict[str, RequestTensor] = {}
    offset = 0
    for item in items:
        name, parameters = _named(item, "input")
        where = f"input {name!r:.80}"
        if name in inputs:
            raise InvalidArgument(f"Invalid inputs: {where} is given twice")
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidArgument(f"Unable to parse 'datatype' of {where}: a string")
        shape = tensor_shape(item.get("shape"), where)
        size = parameters.get(BINARY_DATA_SIZE)
        if ("data" in item) == (size is not None):
            raise InvalidArgument(f"Invalid {where}: it needs either 'data' or parameters.{BINARY_DATA_SIZE}, not both")
        if size is None:
            inputs[name] = _json_tensor(datatype, shape, item["data"], parameters.get(CONTENT_TYPE), where)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"Unable to parse '{BINARY_DATA_SIZE}' of {where}: a non-negative integer")
        left = len(binary) - offset
        if size > left:
            needs = "" if header_given else f" (binary data follows the JSON only with the {HEADER_LENGTH} header)"
            raise InvalidArgument(
                f"Invalid {BINARY_DATA_SIZE} of {where}: {size} bytes, but {left} bytes of binary data are left{needs}"
            )
        inputs[name] = raw_tensor(precision_of(datatype), shape, binary[offset : offset + size], where)
        offset += size
    if offset != len(binary):
        raise InvalidArgument(f"Invalid binary data: {len(binary) - offset} bytes after the last binary input")
    return inputs


def _outputs(items: Any) -> tuple[list[str] | None, dict[str, bool]]:
    """The outputs asked for (None: all) and which of them say whether they want binary data."""
    if items is None:
        return None, {}
    if not isinstance(items, list):
        raise InvalidArgument("Unable to parse 'outputs': a list")
    check_tensor_count(len(items), "outputs")
    names: dict[str, None] = {}
    binary: dict[str, bool] = {}
    for item in items:
        name, parameters = _named(item, "output")
        if BINARY_DATA in parameters:
            binary[name] = _flag(parameters[BINARY_DATA], BINARY_DATA, f"output {name!r:.80}")
        names[name] = None
    return list(names) or None, binary


def _named(item: Any, kind: str) -> tuple[str, dict[str, Any]]:
    """An input's or output's name and parameters; INVALID_ARGUMENT for an extension we do not serve."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidArgument(f"Unable to parse the {kind}s: each is an object with a 'name' string")
    name = item["name"]
    where = f"{kind} {name!r:.80}"
    parameters = _parameters(item.get("parameters"), where)
    check_tensor_parameters(parameters, where)
    return name, parameters


def _parameters(value: Any, where: str) -> dict[str, Any]:
    """Parameters as sent (at most MAX_PARAMETERS); the ones nobody reads are ignored, as Triton ignores them."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"Unable to parse 'parameters' of {where}: a JSON object")
    check_parameter_count(len(value), where)
    return value


def _flag(value: Any, parameter: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"Unable to parse '{parameter}' of {where}: true or false")
    return value


def _json_tensor(datatype: str, shape: tuple[int, ...], data: Any, content_type: Any, where: str) -> RequestTensor:
    """A tensor from its JSON `data`, the elements counted against its shape."""
    precision = precision_of(datatype)
    if not isinstance(data, list):
        raise InvalidArgument(f"Unable to parse 'data' of {where}: a list")
    if precision == BYTES:
        return bytes_tensor(shape, _bytes_values(data, content_type == "base64", where), where)
    values = _numbers(data, datatype, where)
    count = math.prod(shape)
    if values.size != count:
        raise InvalidArgument(
            f"Invalid 'data' of {where}: shape {list(shape)} holds {count} elements; 'data' has {values.size}"
        )
    return RequestTensor(precision, shape, values=values)


def _numbers(data: list[Any], datatype: str, where: str) -> np.ndarray:
    """JSON numbers (or booleans) as a flat array; validation casts it to the model's type, refusing
    fractions, values out of range and NaN or infinities where the type cannot hold them."""
    try:
        array = np.array(data)
    except (ValueError, TypeError, RecursionError):
        raise InvalidArgument(f"Unable to parse 'data' of {where}: ragged or too deeply nested lists") from None
    kinds = _JSON_KINDS.get(datatype, "iuf")  # integer types take integral floats too (1.0)
    if array.size and array.dtype.kind not in kinds:
        found = _KIND_NAMES.get(array.dtype.kind, "mixed values, or integers beyond 64 bits")
        raise InvalidArgument(f"Invalid 'data' of {where}: {found} in a {datatype} tensor")
    return array.reshape(-1)


def _bytes_values(data: list[Any], base64_text: bool, where: str) -> list[bytes]:
    """JSON strings as BYTES elements: their UTF-8 bytes, or the bytes their base64 text holds."""
    strings = list(itertools.islice(_leaves(data, where), MAX_BYTES_ELEMENTS + 1))  # more: refused, unencoded
    if not all(isinstance(text, str) for text in strings):
        raise InvalidArgument(f"Invalid 'data' of {where}: BYTES elements are strings")
    if not base64_text:
        return [text.encode() for text in strings]
    elements = []
    for index, text in enumerate(strings):
        try:
            elements.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"Invalid 'data' of {where}: element {index} is not base64") from None
    return elements


def _leaves(value: Any, where: str, depth: int = 0) -> Iterator[Any]:
    """The elements of nested lists, row-major, at most MAX_RANK lists deep."""
    if not isinstance(value, list):
        yield value
        return
    if depth >= MAX_RANK:
        raise InvalidArgument(f"Unable to parse 'data' of {where}: lists nested deeper than {MAX_RANK}")
    for item in value:
        yield from _leaves(item, where, depth + 1)
