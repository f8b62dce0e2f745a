"""Element types: the seed's precision names, numpy storage, OpenVINO types and TensorFlow DataTypes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.errors import InvalidArgument


@dataclass(frozen=True)
class Precision:
    name: str  # the seed's name, used in messages ("FP32", "I32", ...)
    numpy: np.dtype  # how the values are stored (BF16 travels as its raw 16-bit pattern)
    ov_type: str  # openvino.Type attribute name
    tf_enum: int  # tensorflow.DataType value
    tf_name: str
    proto_field: str  # the typed TensorProto field TensorFlow uses for this type
    # The values OpenVINO can compute, when narrower than the type: its CPU plugin runs I64, U64 and U32 as
    # 32-bit signed integers (2**40 + 5 comes back as 5) and FP64 as FP32 (1e300 comes back as 3.4e38), so
    # values beyond are refused rather than cut. (FP64 within range is rounded to FP32's 24-bit precision.)
    computed_range: tuple[float, float] | None = None


_INT32_RANGE = (-(2**31), 2**31 - 1)
_NON_NEGATIVE_INT32 = (0, 2**31 - 1)
_FP32_MAX = float(np.finfo(np.float32).max)

PRECISIONS = [
    Precision("FP32", np.dtype("<f4"), "f32", 1, "DT_FLOAT", "float_val"),
    Precision("FP64", np.dtype("<f8"), "f64", 2, "DT_DOUBLE", "double_val", (-_FP32_MAX, _FP32_MAX)),
    Precision("FP16", np.dtype("<f2"), "f16", 19, "DT_HALF", "half_val"),
    Precision("BF16", np.dtype("<u2"), "bf16", 14, "DT_BFLOAT16", "half_val"),
    Precision("I8", np.dtype("i1"), "i8", 6, "DT_INT8", "int_val"),
    Precision("U8", np.dtype("u1"), "u8", 4, "DT_UINT8", "int_val"),
    Precision("I16", np.dtype("<i2"), "i16", 5, "DT_INT16", "int_val"),
    Precision("U16", np.dtype("<u2"), "u16", 17, "DT_UINT16", "int_val"),
    Precision("I32", np.dtype("<i4"), "i32", 3, "DT_INT32", "int_val"),
    Precision("U32", np.dtype("<u4"), "u32", 22, "DT_UINT32", "uint32_val", _NON_NEGATIVE_INT32),
    Precision("I64", np.dtype("<i8"), "i64", 9, "DT_INT64", "int64_val", _INT32_RANGE),
    Precision("U64", np.dtype("<u8"), "u64", 23, "DT_UINT64", "uint64_val", _NON_NEGATIVE_INT32),
    Precision("BOOL", np.dtype("?"), "boolean", 10, "DT_BOOL", "bool_val"),
]

BY_NAME = {p.name: p for p in PRECISIONS}
BY_OV_TYPE = {p.ov_type: p for p in PRECISIONS}
BY_TF_ENUM = {p.tf_enum: p for p in PRECISIONS}


def by_name(name: str) -> Precision:
    try:
        return BY_NAME[name]
    except KeyError:
        raise InvalidArgument(f"Unsupported precision: {name}") from None


def tf_enum_name(tf_enum: int) -> str:
    """A readable name for any DataType number, including the ones we do not serve."""
    known = BY_TF_ENUM.get(tf_enum)
    return known.name if known else _UNSERVED_TF_NAMES.get(tf_enum, f"DataType({tf_enum})")


_UNSERVED_TF_NAMES = {0: "DT_INVALID", 7: "STRING", 8: "COMPLEX64", 18: "COMPLEX128", 20: "RESOURCE", 21: "VARIANT"}


def float_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16 (nearest even) and return the 16-bit patterns."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
