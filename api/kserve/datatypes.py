"""KServe v2 datatype names <-> the precision names we serve (inference.dtypes).

BYTES is the v2 type of variable-length elements: we take it for encoded images (JPEG, PNG) sent to a
model's 4-D input, carried to validation as `RequestTensor(precision=BYTES, values=<object array of bytes>)`.
"""

from __future__ import annotations

from inference.dtypes import BY_NAME
from inference.errors import InvalidArgument

BYTES = "BYTES"

_PRECISION_BY_DATATYPE = {
    "BOOL": "BOOL",
    "UINT8": "U8",
    "UINT16": "U16",
    "UINT32": "U32",
    "UINT64": "U64",
    "INT8": "I8",
    "INT16": "I16",
    "INT32": "I32",
    "INT64": "I64",
    "FP16": "FP16",
    "FP32": "FP32",
    "FP64": "FP64",
    "BF16": "BF16",
    BYTES: BYTES,
}
_DATATYPE_BY_PRECISION = {precision: datatype for datatype, precision in _PRECISION_BY_DATATYPE.items()}
assert set(_DATATYPE_BY_PRECISION) - {BYTES} == set(BY_NAME), "every served precision has a v2 name"


def precision_of(datatype: str) -> str:
    """The precision a v2 datatype names; INVALID_ARGUMENT for one we do not serve."""
    try:
        return _PRECISION_BY_DATATYPE[datatype]
    except (KeyError, TypeError):
        raise InvalidArgument(f"Unsupported datatype: {datatype!s:.40}") from None


def datatype_of(precision: str) -> str:
    """The v2 datatype of a precision we serve."""
    return _DATATYPE_BY_PRECISION[precision]


def config_data_type(precision: str) -> str:
    """The name of a precision in a model configuration's DataType enum (TYPE_FP32; BYTES is TYPE_STRING)."""
    datatype = datatype_of(precision)
    return "TYPE_STRING" if datatype == BYTES else f"TYPE_{datatype}"
