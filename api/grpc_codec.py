"""TensorProto <-> the internal tensor forms."""

from __future__ import annotations

import numpy as np

from api.protos import tensorflow_pb2
from inference import dtypes
from inference.errors import InvalidArgument
from inference.signature import ModelSignature
from inference.validation import RequestTensor

_STATE_CODES = {"OK": 0, "UNKNOWN": 2, "UNAVAILABLE": 14}


def tensor_from_proto(proto: tensorflow_pb2.TensorProto) -> RequestTensor:
    """The client's tensor as sent: raw tensor_content, or the typed *_val field of its dtype."""
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    precision = dtypes.BY_TF_ENUM.get(proto.dtype)
    if precision is None:
        return RequestTensor(dtypes.tf_enum_name(proto.dtype), shape, content=proto.tensor_content)
    if proto.tensor_content:
        return RequestTensor(precision.name, shape, content=proto.tensor_content)
    values = getattr(proto, precision.proto_field)
    try:
        if precision.name == "FP16":
            array = np.array(values, dtype=np.uint16).view(np.float16)
        else:
            array = np.array(values, dtype=precision.numpy)
    except OverflowError:  # e.g. 300 in the int_val of a DT_UINT8 tensor: the client's fault, not INTERNAL
        if precision.proto_field != "int_val":  # half_val holds 16-bit patterns: nothing to validate later
            raise InvalidArgument(
                f"Invalid tensor proto - {precision.proto_field} holds values out of range for {precision.name}"
            ) from None
        array = np.array(values, dtype=np.int64)  # validation rejects the range, after checking precision and shape
    return RequestTensor(precision.name, shape, values=array)


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
