"""Task messages: JSON metadata in the Celery message, raw tensor bytes beside it (claim check).

Celery's Redis transport wraps every body in base64 inside JSON; a 600 KB image costs tens of
milliseconds that way. So the message carries only names, types, shapes and offsets, and the
tensors of all its requests travel as one raw byte string under `payload_key(task_id)`. The api sends
a large one as views of the request arrays (no copy; see tasks.publisher).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from inference import dtypes
from inference.errors import InvalidArgument, ServingError
from inference.request import InferenceRequest, Tensors

Payload = list[bytes | memoryview]  # the parts of one payload, in order
JOIN_BELOW_BYTES = 1 << 20  # a smaller payload is one joined string (one SET); a larger one, views (SET + APPENDs)


def pack_requests(requests: list[InferenceRequest], precisions: dict[str, str]) -> tuple[dict[str, Any], Payload]:
    """One envelope (JSON-able) and one payload for requests of the same model version."""
    chunks: list[memoryview] = []
    offset = 0
    entries = []
    for request in requests:
        metas = []
        for name, array in request.inputs.items():
            data = _bytes_view(array)
            metas.append([name, precisions[name], list(array.shape), offset, len(data)])
            chunks.append(data)
            offset += len(data)
        entries.append(
            {
                "id": request.request_id,
                "inputs": metas,
                "outputs": request.output_filter,
                "deadline": request.deadline,
                "pinned": request.pinned,
                "any_batch": request.any_batch,
            }
        )
    first = requests[0]
    envelope = {
        "model": first.model,
        "version": first.version,
        "deadline": max(r.deadline for r in requests),  # the message lives while any request still waits
        "requests": entries,
    }
    return envelope, [b"".join(chunks)] if offset < JOIN_BELOW_BYTES else chunks


def _bytes_view(array: np.ndarray) -> memoryview:
    """The array's bytes without copying them (unless it is not contiguous)."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def payload_size(envelope: dict[str, Any]) -> int:
    """The bytes of a message's tensors, from its envelope alone (before they are fetched)."""
    try:
        return sum(int(meta[4]) for entry in envelope["requests"] for meta in entry["inputs"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"Malformed predict message: {exc}") from None


def unpack_requests(envelope: dict[str, Any], payload: bytes) -> list[InferenceRequest]:
    view = memoryview(payload)
    requests = []
    for entry in envelope["requests"]:
        inputs = {
            name: _array(view, precision, shape, offset, nbytes)
            for name, precision, shape, offset, nbytes in entry["inputs"]
        }
        requests.append(
            InferenceRequest(
                model=envelope["model"],
                version=envelope["version"],
                inputs=inputs,
                output_filter=entry["outputs"],
                deadline=entry["deadline"],
                pinned=entry["pinned"],
                any_batch=entry.get("any_batch", False),
                request_id=entry["id"],
            )
        )
    return requests


def _array(view: memoryview, precision: str, shape: list[int], offset: int, nbytes: int) -> np.ndarray:
    dtype = dtypes.by_name(precision).numpy
    if nbytes != math.prod(shape) * dtype.itemsize or offset + nbytes > len(view):
        raise ValueError("tensor metadata does not match the payload")
    return np.frombuffer(view[offset : offset + nbytes], dtype=dtype).reshape(shape)


def pack_outputs(
    outputs: Tensors, precisions: dict[str, str], *, version: int, batch: int, started: float, infer_s: float
) -> dict[str, Any]:
    """A request's outputs with how they were computed: version, batch rows, inference start and time."""
    return {
        "batch": batch,
        "version": version,
        "started": started,
        "infer_s": infer_s,
        "outputs": [
            [name, precisions[name], list(a.shape), np.ascontiguousarray(a).tobytes()] for name, a in outputs.items()
        ],
    }


def pack_error(error: ServingError) -> dict[str, Any]:
    return {"error": error.to_wire()}


def unpack_result(entry: dict[str, Any]) -> tuple[Tensors, dict[str, Any]]:
    """A request's outputs and how they were computed (version, batch, started, infer_s); raises the
    worker's error."""
    if "error" in entry:
        raise ServingError.from_wire(entry["error"])
    outputs = {
        name: np.frombuffer(data, dtype=dtypes.by_name(precision).numpy).reshape(shape)
        for name, precision, shape, data in entry["outputs"]
    }
    return outputs, {key: entry[key] for key in ("version", "batch", "started", "infer_s")}


def describe_failure(result: Any) -> str:
    """A failed task's stored result (Celery's exception dict) as one line."""
    if isinstance(result, dict) and "exc_type" in result:
        message = result.get("exc_message")
        if isinstance(message, (list, tuple)) and len(message) == 1:
            message = message[0]
        return f"{result['exc_type']}: {message}"
    return str(result)
