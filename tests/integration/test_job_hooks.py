"""Job callbacks and dead letters through real api and worker processes on a private Redis, with callback
receivers the test runs on 127.0.0.1 (tests.support.receiver): signed deliveries, once, from either of two
api processes; retries with back-off and giving up; the allow-list; failed chunks kept as dead letters,
listed, and run again by a retry."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
import requests

from inference.errors import WORKER_LOST
from tasks.app import app, configure
from tasks.broker import free_port
from tasks.messages import QueuedChunk
from tasks.routing import job_queue_for, job_taken_key, queue_for
from tests.support import images
from tests.support.jobs import wait_for_end
from tests.support.readme import blocks
from tests.support.receiver import Receiver
from tests.support.stack import REPO, Fleet, OvmsProcess, ovms_command, private_redis

SECRET = b"a-shared-secret-3c9f1e"
ATTEMPTS, BACKOFF_S = 5, 0.5
CHINA = images.photographs()["china"]
GOOD = images.png(CHINA, 48, 32)
CORRUPT = images.jpeg(CHINA)[:5000]  # passes the api's header check, fails to decode on the worker
CORRUPT_ERROR = "Invalid image - image 44, a JPEG of 640x427, cannot be decoded (truncated or corrupt)"

own_redis_url = pytest.fixture(scope="module", name="own_redis_url")(private_redis)  # its worker is frozen at times
resnet_redis_url = pytest.fixture(name="resnet_redis_url")(private_redis)  # a Redis of each test's own


@dataclass(frozen=True)
class Stack:
    worker: OvmsProcess
    apis: tuple[OvmsProcess, OvmsProcess]  # two api processes: either may tell a job's callback
    args: list[str]  # what every process of the stack is started with
    secret_file: Path


def hooks_flags(directory: Path, models_dir: Path, redis_url: str, secret: bytes) -> tuple[list[str], list[str]]:
    """Writes a config serving versioned and image_u8, and the callbacks' secret file, to `directory`. The flags
    of every process of the stack on `redis_url`, and an api's own: callbacks to 127.0.0.1 signed with `secret`."""
    config = {"model_config_list": [
        {"config": {"name": name, "base_path": str(models_dir / name)}} for name in ("versioned", "image_u8")
    ]}  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "secret").write_bytes(secret + b"\n")
    args = ["--config_path", str(directory / "config.json"), "--broker_url", redis_url]
    return args, ["--callback_allow", "127.0.0.1/32", "--callback_secret_file", str(directory / "secret")]


@pytest.fixture(scope="module")
def stack(models_dir: Path, own_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("job-hooks")
    args, hooks = hooks_flags(directory, models_dir, own_redis_url, SECRET)
    hooks += ["--callback_attempts", str(ATTEMPTS), "--callback_backoff_s", str(BACKOFF_S), "--callback_timeout_s", "2"]
    with Fleet(args) as started:
        worker = started.start_worker()
        apis = (started.start_api(*hooks), started.start_api(*hooks))
        yield Stack(worker, apis, args, directory / "secret")


def submit(api: OvmsProcess, body: dict) -> str:
    reply = requests.post(f"{api.rest_url}/v1/jobs", json=body, timeout=60)
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]


def status(api: OvmsProcess, job_id: str) -> dict:
    return requests.get(f"{api.rest_url}/v1/jobs/{job_id}", timeout=10).json()


def until(api: OvmsProcess, job_id: str, condition: Callable[[dict], bool], timeout_s: float = 60) -> dict:
    """The job's status once `condition` holds for it."""
    deadline = time.monotonic() + timeout_s
    while not condition(current := status(api, job_id)):
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {json.dumps(current)[:2000]}"
        time.sleep(0.1)
    return current


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def readme_verify() -> Callable[[bytes, str, bytes], bool]:
    """The README's recipe for checking a callback's signature, as a receiver would copy it."""
    [block] = [block for block in blocks() if "def verify(" in block.code]
    namespace: dict = {}
    exec(block.code, namespace)  # the README's own code, on purpose
    return namespace["verify"]


def metric(api: OvmsProcess, line_start: str) -> float:
    text = requests.get(f"{api.rest_url}/metrics", timeout=10).text
    [value] = [line.split()[-1] for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(value)


def ovms(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(ovms_command(*args), capture_output=True, text=True, cwd=REPO, timeout=300)


# --------------------------------------------------------------------------- callbacks


def test_a_callback_arrives_once_signed_for_success_failure_and_cancel(stack: Stack) -> None:
    verify = readme_verify()
    first, second = stack.apis
    with Receiver() as receiver:
        ends = {}
        for index in range(4):  # through both apis: whichever claims a job tells it, once
            body = {"model": "versioned", "version": 2, "instances": [[index] * 4] * 300, "callback_url": receiver.url}
            ends[submit(stack.apis[index % 2], body)] = "SUCCESS"
        failing = submit(first, {"model": "image_u8", "instances": [b64(CORRUPT)], "callback_url": receiver.url})
        ends[failing] = "FAILURE"
        stack.worker.signal(signal.SIGSTOP)  # a job that cannot start, then cancelled
        try:
            pending = submit(second, {"model": "versioned", "instances": [[1] * 4], "callback_url": receiver.url})
            assert requests.delete(f"{second.rest_url}/v1/jobs/{pending}", timeout=10).json()["state"] == "REVOKED"
        finally:
            stack.worker.signal(signal.SIGCONT)
        ends[pending] = "REVOKED"
        for job_id in ends:
            receiver.wait_for(job_id)
        time.sleep(3)  # several looks at the schedule by both apis: a second delivery would have come
    latencies = []
    for job_id, state in ends.items():
        [arrival] = receiver.of(job_id)
        document = arrival.document()
        latencies.append(arrival.wall - document["finished_at"])
        assert (document["state"], document["delivery"]) == (state, f"{job_id}.1"), document
        assert arrival.headers["OVMS-Delivery"] == f"{job_id}.1" and arrival.path == "/hook"
        assert verify(SECRET, arrival.headers["OVMS-Signature"], arrival.body)
        assert not verify(b"another secret", arrival.headers["OVMS-Signature"], arrival.body)
        tampered = arrival.body.replace(f'"state": "{state}"'.encode(), b'"state": "SUCCESS!"')
        assert not verify(SECRET, arrival.headers["OVMS-Signature"], tampered)
        told = status(first, job_id)["callback"]
        assert (told["url"], told["state"], told["attempts"]) == (receiver.url, "delivered", 1), told
    print(f"\ncallbacks arrived {min(latencies):.2f}-{max(latencies):.2f} s after their jobs ended")
    succeeded = next(receiver.of(job_id)[0].document() for job_id, state in ends.items() if state == "SUCCESS")
    assert succeeded["counts"] == {"samples": 300, "done": 300, "failed": 0, "failed_chunks": 0}
    job_path = f"/v1/jobs/{succeeded['id']}"  # paths: the receiver knows the server's address
    assert (succeeded["status_url"], succeeded["result_url"]) == (job_path, f"{job_path}/result"), succeeded
    result = requests.get(first.rest_url + succeeded["result_url"], timeout=30).json()["outputs"]["y"]
    assert len(result) == 300
    failed = receiver.of(failing)[0].document()
    assert failed["counts"]["failed_chunks"] == 1 and failed["errors"][0].endswith("(truncated or corrupt)")


def test_a_receiver_down_then_up_gets_the_callback_after_back_off(stack: Stack) -> None:
    api = stack.apis[0]
    port = free_port()  # nothing listens there yet
    job_id = submit(api, {"model": "versioned", "instances": [[1] * 4], "callback_url": f"http://127.0.0.1:{port}/"})
    refused = until(api, job_id, lambda job: job["callback"]["attempts"] >= 1)["callback"]
    assert refused["state"] == "pending" and "Connection refused" in refused["last_error"], refused
    with Receiver((503, 200), port=port) as receiver:  # up now, refusing one more attempt
        unavailable, delivered = receiver.wait_for(job_id, 2)
        told = until(api, job_id, lambda job: job["callback"]["state"] == "delivered")["callback"]
    gap = delivered.at - unavailable.at
    print(f"\ncallback: {told['attempts']} attempts; {gap:.2f} s between the 503 and the delivered one")
    assert told["attempts"] >= 3 and unavailable.body == delivered.body
    assert gap >= 2 * BACKOFF_S, "the third attempt or later waits at least twice --callback_backoff_s"


def test_a_receiver_never_up_is_given_up_after_bounded_attempts(stack: Stack) -> None:
    api = stack.apis[1]
    failed_before = metric(api, 'ovms_job_callbacks_total{outcome="failed"}')
    started = time.monotonic()
    url = f"http://127.0.0.1:{free_port()}/"
    job_id = submit(api, {"model": "versioned", "instances": [[1] * 4], "callback_url": url})
    told = until(api, job_id, lambda job: job["callback"]["state"] == "failed", timeout_s=120)["callback"]
    took = time.monotonic() - started
    print(f"\ncallback given up after {told['attempts']} attempts, {took:.1f} s: {told['last_error']}")
    assert told["attempts"] == ATTEMPTS and "Connection refused" in told["last_error"], told
    assert took >= BACKOFF_S * (2 ** (ATTEMPTS - 1) - 1), "the attempts backed off"
    assert metric(api, 'ovms_job_callbacks_total{outcome="failed"}') == failed_before + 1
    assert metric(api, "ovms_job_callback_retries_total") >= ATTEMPTS - 1


def test_a_redirect_is_not_followed(stack: Stack) -> None:
    api = stack.apis[0]
    with Receiver() as target, Receiver((302,), location=target.url) as redirecting:
        job_id = submit(api, {"model": "versioned", "instances": [[1] * 4], "callback_url": redirecting.url})
        told = until(api, job_id, lambda job: job["callback"]["attempts"] >= 2)["callback"]
        assert told["last_error"] == "HTTP 302 (redirects are not followed)", told
        assert len(redirecting.of(job_id)) >= 2 and target.received == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.1.2.3/hook", "--callback_allow does not admit 10.1.2.3"),
        ("http://169.254.169.254/latest/meta-data/", "--callback_allow does not admit 169.254.169.254"),
        ("http://[::1]:8000/", "--callback_allow does not admit ::1"),
        ("http://[::ffff:10.0.0.1]/", "does not admit ::ffff:10.0.0.1 (10.0.0.1)"),
        ("file:///etc/passwd", "not an http:// or https:// URL"),
        ("http://user:password@127.0.0.1:8000/", "no user info"),
    ],
)
def test_the_allow_list_refuses_requests_into_the_cluster(stack: Stack, url: str, why: str) -> None:
    reply = requests.post(
        f"{stack.apis[0].rest_url}/v1/jobs",
        json={"model": "versioned", "instances": [[1] * 4], "callback_url": url},
        timeout=30,
    )
    assert reply.status_code == 400 and why in reply.json()["error"], reply.text


def test_localhost_is_refused_unless_allowed_and_callbacks_are_off_without_an_allow_list(
    stack: Stack, tmp_path: Path
) -> None:
    with Fleet(stack.args) as more:
        elsewhere = more.start_api("--callback_allow", "192.0.2.0/24", "--callback_secret_file", str(stack.secret_file))
        off = more.start_api()
        np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
        not_admitted = "callback_url {}: --callback_allow does not admit "
        for api, url, why in (
            (elsewhere, "http://localhost:8000/", not_admitted + "localhost ("),  # (127.0.0.1) or (::1)
            (elsewhere, "http://127.0.0.1:8000/", not_admitted + "127.0.0.1"),
            (off, "http://127.0.0.1:8000/", "Callbacks are off on this server: it has no --callback_allow"),
        ):
            done = ovms("submit", "--url", api.rest_url, "--model", "versioned", "--input", str(tmp_path / "x.npy"),
                        "--callback", url)  # fmt: skip
            assert done.returncode == 1, done
            assert done.stderr.strip().startswith(f"ovms submit: 400 {why.format(url)}"), done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# --------------------------------------------------------------------------- dead letters


def test_dead_letters_of_a_corrupt_image_are_listed_retried_and_stay_dead(stack: Stack) -> None:
    """600 images in chunks of 256, image 300 truncated: its chunk fails, the others succeed, and the job ends
    PARTIAL with one dead letter; a retry runs it again, it fails again (the image is still truncated), and
    its dead letter counts 2 attempts. Each end is told to the callback."""
    api = stack.apis[0]
    instances = [b64(CORRUPT if index == 300 else GOOD) for index in range(600)]
    dead_before = metric(api, "ovms_job_dead_letters_total")
    with Receiver() as receiver:
        job_id = submit(
            api, {"model": "image_u8", "instances": instances, "dead_letters": True, "callback_url": receiver.url}
        )
        ended = wait_for_end(f"{api.rest_url}/v1/jobs/{job_id}", 120)
        assert (ended["state"], ended["progress"]) == ("PARTIAL", {"done": 344, "total": 600, "failed": 256}), ended
        assert ended["dead_letters"] == [{"chunk": 1, "samples": [256, 512], "error": CORRUPT_ERROR, "attempts": 1}]
        assert requests.get(f"{api.rest_url}/v1/jobs/{job_id}/result", timeout=10).status_code == 409
        [told] = receiver.wait_for(job_id)
        assert told.document()["state"] == "PARTIAL" and told.document()["counts"]["failed_chunks"] == 1

        listing = ovms("jobs", "--url", api.rest_url, "--failed").stdout.splitlines()
        assert listing[0].split() == ["ID", "CREATED", "MODEL", "STATE", "DONE/TOTAL", "FAILED"], listing
        [row] = [line for line in listing if line.startswith(job_id)]
        assert row.split()[3:] == ["image_u8", "v1", "PARTIAL", "344/600", "256"], row
        assert all(line.split()[-1] != "0" for line in listing[1:]), "jobs with failed chunks only"
        letters = ovms("jobs", "--url", api.rest_url, "--failed", job_id).stdout.splitlines()
        assert letters[0].split() == ["CHUNK", "SAMPLES", "ATTEMPTS", "ERROR"], letters
        assert letters[1].split(maxsplit=3) == ["1", "256-511", "1", CORRUPT_ERROR], letters

        retried = ovms("retry", job_id, "--url", api.rest_url)
        assert retried.returncode == 0 and retried.stdout.split()[:1] == [job_id], retried.stderr
        again = until(api, job_id, lambda job: job["dead_letters"] and job["dead_letters"][0]["attempts"] == 2)
        assert again["state"] == "PARTIAL" and again["progress"]["done"] == 344, again
        _, second = receiver.wait_for(job_id, 2)
        assert (second.document()["delivery"], second.document()["state"]) == (f"{job_id}.2", "PARTIAL")
    assert metric(api, "ovms_job_dead_letters_total") == dead_before + 2
    line = ovms("retry", "0" * 32, "--url", api.rest_url).stderr.strip()
    assert line.startswith(f"ovms retry: 404 Job {'0' * 32} is not found"), line


@dataclass(frozen=True)
class ResnetStack:
    api: OvmsProcess
    worker: OvmsProcess  # the first one
    start_worker: Callable[[], OvmsProcess]
    redis_url: str


@pytest.fixture
def resnet_stack(models_dir: Path, tmp_path: Path, resnet_redis_url: str) -> Iterator[ResnetStack]:
    """An api and a worker serving resnet on a Redis of their own, and a way to start more workers; every
    process is stopped after."""
    config = {"model_config_list": [{"config": {"name": "resnet", "base_path": str(models_dir / "resnet")}}]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with Fleet(["--config_path", str(tmp_path / "config.json"), "--broker_url", resnet_redis_url]) as started:
        worker = started.start_worker()
        yield ResnetStack(started.start_api(), worker, started.start_worker, resnet_redis_url)


def kill_holding(worker: OvmsProcess, client: redis.Redis, task_id: str | None = None) -> str:
    """SIGKILL a worker while it holds a chunk (`task_id`, or any) it has not finished: frozen first, so that
    the test knows it held it unfinished. The chunk's task id."""
    taken = job_taken_key(job_queue_for(queue_for("CPU", "resnet")), worker.worker_id())
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, f"the worker never held chunk {task_id or '(any)'} unfinished"
        worker.signal(signal.SIGSTOP)
        held = [QueuedChunk.from_json(raw).task_id for raw in client.lrange(taken, 0, -1)]
        if held and task_id in (None, held[0]) and not client.exists(app.backend.get_key_for_task(held[0])):
            worker.signal(signal.SIGKILL)
            return held[0]
        worker.signal(signal.SIGCONT)
        time.sleep(0.005)


def test_a_chunk_whose_workers_die_twice_is_a_dead_letter_and_a_retry_completes_the_job(
    resnet_stack: ResnetStack, tmp_path: Path
) -> None:
    """`ovms submit --dead_letters --wait`: a chunk whose worker is killed is queued again once; killed again
    with the next worker, it is a dead letter (without dead letters the job would fail) while the other
    chunks finish. A retry runs it on a third worker, and the job ends SUCCESS with every sample as a job
    that lost nothing computes it."""
    api = resnet_stack.api
    configure(resnet_stack.redis_url)
    client = redis.Redis.from_url(resnet_stack.redis_url)
    photos = np.random.default_rng(0).random((12, 3, 224, 224), dtype=np.float32)  # 4 chunks of 3
    np.save(tmp_path / "x.npy", photos)
    waiting = subprocess.Popen(
        ovms_command("submit", "--url", api.rest_url, "--model", "resnet", "--input", str(tmp_path / "x.npy"),
                     "--dead_letters", "--wait", "--timeout", "600"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # the job id before it waits
    )  # fmt: skip
    try:
        assert waiting.stdout is not None
        job_id = waiting.stdout.readline().strip()
        lost = kill_holding(resnet_stack.worker, client)
        kill_holding(resnet_stack.start_worker(), client, lost)  # queued again at the head: taken first
        resnet_stack.start_worker()
        _, stderr = waiting.communicate(timeout=300)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, stderr
    lost_error = f"Unavailable: {WORKER_LOST}"
    assert f"ovms submit: job {job_id} ended PARTIAL: 1 chunk(s), 3 samples failed: {lost_error}" in stderr, stderr
    [letter] = status(api, job_id)["dead_letters"]
    assert letter["error"] == lost_error and letter["attempts"] == 1, letter

    assert ovms("retry", job_id, "--url", api.rest_url).returncode == 0
    assert wait_for_end(f"{api.rest_url}/v1/jobs/{job_id}", 120)["state"] == "SUCCESS"
    clean = ovms("submit", "--url", api.rest_url, "--model", "resnet", "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "clean.npy"))  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    retried = requests.get(f"{api.rest_url}/v1/jobs/{job_id}/result?format=npy", timeout=60)
    outputs = np.load(io.BytesIO(retried.content), allow_pickle=False)
    np.testing.assert_allclose(outputs, np.load(tmp_path / "clean.npy"), rtol=1e-5, atol=1e-6)
