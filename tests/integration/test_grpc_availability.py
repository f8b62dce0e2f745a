"""One hostile gRPC client must not take the server from everyone else: half-open HTTP/2 streams,
idle TCP connections, connections that send only the HTTP/2 preface, a flood of health Watch streams
and of concurrent calls on one channel (issue 10, findings 3 and 11). The same over TLS with tokens
required is in test_security.py."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

from api.grpc_server import MAX_CALLS_AWAITING_REQUEST
from api.health import MAX_WATCH_STREAMS
from tests.support.hostile_grpc import HEALTH_CHECK_PATH, HTTP2_PREFACE, HalfOpenStreams, IdleConnections
from tests.support.leaks import rss_bytes
from tests.support.load import float_request
from tests.support.stack import OvmsProcess

HALF_OPEN_STREAMS = 300  # more than the 256 threads that used to serve every call
SLOW_STREAMS = 100  # a message begun and never finished
IDLE_CONNECTIONS = 1000


@pytest.fixture(scope="module")
def digits_request(models_dir: Path):
    return float_request("digits", "x", np.load(models_dir / "data" / "imgs.npy")[:1])


def predict_p50_ms(address: str, request, calls: int = 40) -> float:
    """The median latency of `calls` Predicts one after another on a fresh channel; every one must answer."""
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(request, timeout=5)  # connects
        took = []
        for _ in range(calls):
            started = time.perf_counter()
            stub.Predict(request, timeout=5)
            took.append(time.perf_counter() - started)
    return statistics.median(took) * 1000


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status


def test_half_open_streams_and_idle_connections_leave_others_served(server, digits_request):
    before_ms = predict_p50_ms(server.grpc_address, digits_request)
    with (
        IdleConnections(server.grpc_port, IDLE_CONNECTIONS),
        HalfOpenStreams(server.grpc_port, HALF_OPEN_STREAMS) as streams,
        HalfOpenStreams(server.grpc_port, SLOW_STREAMS, partial_message=True) as slow,
    ):
        assert (streams.opened, slow.opened) == (HALF_OPEN_STREAMS, SLOW_STREAMS)
        time.sleep(0.5)  # the server has taken every stream in
        assert health_status(server.grpc_address) == health_pb2.HealthCheckResponse.SERVING
        held_ms = predict_p50_ms(server.grpc_address, digits_request)
        attack = streams.connections + slow.connections
        assert not any(connection.closed for connection in attack), "the attack must stay connected"
        assert not streams.answered() and not slow.answered(), "the streams stay open, waiting for their requests"
    print(f"\nPredict p50: {before_ms:.2f} ms alone, {held_ms:.2f} ms with {IDLE_CONNECTIONS} idle connections, "
          f"{HALF_OPEN_STREAMS} half-open and {SLOW_STREAMS} slow streams held")  # fmt: skip
    assert held_ms < max(5 * before_ms, before_ms + 20), "others must be served within their normal latency"


def test_beyond_the_bound_the_longest_stalled_calls_are_pushed_out(server, digits_request):
    """More half-open streams than the server keeps (however many connections they come on, to any
    method, the health service's too): the ones that waited longest end with RESOURCE_EXHAUSTED, the
    newer ones and other clients are served."""
    extra = 200
    with HalfOpenStreams(server.grpc_port, MAX_CALLS_AWAITING_REQUEST, path=HEALTH_CHECK_PATH) as older:
        time.sleep(1.0)  # the server has taken them in: they are the longest waiting
        with HalfOpenStreams(server.grpc_port, extra) as newer:
            deadline = time.monotonic() + 10
            while older.answered()["8"] + newer.answered()["8"] < extra and time.monotonic() < deadline:
                time.sleep(0.05)
            pushed_out = older.answered() + newer.answered()
            assert pushed_out == {"8": extra}, "RESOURCE_EXHAUSTED (8), as many as were beyond the bound"
            assert older.answered()["8"] >= 0.9 * extra, "the longest waiting go first"
            assert health_status(server.grpc_address) == health_pb2.HealthCheckResponse.SERVING
            assert predict_p50_ms(server.grpc_address, digits_request, calls=5) < 1000


def test_two_thousand_concurrent_calls_on_one_channel_are_answered_or_refused(server, digits_request):
    """Every call ends with an answer or a clear RESOURCE_EXHAUSTED: never CANCELLED, never a hang."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls = [stub.Predict.future(digits_request, timeout=60) for _ in range(2000)]
        codes = Counter(call.code().name for call in calls)
        details = {call.details() for call in calls if call.code() != grpc.StatusCode.OK}
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, (codes, details)
    assert codes["OK"] >= 1000, codes
    assert health_status(server.grpc_address) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("requests", "message"),
    [([b"\xff\xff\xff"], "Invalid request message: "), ([], "Missing request message")],
    ids=["undecodable", "missing"],
)
def test_a_bad_or_missing_request_message_is_invalid_argument(server, requests, message):
    with grpc.insecure_channel(server.grpc_address) as channel:
        predict = channel.stream_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as error:
            predict(iter(requests), timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(message)


def test_health_watch_streams_through_the_request_reader(server):
    """Server-streaming methods (grpc.health.v1 Watch) keep working behind the bound on awaited requests."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        request = health_pb2.HealthCheckRequest(service="tensorflow.serving.PredictionService")
        updates = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=5)
        assert next(updates).status == health_pb2.HealthCheckResponse.SERVING
        updates.cancel()


def test_many_watch_streams_with_long_names_are_bounded_and_others_served(server, digits_request):
    """Health needs no token: 2,000 Watch streams, each naming a different unknown 16 KB service, are held
    up to MAX_WATCH_STREAMS (SERVICE_UNKNOWN, then open as the protocol asks); the others are refused at
    once; the api's memory stays bounded and other clients are served."""
    streams = 2000
    rss_before = rss_bytes(server.process.pid)
    with grpc.insecure_channel(server.grpc_address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch
        names = [f"{n:08d}" + "x" * 16_000 for n in range(streams)]
        calls = [watch(health_pb2.HealthCheckRequest(service=name), timeout=30) for name in names]
        first = Counter()
        for call in calls:
            try:
                first[health_pb2.HealthCheckResponse.ServingStatus.Name(next(call).status)] += 1
            except grpc.RpcError as error:
                first[error.code().name] += 1
        grown_mb = (rss_bytes(server.process.pid) - rss_before) / 2**20
        assert health_status(server.grpc_address) == health_pb2.HealthCheckResponse.SERVING
        assert predict_p50_ms(server.grpc_address, digits_request, calls=5) < 1000
        for call in calls:
            call.cancel()
    print(f"\n{streams} Watch streams: {dict(first)}; api RSS +{grown_mb:.0f} MB")
    assert first["SERVICE_UNKNOWN"] <= MAX_WATCH_STREAMS, first
    assert first["SERVICE_UNKNOWN"] + first["RESOURCE_EXHAUSTED"] == streams, first
    assert grown_mb < 64, "held Watch streams must not grow the api without bound"


def test_a_watch_stream_is_not_an_idle_connection(server):
    """The idle-connection timer runs only while a connection carries no call: a Watch held past it keeps
    streaming (as would a Predict waiting for a slow model)."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        request = health_pb2.HealthCheckRequest(service="tensorflow.serving.PredictionService")
        updates = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=30)
        assert next(updates).status == health_pb2.HealthCheckResponse.SERVING
        time.sleep(8)  # past the 5 s idle timer
        assert updates.is_active(), "the call must outlive the idle timer"
        updates.cancel()


def assert_preface_only_connections_closed(process: OvmsProcess, tls=None) -> None:
    """200 connections that send the HTTP/2 preface and SETTINGS, then nothing: the server closes each
    within a few seconds, and serves others meanwhile."""
    with IdleConnections(process.grpc_port, 200, greeting=HTTP2_PREFACE, tls=tls) as connections:
        started = time.monotonic()
        still_open = connections.open_after(20)
        took = time.monotonic() - started
    print(f"\npreface-only connections: {200 - still_open} of 200 closed within {took:.1f} s")
    assert still_open == 0, f"{still_open} preface-only connections still open after 20 s"


def test_preface_only_connections_are_closed_within_seconds(server):
    assert_preface_only_connections_closed(server)
    assert health_status(server.grpc_address) == health_pb2.HealthCheckResponse.SERVING


def test_preface_only_connections_are_closed_with_channel_arguments_given(launch, models_dir):
    process = launch(
        "--model_name", "digits", "--model_path", str(models_dir / "digits"),
        "--grpc_channel_arguments", "grpc.max_connection_age_ms=600000,grpc.keepalive_time_ms=60000",
    )  # fmt: skip
    assert_preface_only_connections_closed(process)
