"""Hostile connections against the REST port of real `ovms` processes: idle, slow and half-open
connections from one client never stop the others from being served (plain, TLS and mutual TLS), and
the HTTP framing limits (head and URL size, body length and framing) answer at once.

Every socket a test opens is closed by the `held` fixture, however the test ends.
"""

from __future__ import annotations

import contextlib
import json
import re
import resource
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import psutil
import pytest
import requests
from grpc_health.v1 import health_pb2

from tests.integration import test_security
from tests.integration.test_security import TOKEN, Pki
from tests.support.stack import OvmsProcess, start_ovms

pki, tls_server, mtls_server = test_security.pki, test_security.tls_server, test_security.mtls_server  # fixtures

IDLE_CONNECTIONS = 1000
SLOWLORIS_CONNECTIONS = 100
CALLS = 10  # per route, while the connections are held
BOUND_S = 1.0  # generous: these routes answer in milliseconds on an idle server
FIRST_BOUND_S = 5.0  # the first call waits behind the server accepting the burst of connections just opened
REFUSAL_S = 2.0  # a framing error is answered at once, before any timeout
CUT_S = 15.0  # a slow or silent sender is cut after the server's few-seconds timeouts (README)
DIGIT = [[0.0] * 64]


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    """Sockets a test holds open; all closed when it ends."""
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def open_idle(port: int, count: int, held: list[socket.socket]) -> None:
    """`count` TCP connections that send nothing (no request, no TLS ClientHello)."""
    for _ in range(count):
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5))


def latencies(calls: dict[str, Callable[[], requests.Response]]) -> dict[str, list[float]]:
    """Seconds per call, each on a new connection, `CALLS` rounds of every route after a first call;
    each must answer 200."""
    start = time.perf_counter()
    assert next(iter(calls.values()))().status_code == 200
    first = time.perf_counter() - start
    print(f"first call {first * 1000:.1f} ms")
    assert first < FIRST_BOUND_S
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(CALLS):
        for name, call in calls.items():
            start = time.perf_counter()
            reply = call()
            seconds[name].append(time.perf_counter() - start)
            assert reply.status_code == 200, (name, reply.status_code, reply.text)
    return seconds


def report(seconds: dict[str, list[float]], what: str) -> None:
    for name, values in seconds.items():
        print(f"{what}: {name} p50 {statistics.median(values) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms")


def assert_served_quickly(seconds: dict[str, list[float]], what: str) -> None:
    report(seconds, what)
    for name, values in seconds.items():
        assert max(values) < BOUND_S, (name, values)


def plain_routes(server: OvmsProcess) -> dict[str, Callable[[], requests.Response]]:
    url = server.rest_url
    return {
        "live": lambda: requests.get(f"{url}/v1/health/live", timeout=5),
        "status": lambda: requests.get(f"{url}/v1/models/digits", timeout=5),
        "predict": lambda: requests.post(f"{url}/v1/models/digits:predict", json={"instances": DIGIT}, timeout=5),
    }


def tls_routes(server: OvmsProcess, pki: Pki, model: str, **auth: object) -> dict[str, Callable[[], requests.Response]]:
    url = f"https://localhost:{server.rest_port}"
    options = {"verify": pki.ca, "timeout": 5, **auth}
    return {
        "live": lambda: requests.get(f"{url}/v1/health/live", **options),
        "status": lambda: requests.get(f"{url}/v1/models/{model}", **options),
        "predict": lambda: requests.post(f"{url}/v1/models/{model}:predict", json={"instances": DIGIT}, **options),
    }


def exchange(port: int, data: bytes, half_close: bool = False, wait_s: float = REFUSAL_S) -> tuple[bytes, float]:
    """Send raw bytes (then optionally shut the write side) and read the answer until the server closes
    or `wait_s` passes: (what came back, seconds until the server closed or the wait ended)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer, time.perf_counter() - start


def status_of(answer: bytes) -> int | None:
    """The status code of an HTTP/1.1 answer, None for no answer."""
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


# ------------------------------------------------------------------------------ availability (finding 2)


def test_rest_answers_while_1000_idle_connections_are_held(server: OvmsProcess, held: list[socket.socket]) -> None:
    report(latencies(plain_routes(server)), "no connections held")  # the normal latency, for comparison
    open_idle(server.rest_port, IDLE_CONNECTIONS, held)
    assert_served_quickly(latencies(plain_routes(server)), f"{IDLE_CONNECTIONS} idle plain connections")


def test_rest_answers_while_slowloris_connections_trickle_headers(
    server: OvmsProcess, held: list[socket.socket]
) -> None:
    for _ in range(SLOWLORIS_CONNECTIONS):
        sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=5)
        sock.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n")
        held.append(sock)
    stop = threading.Event()

    def trickle() -> None:  # one more header byte on every connection, every half second
        while not stop.wait(0.5):
            for sock in held:
                with contextlib.suppress(OSError):  # cut by the server: that is allowed
                    sock.send(b"X")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        assert_served_quickly(latencies(plain_routes(server)), f"{SLOWLORIS_CONNECTIONS} slowloris connections")
    finally:
        stop.set()
        trickler.join()


def test_a_slow_header_sender_is_cut_after_a_few_seconds(server: OvmsProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=CUT_S) as sock:
        sock.sendall(b"GET /v1/health/live HTTP/1.1\r\n")
        start = time.perf_counter()
        cut = False
        while time.perf_counter() - start < CUT_S and not cut:
            try:
                sock.sendall(b"X")
                time.sleep(0.5)
            except OSError:
                cut = True
            else:
                sock.settimeout(0.01)
                with contextlib.suppress(TimeoutError):
                    cut = sock.recv(1024) == b""  # the server closed its side
        assert cut, f"a header trickling a byte every 0.5 s was still open after {CUT_S} s"


def test_tls_rest_answers_while_1000_connections_never_start_the_handshake(
    tls_server: OvmsProcess, pki: Pki, held: list[socket.socket]
) -> None:
    routes = tls_routes(tls_server, pki, "digits_tls", headers={"Authorization": f"Bearer {TOKEN}"})
    report(latencies(routes), "TLS, no connections held")
    open_idle(tls_server.rest_port, IDLE_CONNECTIONS, held)
    assert_served_quickly(latencies(routes), f"{IDLE_CONNECTIONS} idle TLS connections (no handshake)")


def test_mtls_rest_answers_while_1000_connections_never_start_the_handshake(
    mtls_server: OvmsProcess, pki: Pki, held: list[socket.socket]
) -> None:
    open_idle(mtls_server.rest_port, IDLE_CONNECTIONS, held)
    routes = tls_routes(mtls_server, pki, "digits_mtls", cert=(pki.client_cert, pki.client_key))
    assert_served_quickly(latencies(routes), f"{IDLE_CONNECTIONS} idle mTLS connections (no handshake)")


def test_a_tls_handshake_that_stalls_is_cut(tls_server: OvmsProcess) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    hello = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(*hello, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    client_hello = hello[1].read()
    _, seconds = exchange(tls_server.rest_port, client_hello[: len(client_hello) // 2], wait_s=CUT_S + 5)
    assert seconds < CUT_S, f"half a ClientHello held the connection for {seconds:.1f} s"


# ------------------------------------------------------------------------------ header limits (finding 8)


def test_headers_beyond_the_limit_are_431(server: OvmsProcess) -> None:
    head = b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 << 10) + b"\r\n\r\n"
    answer, seconds = exchange(server.rest_port, head)
    assert status_of(answer) == 431 and seconds < REFUSAL_S, answer[:200]


def test_many_headers_beyond_the_limit_are_431(server: OvmsProcess) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
    answer, _ = exchange(server.rest_port, b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_of(answer) == 431, answer[:200]


def test_a_url_beyond_the_limit_is_414(server: OvmsProcess) -> None:
    reply = requests.get(f"{server.rest_url}/v1/models/{'m' * (16 << 10)}", timeout=5)
    assert reply.status_code == 414
    assert reply.json()["error"].startswith("URL too long")


def test_a_50_mb_url_is_refused_at_once(server: OvmsProcess) -> None:
    """The server stops reading at its head limit: it never buffers what the client keeps sending."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=5) as sock:
        sock.sendall(b"GET /" + b"u" * (1 << 20))  # 1 MiB of the 50, then the rest as long as the server reads
        sent = 1 << 20
        try:
            while sent < 50 << 20:
                sent += sock.send(b"u" * (1 << 20))
        except OSError:
            pass  # the server answered and closed
        answer = sock.recv(65536)
    assert status_of(answer) in (414, 431), answer[:200]
    assert sent < 50 << 20 and time.perf_counter() - start < 5


def test_headers_within_the_limits_are_served(server: OvmsProcess) -> None:
    headers = {f"X-H{i}": "v" * 100 for i in range(200)}  # ~22 KiB
    reply = requests.get(f"{server.rest_url}/v1/health/live?{'q' * 4000}", headers=headers, timeout=5)
    assert reply.status_code == 200


# ----------------------------------------------------------------------------- body framing (finding 11)


def test_a_body_shorter_than_its_content_length_then_a_half_close_is_never_200(server: OvmsProcess) -> None:
    body = b'{"instances": [[' + b"0.0," * 63 + b"0.0]]}"
    head = b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    request = head + b"Content-Length: %d\r\n\r\n" % (len(body) + 10) + body
    answer, seconds = exchange(server.rest_port, request, half_close=True)
    assert status_of(answer) == 400, answer[:300]
    assert seconds < REFUSAL_S


def test_a_full_request_then_a_half_close_is_answered(server: OvmsProcess) -> None:
    answer, _ = exchange(server.rest_port, b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True)
    assert status_of(answer) == 200, answer[:300]


def test_a_negative_content_length_is_400_at_once(server: OvmsProcess) -> None:
    request = b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
    answer, seconds = exchange(server.rest_port, request)
    assert status_of(answer) == 400 and seconds < REFUSAL_S, answer[:300]


def test_content_length_with_transfer_encoding_is_400(server: OvmsProcess) -> None:
    body = b'{"instances": [[' + b"0.0," * 63 + b"0.0]]}"
    request = (
        b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), len(body), body)
    )
    answer, seconds = exchange(server.rest_port, request)
    assert status_of(answer) == 400 and seconds < REFUSAL_S, answer[:300]
    assert b"Connection: close" in answer or b"connection: close" in answer


def test_a_body_that_stops_arriving_is_cut(server: OvmsProcess) -> None:
    request = b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
    answer, seconds = exchange(server.rest_port, request, wait_s=CUT_S + 5)
    assert seconds < CUT_S, f"a silent body held the connection for {seconds:.1f} s"
    assert status_of(answer) == 408, answer[:300]


def test_keep_alive_serves_several_requests_on_one_connection(server: OvmsProcess) -> None:
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(f"{server.rest_url}/v1/health/live", timeout=5).status_code == 200
        reply = session.post(f"{server.rest_url}/v1/models/digits:predict", json={"instances": DIGIT}, timeout=5)
        assert reply.status_code == 200 and np.array(reply.json()["predictions"]).shape == (1, 10)


# ------------------------------------------------------------- connections that make no progress (hostile run)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LOW_OPEN_FILE_LIMIT = 2048  # REST may hold 40 % of what the api has not opened (api.descriptors)
PAST_THE_CAP = 2100  # connections: more than the api's open-file limit


def test_an_http2_preface_is_400_and_closed_at_once(server: OvmsProcess, held: list[socket.socket]) -> None:
    """The plain port speaks HTTP/1.1 only: hypercorn's HTTP/2 side had no idle timer, so a connection
    that sent only the preface stayed open for good."""
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=5)
        sock.sendall(PREFACE)
        held.append(sock)
    answer, seconds = exchange(server.rest_port, PREFACE, wait_s=CUT_S)
    assert status_of(answer) == 400 and seconds < REFUSAL_S, (answer[:300], seconds)
    assert_served_quickly(latencies(plain_routes(server)), "100 preface connections")


def test_an_h2c_upgrade_is_answered_in_http_1_1(server: OvmsProcess) -> None:
    request = b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    answer, _ = exchange(server.rest_port, request + b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200, answer[:300]


@pytest.fixture
def few_files_server(small_config: object, redis_url: str) -> Iterator[OvmsProcess]:
    """An api alone under a low open-file limit, to reach its REST connection cap quickly."""
    args = ["--config_path", str(small_config), "--broker_url", redis_url]
    process = start_ovms(args, role="api", open_file_limit=LOW_OPEN_FILE_LIMIT)
    yield process
    process.stop()


def test_connections_past_the_cap_are_closed_and_grpc_and_the_log_are_spared(
    few_files_server: OvmsProcess, held: list[socket.socket]
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * PAST_THE_CAP)), hard))
    log_lines = few_files_server.log().count("\n")
    open_idle(few_files_server.rest_port, PAST_THE_CAP, held)
    answers = (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)  # no workers
    assert test_security._health(few_files_server.grpc_address) in answers
    closed = 0
    for sock in held:
        sock.settimeout(0.01)
        with contextlib.suppress(TimeoutError):
            closed += sock.recv(1) == b""
    cap = int(re.search(r"REST connections at most (\d+)", few_files_server.log()).group(1))
    assert closed >= PAST_THE_CAP - cap, (closed, cap)
    time.sleep(3)
    grown = few_files_server.log().count("\n") - log_lines
    assert grown < 10 and "Too many open files" not in few_files_server.log(), few_files_server.log()[-3000:]
    for sock in held:
        sock.close()
    held.clear()
    time.sleep(0.5)
    assert requests.get(f"{few_files_server.rest_url}/v1/health/live", timeout=5).status_code == 200


def _big_predict(rows: int) -> bytes:
    body = json.dumps({"instances": [[1.0, 1.0, 1.0]] * rows}).encode()
    head = b"POST /v1/models/mapped:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_a_client_that_never_reads_its_answer_is_cut(server: OvmsProcess, held: list[socket.socket]) -> None:
    """Its answer is dropped after the write timeout, instead of staying in the api for as long as the
    client keeps the connection."""
    request = _big_predict(200_000)
    answer_bytes = len(
        requests.post(
            f"{server.rest_url}/v1/models/mapped:predict",
            data=request.split(b"\r\n\r\n", 1)[1],
            headers={"Content-Type": "application/json"},
            timeout=30,
        ).content
    )
    api = psutil.Process(server.process.pid)
    before = api.memory_info().rss
    for _ in range(4):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        sock.connect(("127.0.0.1", server.rest_port))
        sock.sendall(request)
        held.append(sock)
    time.sleep(CUT_S)
    print(f"api RSS {before >> 20} -> {api.memory_info().rss >> 20} MB with 4 unread answers held")
    for sock in held:
        received = 0
        sock.settimeout(2)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        assert received < answer_bytes, f"the whole answer, not read for {CUT_S} s, was still there"
    assert requests.post(f"{server.rest_url}/v1/models/digits:predict", json={"instances": DIGIT}, timeout=5).ok


def test_a_body_trickling_below_the_minimum_rate_is_cut(server: OvmsProcess) -> None:
    head = b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=CUT_S) as sock:
        sock.sendall(head)
        start = time.perf_counter()
        answer = b""
        with contextlib.suppress(OSError):
            while time.perf_counter() - start < 3 * CUT_S and not answer:
                sock.sendall(b"1\r\n \r\n")  # a byte a second: never idle for the 5 s idle timeout
                sock.settimeout(1)
                with contextlib.suppress(TimeoutError):
                    answer = sock.recv(65536)
    assert status_of(answer) == 408, (answer[:300], time.perf_counter() - start)
