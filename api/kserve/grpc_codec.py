"""KServe v2 gRPC messages <-> the data plane's tensors: a ModelInferRequest's inputs, as typed `contents`
or as `raw_input_contents` (one entry per input, in input order, or none), and the answer's outputs in
`raw_output_contents`, as Triton and OpenVINO Model Server answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from api.kserve.datatypes import BYTES, datatype_of, precision_of
from api.kserve.request_fields import check_parameter_count, check_tensor_count, check_tensor_parameters
from api.kserve.tensors import bytes_tensor, raw_output, raw_tensor, tensor_shape
from api.protos import grpc_service_pb2 as pb
from inference.errors import InvalidArgument
from inference.request import InferenceResult
from inference.validation import RequestTensor

NAME_CHARS = 100  # of a client's tensor name quoted in a message

# The InferTensorContents field of each precision, with the numpy type of its values. FP16 and BF16 have
# none: the protocol sends them raw only.
_CONTENTS = {
    "BOOL": ("bool_contents", np.bool_),
    "I8": ("int_contents", np.int32),
    "I16": ("int_contents", np.int32),
    "I32": ("int_contents", np.int32),
    "I64": ("int64_contents", np.int64),
    "U8": ("uint_contents", np.uint32),
    "U16": ("uint_contents", np.uint32),
    "U32": ("uint_contents", np.uint32),
    "U64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
    BYTES: ("bytes_contents", object),
}


def infer_inputs(request: pb.ModelInferRequest) -> dict[str, RequestTensor]:
    """The request's inputs by name, as sent (validation then checks them against the model)."""
    count = len(request.inputs)
    check_tensor_count(count, "inputs")
    raw = list(request.raw_input_contents)  # each read of a bytes field is a new copy: read them once
    if raw and len(raw) != count:
        raise InvalidArgument(
            f"Invalid raw_input_contents - {len(raw)} entries for {count} inputs: "
            "one per input, in the order of inputs, or none (then every input has typed contents)"
        )
    inputs: dict[str, RequestTensor] = {}
    for index, tensor in enumerate(request.inputs):
        where = f"input {tensor.name:.{NAME_CHARS}}"
        if tensor.name in inputs:
            raise InvalidArgument(f"Invalid inputs - {where} is given twice")
        inputs[tensor.name] = _input_tensor(tensor, raw[index] if raw else None, where)
    return inputs


def requested_outputs(request: pb.ModelInferRequest) -> list[str]:
    """The names of the outputs asked for, in request order (none: every output)."""
    check_tensor_count(len(request.outputs), "outputs")
    names: dict[str, None] = {}
    for output in request.outputs:
        where = f"output {output.name:.{NAME_CHARS}}"
        if output.name in names:
            raise InvalidArgument(f"Invalid outputs - {where} is requested twice")
        check_parameter_count(len(output.parameters), where)
        check_tensor_parameters(output.parameters.keys(), where)
        names[output.name] = None
    return list(names)


def parameter_values(parameters: Mapping[str, pb.InferParameter], where: str) -> dict[str, Any]:
    """A parameters map as plain values (what api.kserve.request_fields reads)."""
    check_parameter_count(len(parameters), where)
    values = {}
    for name, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[name] = None if choice is None else getattr(parameter, choice)
    return values


def infer_response(request: pb.ModelInferRequest, result: InferenceResult, outputs: list[str]) -> pb.ModelInferResponse:
    """The answer: the requested outputs (`outputs`, in that order; none: every output) with their contents
    raw, and the request's id."""
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=str(result.version), id=request.id)
    for name in outputs or result.outputs:
        array = result.outputs[name]
        response.outputs.add(name=name, datatype=datatype_of(result.precisions[name]), shape=array.shape)
        response.raw_output_contents.append(bytes(raw_output(array)))
    return response


def _input_tensor(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, where: str) -> RequestTensor:
    check_parameter_count(len(tensor.parameters), where)
    check_tensor_parameters(tensor.parameters.keys(), where)
    try:
        precision = precision_of(tensor.datatype)
    except InvalidArgument as error:
        raise InvalidArgument(f"Invalid datatype of {where} - {error.message}") from None
    shape = tensor_shape(tensor.shape, where)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidArgument(
                f"Invalid contents of {where} - typed contents beside raw_input_contents: "
                "send every input raw, or every input typed"
            )
        return raw_tensor(precision, shape, raw, where)
    return _typed_tensor(precision, shape, tensor.contents, where)


def _typed_tensor(
    precision: str, shape: tuple[int, ...], contents: pb.InferTensorContents, where: str
) -> RequestTensor:
    datatype = datatype_of(precision)
    if precision not in _CONTENTS:
        raise InvalidArgument(
            f"Invalid contents of {where} - {datatype} has no typed contents field in the protocol: "
            "send it in raw_input_contents"
        )
    field, numpy_type = _CONTENTS[precision]
    wrong = [descriptor.name for descriptor, _ in contents.ListFields() if descriptor.name != field]
    if wrong:
        raise InvalidArgument(
            f"Invalid contents of {where} - datatype {datatype} takes {field}, not {', '.join(wrong)}"
        )
    values = getattr(contents, field)
    if precision == BYTES:
        return bytes_tensor(shape, values, where)
    return RequestTensor(precision, shape, values=np.array(values, dtype=numpy_type))
