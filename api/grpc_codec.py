"""TensorProto <-> the internal tensor forms."""

from __future__ import annotations

import numpy as np

from api.protos import tensorflow_pb2
from inference import dtypes
from inference.bytes_tensors import BYTES, bytes_array
from inference.errors import InvalidArgument
from inference.signature import ModelSignature
from inference.validation import RequestTensor

_STATE_CODES = {"OK": 0, "UNKNOWN": 2, "UNAVAILABLE": 14}
_WIDE_TYPES = {"int_val": np.int64, "half_val": np.int64, "int64_val": np.int64, "uint32_val": np.uint64}
DT_STRING = 7


def tensor_from_proto(proto: tensorflow_pb2.TensorProto) -> RequestTensor:
    """The client's tensor as sent: raw tensor_content, or the typed *_val field of its dtype; a DT_STRING
    tensor's string_val elements are encoded images (as OVMS reads them), a BYTES tensor."""
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if proto.dtype == DT_STRING:
        if proto.tensor_content:
            raise InvalidArgument("Invalid tensor proto - DT_STRING elements go in string_val, not tensor_content")
        return RequestTensor(BYTES, shape, values=bytes_array(proto.string_val))
    precision = dtypes.BY_TF_ENUM.get(proto.dtype)
    content = proto.tensor_content  # each read of a bytes field is a new copy: read it once
    if precision is None:
        return RequestTensor(dtypes.tf_enum_name(proto.dtype), shape, content=content)
    if content:
        return RequestTensor(precision.name, shape, content=content)
    field = precision.proto_field
    # Decode typed values into a wide type: validation then rejects values out of the input type's range
    # (converting straight to e.g. uint8 would wrap or raise, depending on the protobuf runtime).
    values = np.array(getattr(proto, field), dtype=_WIDE_TYPES.get(field, precision.numpy))
    if field == "half_val":
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise InvalidArgument(f"Invalid tensor proto - half_val holds values out of range for {precision.name}")
        bits = values.astype(np.uint16)
        values = bits.view(np.float16) if precision.name == "FP16" else bits
    return RequestTensor(precision.name, shape, values=values)


def tensor_to_proto(array: np.ndarray, precision_name: str) -> tensorflow_pb2.TensorProto:
    precision = dtypes.by_name(precision_name)
    proto = tensorflow_pb2.TensorProto(dtype=precision.tf_enum, tensor_content=np.ascontiguousarray(array).tobytes())
    proto.tensor_shape.dim.extend(tensorflow_pb2.TensorShapeProto.Dim(size=int(d)) for d in array.shape)
    return proto


def signature_def(signature: ModelSignature) -> tensorflow_pb2.SignatureDef:
    definition = tensorflow_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for target, specs in ((definition.inputs, signature.inputs), (definition.outputs, signature.outputs)):
        for name, spec in specs.items():
            info = target[name]
            info.name = name
            info.dtype = dtypes.by_name(spec.precision).tf_enum
            info.tensor_shape.dim.extend(tensorflow_pb2.TensorShapeProto.Dim(size=d) for d in spec.shape)
    return definition


def status_code(error_code: str) -> int:
    """tensorflow.error.Code number of a version status' error code name."""
    return _STATE_CODES.get(error_code, 2)
