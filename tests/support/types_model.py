"""The `types` example model's inputs (ops/build_models.py: an identity per element type) and values that
test each type's range, shared by the gRPC tests of both APIs."""

from __future__ import annotations

import numpy as np

TYPES_MODEL_INPUTS = {
    "f16": np.float16,
    "i8": np.int8,
    "u8": np.uint8,
    "i16": np.int16,
    "i32": np.int32,
    "i64": np.int64,
    "boolean": np.bool_,
}


def extremes(dtype: type) -> np.ndarray:
    """Two rows holding a type's extremes; int64 stays in int32 range (the CPU plugin runs i64 as i32)."""
    if dtype is np.bool_:
        return np.array([[True, False], [False, True]])
    info = np.finfo(dtype) if np.issubdtype(dtype, np.floating) else np.iinfo(np.int32 if dtype is np.int64 else dtype)
    return np.array([[info.min, info.max], [0, 1]], dtype=dtype)
