"""hypothesis generates TensorProtos and sends them through a real gRPC channel to the session server's Predict.

Random dtypes (any DataType, and enum numbers TensorFlow never defined), shapes (negative, huge, zero, many
dimensions, unknown_rank), tensor_content of any length, every typed *_val field with any values (NaN and
infinities included), real and made-up input names, for models of every element type. The answer is a
prediction or a client error, never INTERNAL / UNKNOWN; afterwards the server still answers a valid request
and left nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ovmsclient.tfs_compat.protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.integration.test_grpc import content_tensor, predict_request
from tests.support.leaks import assert_no_leftovers, rss_bytes
from tests.support.stack import OvmsProcess

MAX_EXAMPLES = 400
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,  # a shape OpenVINO cannot reshape to (auto-shape models)
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # a full queue
}
MODEL_INPUTS = {
    "digits": ["x"],
    "versioned": ["x"],
    "multi": ["a", "b"],
    "mapped": ["in"],
    "types": ["f16", "i8", "u8", "i16", "i32", "i64", "boolean"],
}

int32s = st.integers(-(2**31), 2**31 - 1)
int64s = st.integers(-(2**63), 2**63 - 1)
small = {"max_size": 64}
TYPED_FIELDS = {
    "float_val": st.lists(st.floats(width=32), **small),
    "double_val": st.lists(st.floats(), **small),
    "int_val": st.lists(int32s, **small),
    "half_val": st.lists(int32s, **small),
    "int64_val": st.lists(int64s, **small),
    "bool_val": st.lists(st.booleans(), **small),
    "uint32_val": st.lists(st.integers(0, 2**32 - 1), **small),
    "uint64_val": st.lists(st.integers(0, 2**64 - 1), **small),
    "string_val": st.lists(st.binary(max_size=8), max_size=8),
}
dtypes = st.one_of(st.sampled_from(list(types_pb2.DataType.values())), st.integers(-(2**31), 2**31 - 1))
dims = st.one_of(
    st.integers(-3, 70), st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1)
)
shapes = st.one_of(st.lists(dims, max_size=6), st.lists(st.integers(0, 2), min_size=20, max_size=100))


@st.composite
def tensors(draw: st.DrawFn) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in draw(shapes)],
        unknown_rank=draw(st.booleans()),
    )
    proto = tensor_pb2.TensorProto(dtype=draw(dtypes), tensor_shape=shape)
    if draw(st.booleans()):
        proto.tensor_content = draw(st.binary(max_size=1024))
    for field in draw(st.sets(st.sampled_from(sorted(TYPED_FIELDS)), max_size=2)):
        getattr(proto, field).extend(draw(TYPED_FIELDS[field]))
    return proto


@st.composite
def requests(draw: st.DrawFn) -> predict_pb2.PredictRequest:
    model = draw(st.sampled_from(sorted(MODEL_INPUTS)))
    names = draw(st.one_of(st.just(MODEL_INPUTS[model]), st.lists(st.text(max_size=4), max_size=3)))
    return predict_request(model, {name: draw(tensors()) for name in names})


@pytest.fixture(scope="module")
def api_rss_before(server: OvmsProcess) -> int:
    return rss_bytes(server.process.pid)


@pytest.fixture(scope="module")
def predict(server: OvmsProcess, api_rss_before: int) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict


@given(request=requests())
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_generated_tensors_are_served_or_refused_never_internal(
    predict: grpc.UnaryUnaryMultiCallable, request: predict_pb2.PredictRequest
) -> None:
    try:
        predict(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in CLIENT_ERRORS, (error.code(), error.details())


def test_server_is_alive_serving_and_left_nothing_behind(
    server: OvmsProcess, predict: grpc.UnaryUnaryMultiCallable, redis_url: str, api_rss_before: int
) -> None:
    x = np.array([[1, 2, 3, 4]], np.float32)
    response = predict(predict_request("versioned", {"x": content_tensor(x)}), timeout=30)
    assert np.frombuffer(response.outputs["y"].tensor_content, np.float32).tolist() == [2, 4, 6, 8]
    assert_no_leftovers(redis_url, server.process.pid, api_rss_before)
