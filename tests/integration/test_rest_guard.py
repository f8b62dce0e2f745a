"""What a REST request costs before the app sees it: a call without an accepted token is refused from its
head alone, body bytes count against the api's in-flight budget from the moment the head announces them,
and the health probes answer while every `--rest_workers` thread is held by slow work.

The api here has bearer tokens, a 32 MiB in-flight budget and 2 REST threads; its one worker is frozen
(SIGSTOP) by the tests that need requests to wait.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.integration import test_rest_connections
from tests.integration.test_rest_connections import DIGIT, status_of
from tests.integration.test_security import TOKEN
from tests.support.leaks import rss_bytes
from tests.support.stack import private_redis, worker_and_api

held = test_rest_connections.held  # fixture
redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)

BUDGET_MB = 32
REST_WORKERS = 2
BODY_BYTES = 16 << 20  # announced by every hostile body below
CONNECTIONS = 12
ANSWER_S = 3.0  # a refusal from the head comes at once; generous for a loaded box, below the 5 s body timeout
RSS_GROWTH_BOUND = 120 << 20  # one admitted body buffered (16 MiB) and allocator slack; 12 buffered are 190+ MB
PROBE_BOUND_S = 1.0
FREEZE_S = 1.5  # a frozen worker stays live for its heartbeat TTL (3 s): keep the freeze below it
AUTHORIZED = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


@pytest.fixture(scope="module")
def stack(models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("guard")
    config, tokens = folder / "config.json", folder / "tokens"
    config.write_text(
        json.dumps({"model_config_list": [{"config": {"name": "digits", "base_path": str(models_dir / "digits")}}]})
    )
    tokens.write_text(f"{TOKEN}\n")
    args = ["--config_path", str(config), "--broker_url", redis_url, "--max_request_mb", "64"]
    api_flags = [
        "--auth_token_file",
        str(tokens),
        "--max_inflight_mb",
        str(BUDGET_MB),
        "--rest_workers",
        str(REST_WORKERS),
    ]
    with worker_and_api(args, api_args=api_flags) as (worker, api):
        yield {"worker": worker, "api": api}


def post_head(length: int, authorization: bytes = AUTHORIZED, chunked: bool = False) -> bytes:
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % length
    return (
        b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + authorization
        + framing
        + b"\r\n"
    )


def answer_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent within `seconds` (b"" for nothing yet)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(65536)
    except (TimeoutError, ConnectionResetError):
        return b""


def connect(port: int, sockets: list[socket.socket]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sockets.append(sock)
    return sock


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server still reads (a refused request's connection is closed: that is allowed)."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


@pytest.mark.parametrize("authorization", [b"", b"Authorization: Bearer wrong\r\n"])
def test_a_16_mib_body_without_an_accepted_token_is_401_before_it_is_sent(
    stack: dict, held: list[socket.socket], authorization: bytes
) -> None:
    sock = connect(stack["api"].rest_port, held)
    sock.sendall(post_head(BODY_BYTES, authorization) + b"[" * (64 << 10))  # the rest of the 16 MiB never comes
    answer = answer_within(sock, ANSWER_S)
    assert status_of(answer) == 401, answer[:300]
    assert b'www-authenticate: bearer realm="ovms"' in answer.lower()


def test_trickling_bodies_beyond_the_budget_are_429_at_once_and_memory_stays_bounded(
    stack: dict, held: list[socket.socket]
) -> None:
    """12 authorized 16 MiB JSON bodies (counted 8x: 128 MiB each) sent but for their last byte: the first is
    admitted alone, the 11 others are 429 from their head, and the api never buffers them."""
    api = stack["api"]
    rss_before = rss_bytes(api.process.pid)
    sockets = [connect(api.rest_port, held) for _ in range(CONNECTIONS)]
    for sock in sockets:
        sock.sendall(post_head(BODY_BYTES))
    deadline = time.monotonic() + ANSWER_S
    answers = [answer_within(sock, max(0.01, deadline - time.monotonic())) for sock in sockets[1:]]
    statuses = [status_of(answer) for answer in answers]
    assert statuses == [429] * (CONNECTIONS - 1), statuses
    assert all(b"retry-after: 1" in answer.lower() for answer in answers)
    for sock in sockets:
        send_quietly(sock, b" " * (BODY_BYTES - 1))  # the last byte would come later, if ever
    growth = rss_bytes(api.process.pid) - rss_before
    assert answer_within(sockets[0], 0.2) == b""  # the admitted one is still being received
    print(f"api RSS growth with {CONNECTIONS} trickling 16 MiB bodies: {growth >> 20} MB")
    assert growth < RSS_GROWTH_BOUND, f"api RSS grew by {growth >> 20} MB"


def test_a_chunked_body_is_counted_as_it_arrives(stack: dict, held: list[socket.socket]) -> None:
    """3 MiB of JSON per chunk, counted 24 MiB: a second such body does not fit beside the first."""
    chunk = b"%x\r\n%s\r\n" % (3 << 20, b" " * (3 << 20))
    first, second = connect(stack["api"].rest_port, held), connect(stack["api"].rest_port, held)
    first.sendall(post_head(0, chunked=True) + chunk)
    time.sleep(0.3)  # the server has taken the first chunk
    send_quietly(second, post_head(0, chunked=True) + chunk)
    assert status_of(answer_within(second, ANSWER_S)) == 429
    assert answer_within(first, 0.2) == b""  # still receiving


def test_liveness_and_readiness_answer_while_every_rest_thread_is_held(stack: dict) -> None:
    api, worker = stack["api"], stack["worker"]
    predict = {"instances": DIGIT}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    worker.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(max_workers=3 * REST_WORKERS) as pool:
            url = f"{api.rest_url}/v1/models/digits:predict"
            waiting = [
                pool.submit(requests.post, url, json=predict, headers=headers, timeout=30)
                for _ in range(3 * REST_WORKERS)
            ]
            time.sleep(0.3)  # every REST thread now waits on the frozen worker
            took = {}
            for probe in ("live", "ready"):
                started = time.monotonic()
                reply = requests.get(f"{api.rest_url}/v1/health/{probe}", timeout=30)
                took[probe] = time.monotonic() - started
                assert reply.status_code == 200 or probe == "ready", reply.text  # not ready is an answer too
            print(f"probes with {REST_WORKERS} REST threads held: {took}")
            assert all(seconds < PROBE_BOUND_S for seconds in took.values()), took
            time.sleep(max(0.0, FREEZE_S - 0.3 - sum(took.values())))
            worker.signal(signal.SIGCONT)
            assert all(future.result(timeout=30).status_code == 200 for future in waiting)
    finally:
        worker.signal(signal.SIGCONT)
