"""Hostile clients and receivers of job callbacks and dead letters, through a real api and worker on a Redis of
their own, with receivers on 127.0.0.1 (tests.support.receiver) and "blackholes" (a listening socket that
never accepts: the connection opens, the request is never answered). What broke, and is fixed: blackholed
receivers delaying every other receiver's callback, links in the signed callback built from a forged `Host`
header, and a cancel during a retry leaving the chunk's tensors outside the backlog."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
import requests

from tasks import dead_letters
from tasks.app import app, configure
from tasks.job_backlog import TOTAL
from tasks.messages import JobRecord
from tasks.routing import job_queue_for, queue_for
from tests.integration.test_job_hooks import CHINA, CORRUPT, GOOD, b64, hooks_flags, status, submit, until
from tests.support import images
from tests.support.jobs import wait_for_end
from tests.support.receiver import Receiver
from tests.support.stack import OvmsProcess, private_redis, worker_and_api

SECRET = b"hostile-test-secret-5d1e7a"
TIMEOUT_S = 3  # --callback_timeout_s: how long a blackhole holds a delivery thread
DELIVERY_THREADS = 4  # tasks.callback_runner.DELIVERY_THREADS

own_redis_url = pytest.fixture(scope="module", name="own_redis_url")(private_redis)


@dataclass(frozen=True)
class Stack:
    api: OvmsProcess
    worker: OvmsProcess
    store: redis.Redis


@pytest.fixture(scope="module")
def stack(models_dir: Path, own_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    args, hooks = hooks_flags(tmp_path_factory.mktemp("job-hooks-hostile"), models_dir, own_redis_url, SECRET)
    once = ["--callback_attempts", "1", "--callback_timeout_s", str(TIMEOUT_S)]
    with worker_and_api(args, api_args=[*hooks, *once]) as (worker, api):
        configure(own_redis_url)
        yield Stack(api, worker, redis.Redis.from_url(own_redis_url))


class Blackhole:
    """A port that accepts connections (the kernel's backlog) and never answers them."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0), backlog=1024)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/hook"

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self._socket.close()  # the connections still waiting are reset: their attempts end at once


def one_sample(callback_url: str) -> dict:
    return {"model": "versioned", "version": 2, "instances": [[1] * 4], "callback_url": callback_url}


# --------------------------------------------------------------------------- callbacks


def test_the_links_in_a_signed_callback_do_not_come_from_a_forged_host_header(stack: Stack) -> None:
    with Receiver() as receiver:
        reply = requests.post(
            f"{stack.api.rest_url}/v1/jobs",
            json=one_sample(receiver.url),
            headers={"Host": "attacker.example:4444"},
            timeout=30,
        )
        assert reply.status_code == 202, reply.text
        [arrival] = receiver.wait_for(reply.json()["id"])
    document = arrival.document()
    assert "attacker.example" not in document["status_url"] + document["result_url"], document


def test_predicts_and_job_reads_are_served_while_every_delivery_thread_hangs_on_a_blackhole(stack: Stack) -> None:
    api = stack.api
    with Blackhole() as blackhole:
        hung = [submit(api, one_sample(blackhole.url)) for _ in range(DELIVERY_THREADS * 2)]
        until(api, hung[0], lambda job: job["state"] == "SUCCESS")
        time.sleep(1)  # the delivery threads have taken their attempts
        took = []
        for _ in range(20):
            started = time.monotonic()
            predicted = requests.post(
                f"{api.rest_url}/v1/models/versioned/versions/2:predict", json={"instances": [[1] * 4]}, timeout=30
            )
            assert predicted.status_code == 200, predicted.text
            assert status(api, hung[-1])["state"] == "SUCCESS"
            took.append(time.monotonic() - started)
    assert max(took) < TIMEOUT_S, f"a predict and a status read took up to {max(took):.2f} s"


def test_a_blackholed_receiver_does_not_delay_another_receivers_callback(stack: Stack) -> None:
    api = stack.api
    with Blackhole() as blackhole, Receiver() as receiver:
        hung = [submit(api, one_sample(blackhole.url)) for _ in range(DELIVERY_THREADS * 4)]
        until(api, hung[-1], lambda job: job["state"] == "SUCCESS")
        job_id = submit(api, one_sample(receiver.url))
        ended = until(api, job_id, lambda job: job["state"] == "SUCCESS")
        [arrival] = receiver.wait_for(job_id, timeout_s=60)
    late = arrival.wall - ended["finished"]
    print(f"\nthe callback arrived {late:.1f} s after its job ended, behind {len(hung)} blackholed ones")
    assert late < TIMEOUT_S, f"the callback arrived {late:.1f} s after its job ended"


def test_the_secret_never_shows_in_status_listing_metrics_or_logs(stack: Stack) -> None:
    api = stack.api
    with Receiver((500,)) as refusing:  # a failed attempt: its error is shown and logged
        job_id = submit(api, one_sample(refusing.url))
        told = until(api, job_id, lambda job: job["callback"]["state"] == "failed")["callback"]
        [arrival] = refusing.of(job_id)
    assert told["last_error"] == "HTTP 500", told
    assert SECRET not in arrival.body and SECRET.decode() not in json.dumps(arrival.headers)
    seen = [
        json.dumps(status(api, job_id)),
        requests.get(f"{api.rest_url}/v1/jobs", timeout=10).text,
        requests.get(f"{api.rest_url}/metrics", timeout=10).text,
        api.log(),
        stack.worker.log(),
    ]
    assert not [text[:200] for text in seen if SECRET.decode() in text]
    assert not [key for key in stack.store.scan_iter(count=1000) if SECRET in stored(stack.store, key)]


def stored(store: redis.Redis, key: bytes) -> bytes:
    """What a Redis key holds, as one byte string (strings, hashes, lists, sets and sorted sets)."""
    kind = store.type(key)
    if kind == b"string":
        return store.get(key) or b""
    if kind == b"hash":
        return b" ".join(b"%s=%s" % pair for pair in store.hgetall(key).items())
    members = {b"list": store.lrange, b"zset": store.zrange}.get(kind)
    return b" ".join(members(key, 0, -1) if members else store.smembers(key) if kind == b"set" else [])


# --------------------------------------------------------------------------- dead letters


def test_retry_is_refused_for_a_job_without_dead_letters_and_after_a_cancel(stack: Stack) -> None:
    api = stack.api
    plain = submit(api, {"model": "image_u8", "instances": [b64(CORRUPT)]})
    assert wait_for_end(f"{api.rest_url}/v1/jobs/{plain}", 60)["state"] == "FAILURE"
    refused = requests.post(f"{api.rest_url}/v1/jobs/{plain}/retry", timeout=10)
    assert refused.status_code == 409 and 'not submitted with "dead_letters": true' in refused.json()["error"], (
        refused.text
    )
    assert status(api, plain)["dead_letters"] == []

    partial = submit(api, {"model": "image_u8", "instances": [b64(GOOD), b64(CORRUPT)], "dead_letters": True})
    assert wait_for_end(f"{api.rest_url}/v1/jobs/{partial}", 60)["state"] == "PARTIAL"
    assert requests.get(f"{api.rest_url}/v1/jobs/{partial}/result", timeout=10).status_code == 409
    assert requests.delete(f"{api.rest_url}/v1/jobs/{partial}", timeout=10).json()["state"] == "PARTIAL"
    refused = requests.post(f"{api.rest_url}/v1/jobs/{partial}/retry", timeout=10)
    assert refused.status_code == 409 and "tensors of its dead letters are gone" in refused.json()["error"], (
        refused.text
    )
    [chunk] = JobRecord.from_json(stack.store.get(f"ovms:job:{partial}")).chunks
    assert not stack.store.exists(dead_letters.dead_payload_key(chunk.task_id)), "a cancel drops the tensors"


def test_a_cancel_while_a_retried_chunk_runs_leaves_no_tensors_behind(stack: Stack) -> None:
    api, store = stack.api, stack.store
    slow = cv2.imencode(".jpg", np.full((4096, 4096, 3), 128, np.uint8))[1].tobytes()  # ~0.1 s to decode
    tiny = images.png(CHINA, 48, 32)  # first, so that the chunk is sized by it: one chunk of all the images
    job_id = submit(
        api, {"model": "image_u8", "instances": [b64(tiny)] + [b64(slow)] * 30 + [b64(CORRUPT)], "dead_letters": True}
    )
    assert wait_for_end(f"{api.rest_url}/v1/jobs/{job_id}", 120)["state"] == "PARTIAL"
    [chunk] = JobRecord.from_json(store.get(f"ovms:job:{job_id}")).chunks
    result_key = app.backend.get_key_for_task(chunk.task_id)
    queue = job_queue_for(queue_for("CPU", "image_u8"))

    assert requests.post(f"{api.rest_url}/v1/jobs/{job_id}/retry", timeout=10).status_code == 200
    deadline = time.monotonic() + 30
    while store.llen(queue) or store.exists(result_key):  # until a worker took it
        assert time.monotonic() < deadline, "no worker took the retried chunk"
        time.sleep(0.01)
    time.sleep(0.5)  # it is decoding its images now (about 3 s), past its job's stop check
    assert requests.delete(f"{api.rest_url}/v1/jobs/{job_id}", timeout=10).json()["state"] == "REVOKED"
    until(api, job_id, lambda job: store.exists(result_key), timeout_s=60)  # the run ended (failed again)
    kept = store.strlen(dead_letters.dead_payload_key(chunk.task_id))
    assert not kept, f"{kept} bytes of a cancelled job kept for 24 h; the backlog counts {store.get(TOTAL)!r}"
