"""Asynchronous jobs through the REST API and the `ovms submit | jobs | result` client."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis
import requests

from tasks import job_backlog
from tests.support.jobs import npy_bytes, post_npy, wait_for_end
from tests.support.stack import (
    GRPC_READY,
    REPO,
    REST_READY,
    Fleet,
    OvmsProcess,
    ovms_command,
    private_redis,
    start_ovms,
)


def _digits(models_dir, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.load(models_dir / "data" / "imgs.npy")
    labels = np.load(models_dir / "data" / "labels.npy")
    repeats = -(-count // len(images))
    return np.tile(images, (repeats, 1))[:count], np.tile(labels, repeats)[:count]


def _ovms(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ovms", *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_ovms_submit_wait_runs_10000_digits_with_progress(server, models_dir, tmp_path):
    images, labels = _digits(models_dir, 10_000)
    np.save(tmp_path / "imgs.npy", images)
    output = tmp_path / "out.npy"
    done = _ovms(
        "submit",
        "--url",
        server.rest_url,
        "--model",
        "digits",
        "--input",
        str(tmp_path / "imgs.npy"),
        "--wait",
        "--output",
        str(output),
    )
    assert done.returncode == 0, done.stderr
    assert "10000/10000" in done.stderr, "the progress bar reaches the total"
    predictions = np.load(output)
    assert predictions.shape == (10_000, 10)
    assert (predictions.argmax(axis=1) == labels).mean() >= 0.95
    job_id = done.stdout.split()[0]
    listing = _ovms("jobs", "--url", server.rest_url)
    assert job_id in listing.stdout and "SUCCESS" in listing.stdout
    fetched = _ovms("result", job_id, "--url", server.rest_url, "--output", str(tmp_path / "again.npy"))
    assert fetched.returncode == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), predictions)


def test_json_jobs_report_states_timestamps_and_results_in_every_format(server):
    reply = requests.post(
        f"{server.rest_url}/v1/jobs",
        json={"model": "multi", "inputs": {"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}},
        timeout=10,
    )
    assert reply.status_code == 202 and reply.headers["Location"] == reply.json()["status_url"]
    status_url = server.rest_url + reply.json()["status_url"]
    deadline = time.monotonic() + 30
    while (status := requests.get(status_url, timeout=5).json())["state"] != "SUCCESS":
        assert status["state"] in ("PENDING", "STARTED") and time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["progress"] == {"done": 2, "total": 2, "failed": 0}
    assert status["created"] <= status["finished"] + 1
    result = requests.get(status_url + "/result", timeout=5).json()["outputs"]
    assert result == {"sum": [[6.0, 8.0], [10.0, 12.0]], "product": [[5.0, 12.0], [21.0, 32.0]]}
    npz = np.load(io.BytesIO(requests.get(status_url + "/result?format=npz", timeout=5).content))
    np.testing.assert_array_equal(npz["sum"], [[6.0, 8.0], [10.0, 12.0]])


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"instances": [[1, 2, 3, 4]]}, 400),
        ({"model": "nope", "instances": [[1]]}, 404),
        ({"model": "versioned", "instances": [[1, 2, 3]]}, 400),
    ],
)
def test_bad_jobs_are_refused(server, body, status):
    assert requests.post(f"{server.rest_url}/v1/jobs", json=body, timeout=10).status_code == status


def test_a_pickled_upload_is_refused(server):
    payload = io.BytesIO()
    np.save(payload, np.array([object()], dtype=object), allow_pickle=True)
    reply = requests.post(
        f"{server.rest_url}/v1/jobs?model=digits",
        data=payload.getvalue(),
        headers={"Content-Type": "application/x-npy"},
        timeout=10,
    )
    assert reply.status_code == 400 and "Invalid .npy" in reply.json()["error"]


def test_unknown_jobs_and_unfinished_results(server):
    assert requests.get(f"{server.rest_url}/v1/jobs/nope", timeout=5).status_code == 404


own_redis_url = pytest.fixture(name="own_redis_url")(private_redis)  # no other test's worker may take its chunks


def test_a_job_survives_an_api_restart_and_can_be_cancelled(small_config, own_redis_url):
    args = ["--config_path", str(small_config), "--broker_url", own_redis_url]
    with Fleet(args) as started:
        worker = started.start_worker()
        first = started.start_api()
        reply = requests.post(
            f"{first.rest_url}/v1/jobs",
            json={"model": "versioned", "version": 2, "instances": [[1, 2, 3, 4]] * 600},
            timeout=30,
        )
        job_url = reply.json()["status_url"]
        first.stop()
        second = started.start_api()
        deadline = time.monotonic() + 30
        while requests.get(second.rest_url + job_url, timeout=5).json()["state"] != "SUCCESS":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        outputs = requests.get(second.rest_url + job_url + "/result", timeout=10).json()["outputs"]["y"]
        assert len(outputs) == 600 and outputs[0] == [2.0, 4.0, 6.0, 8.0]
        assert requests.delete(second.rest_url + job_url, timeout=10).json()["state"] == "SUCCESS"

        worker.signal(signal.SIGSTOP)  # a job that cannot start yet
        pending = requests.post(
            f"{second.rest_url}/v1/jobs", json={"model": "versioned", "instances": [[1] * 4]}, timeout=10
        ).json()["status_url"]
        assert requests.delete(second.rest_url + pending, timeout=10).json()["state"] == "REVOKED"
        worker.signal(signal.SIGCONT)
        time.sleep(1.0)
        assert requests.get(second.rest_url + pending, timeout=5).json()["state"] == "REVOKED"
        assert requests.get(second.rest_url + pending + "/result", timeout=5).status_code == 409


def test_jobs_and_their_results_expire_after_job_ttl_s(small_config, own_redis_url):
    server = start_ovms(["--config_path", str(small_config), "--broker_url", own_redis_url, "--job_ttl_s", "120"])
    try:
        reply = requests.post(
            f"{server.rest_url}/v1/jobs", json={"model": "versioned", "instances": [[1] * 4]}, timeout=10
        ).json()
        deadline = time.monotonic() + 20
        while requests.get(server.rest_url + reply["status_url"], timeout=5).json()["state"] != "SUCCESS":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        store = redis.Redis.from_url(own_redis_url)
        assert 100 < store.ttl(f"ovms:job:{reply['id']}") <= 120
        (chunk,) = json.loads(store.get(f"ovms:job:{reply['id']}"))["chunks"]
        assert 100 < store.ttl(f"celery-task-meta-{chunk['task']}") <= 120
    finally:
        server.stop()


def _status(status_url: str) -> dict:
    return requests.get(status_url, timeout=10).json()


def test_a_chunk_whose_request_fails_fails_the_job(server):
    """The attacker's upload: `a` has 3 rows, `b` 700. Refused at once (400), or the job ends FAILURE
    with the chunk's error — never STARTED for ever."""
    upload = io.BytesIO()
    np.savez(upload, a=np.ones((3, 2), np.float32), b=np.ones((700, 2), np.float32))
    reply = requests.post(
        f"{server.rest_url}/v1/jobs?model=multi",
        data=upload.getvalue(),
        headers={"Content-Type": "application/x-npz"},
        timeout=30,
    )
    if reply.status_code == 400:
        return
    assert reply.status_code == 202, reply.text
    status = wait_for_end(server.rest_url + reply.json()["status_url"], 30)
    assert status["state"] == "FAILURE" and status["errors"], status


@pytest.fixture
def stopped_worker_stack(small_config, own_redis_url) -> Iterator:
    """An api (with the given extra flags) and one worker, frozen (SIGSTOP) until the test resumes it."""
    with Fleet(["--config_path", str(small_config), "--broker_url", own_redis_url]) as started:

        def _start(*flags: str) -> tuple:
            worker = started.start_worker()
            api = started.start_api(*flags)
            worker.signal(signal.SIGSTOP)
            return api, worker

        yield _start


def test_a_chunk_past_its_deadline_fails_the_job_and_submit_wait_ends(stopped_worker_stack, tmp_path):
    api, worker = stopped_worker_stack("--job_timeout_s", "2")
    np.save(tmp_path / "x.npy", np.ones((600, 4), np.float32))
    started = time.monotonic()
    submit = subprocess.Popen(
        [sys.executable, "-m", "ovms", "submit", "--url", api.rest_url, "--model", "versioned",
         "--input", str(tmp_path / "x.npy"), "--wait"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = submit.communicate(timeout=30)
    finally:
        submit.kill()
    took = time.monotonic() - started
    assert submit.returncode != 0 and "FAILURE" in stderr, stderr
    assert "--job_timeout_s" in stderr, stderr
    assert took < 15, f"ovms submit --wait took {took:.1f} s to give up"
    print(f"ovms submit --wait of a job with --job_timeout_s 2 exited {submit.returncode} after {took:.1f} s")

    worker.signal(signal.SIGCONT)  # the worker now takes the expired chunks: each fails with its deadline
    status_url = f"{api.rest_url}/v1/jobs/{stdout.split()[0]}"
    deadline = time.monotonic() + 30
    while "Deadline exceeded" not in " ".join((status := _status(status_url))["errors"]):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["state"] == "FAILURE" and status["progress"]["done"] == 0, status


def test_job_size_and_backlog_caps(stopped_worker_stack, tmp_path):
    api, worker = stopped_worker_stack("--job_max_mb", "1", "--job_backlog_mb", "2")
    too_big = post_npy(api.rest_url, "versioned", np.ones((70_000, 4), np.float32))  # 1.07 MiB of tensors
    assert too_big.status_code == 413 and "--job_max_mb" in too_big.json()["error"], too_big.text
    np.save(tmp_path / "x.npy", np.ones((10, 4), np.float32))
    waited = _ovms("submit", "--url", api.rest_url, "--model", "versioned", "--input", str(tmp_path / "x.npy"),
                   "--wait", "--timeout", "1")  # fmt: skip
    assert waited.returncode == 1 and "still PENDING after 1 s (--timeout)" in waited.stderr, waited.stderr

    rows = np.ones((40_000, 4), np.float32)  # 0.61 MiB each: three fit in 2 MiB, the fourth does not
    accepted = [post_npy(api.rest_url, "versioned", rows) for _ in range(3)]
    assert [reply.status_code for reply in accepted] == [202] * 3, [reply.text for reply in accepted]
    refused = post_npy(api.rest_url, "versioned", rows)
    assert refused.status_code == 429 and "--job_backlog_mb" in refused.json()["error"], refused.text
    assert int(refused.headers["Retry-After"]) >= 1

    worker.signal(signal.SIGCONT)  # the backlog drains: jobs are accepted again
    for reply in accepted:
        assert wait_for_end(api.rest_url + reply.json()["status_url"], 60)["state"] == "SUCCESS"
    assert post_npy(api.rest_url, "versioned", rows).status_code == 202


@pytest.fixture
def digits_and_resnet_config(models_dir, tmp_path) -> Path:
    path = tmp_path / "config.json"
    models = [{"config": {"name": name, "base_path": str(models_dir / name)}} for name in ("digits", "resnet")]
    path.write_text(json.dumps({"model_config_list": models}))
    return path


def test_a_job_backlog_does_not_push_predicts_past_their_deadline(digits_and_resnet_config, own_redis_url, models_dir):
    """200 resnet images (a minute of inference on a busy box) and 200,000 digits samples queued as jobs,
    then digits predicts with a 5 s deadline, one after another: each must be answered in time. One
    Celery thread per worker, so that job work holding it (as chunks on the predict queues did) would
    hold every predict. The resnet job is then cancelled: its chunks are dropped and the backlog empties."""
    args = ["--config_path", str(digits_and_resnet_config), "--broker_url", own_redis_url, "--worker_concurrency", "1"]
    server = start_ovms(args)
    try:
        images, _ = _digits(models_dir, 200_000)
        photos = np.random.default_rng(2).random((200, 3, 224, 224), dtype=np.float32)
        jobs = [post_npy(server.rest_url, "resnet", photos), post_npy(server.rest_url, "digits", images)]
        assert [reply.status_code for reply in jobs] == [202, 202], [reply.text for reply in jobs]
        latencies, codes = [], []
        for index in range(40):
            started = time.monotonic()
            reply = requests.post(
                f"{server.rest_url}/v1/models/digits:predict",
                json={"instances": images[index : index + 1].tolist()},
                headers={"X-Request-Timeout": "5"},
                timeout=30,
            )
            latencies.append(time.monotonic() - started)
            codes.append(reply.status_code)
            time.sleep(0.05)
        p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
        print(f"digits predicts beside a job backlog: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        assert codes == [200] * len(codes), codes
        resnet_url, digits_url = (server.rest_url + reply.json()["status_url"] for reply in jobs)
        assert wait_for_end(digits_url, 120)["state"] == "SUCCESS"
        deadline = time.monotonic() + 60
        while _status(resnet_url)["progress"]["done"] == 0:
            assert time.monotonic() < deadline, "the resnet job made no progress"
            time.sleep(0.2)
        assert requests.delete(resnet_url, timeout=10).json()["state"] in ("REVOKED", "SUCCESS")
        store = redis.Redis.from_url(own_redis_url)
        deadline = time.monotonic() + 60
        while int(store.get(job_backlog.TOTAL) or 0) > 0:  # the cancelled job's chunks are dropped unrun
            assert time.monotonic() < deadline, "the job backlog did not drain"
            time.sleep(0.2)
    finally:
        server.stop()


def test_the_job_backlog_counts_each_chunk_once_and_heals_at_deadlines(own_redis_url):
    store = redis.Redis.from_url(own_redis_url)
    later = time.time() + 60
    assert job_backlog.admit(store, [("a-0", 600, 6), ("a-1", 400, 4)], later, 1500) is None
    assert job_backlog.admit(store, [("b-0", 600, 6)], later, 1500) == ("bytes", 1000), "full: the bytes queued"
    job_backlog.release(store, ["a-0"])
    job_backlog.release(store, ["a-0"])  # a chunk ends once, however often it is reported
    assert job_backlog.admit(store, [("b-0", 600, 6)], later, 1500) is None
    assert int(store.get(job_backlog.TOTAL)) == 1000
    assert job_backlog.admit(store, [("c-0", 900, 9)], time.time() - 1, 2000) is None
    assert job_backlog.admit(store, [("d-0", 900, 9)], later, 2000) is None, "c-0 dropped out at its deadline"
    assert int(store.get(job_backlog.TOTAL)) == 1900


def _post_npz(rest_url: str, model: str, data: bytes) -> requests.Response:
    return requests.post(
        f"{rest_url}/v1/jobs?model={model}", data=data, headers={"Content-Type": "application/x-npz"}, timeout=60
    )


def _compressed_npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_an_npz_bomb_is_refused_from_its_headers_without_unpacking(stopped_worker_stack):
    """A 64 KB .npz that unpacks to 64 MiB (within --max_request_mb, beyond --job_max_mb), posted 12 times
    at once: each is 413 from its headers, and the api's memory does not grow by even one unpacked copy."""
    api, _ = stopped_worker_stack("--max_request_mb", "64", "--job_max_mb", "1")
    metadata = requests.get(f"{api.rest_url}/v1/models/versioned/metadata", timeout=10).json()
    (input_name,) = metadata["metadata"]["signature_def"]["signatureDef"]["serving_default"]["inputs"]
    bomb = _compressed_npz(**{input_name: np.zeros(((64 << 20) // 16 - 64, 4), np.float32)})
    assert len(bomb) < 100_000
    process = psutil.Process(api.process.pid)
    base, peak, sending = process.memory_info().rss, [0], True

    def watch() -> None:
        while sending:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: _post_npz(api.rest_url, "versioned", bomb), range(12)))
    finally:
        sending = False
        watcher.join()
    took = time.monotonic() - started
    assert [reply.status_code for reply in replies] == [413] * 12, [reply.text[:200] for reply in replies]
    assert "--job_max_mb" in replies[0].json()["error"]
    grown_mib = (peak[0] - base) / 2**20
    print(f"\n12 npz bombs (64 KB -> 64 MiB): 413 in {took:.2f} s, api RSS grew {grown_mib:.0f} MiB")
    assert grown_mib < 48, f"the api grew by {grown_mib:.0f} MiB: the bombs were unpacked"

    honest = np.random.default_rng(0).random((60_000, 4), dtype=np.float32)  # 0.9 MiB, within --job_max_mb
    accepted = _post_npz(api.rest_url, "versioned", _compressed_npz(**{input_name: honest}))
    assert accepted.status_code == 202, accepted.text


@pytest.mark.parametrize(
    ("model", "upload"),
    [
        ("digits", npy_bytes(np.zeros((0, 64), np.float32))),
        ("multi", _compressed_npz(a=np.zeros((0, 2), np.float32), b=np.zeros((0, 2), np.float32))),
    ],
    ids=["npy", "npz"],
)
def test_a_job_of_zero_samples_is_refused(server, model, upload):
    reply = _post_npz(server.rest_url, model, upload)  # the server tells .npy from .npz by their bytes
    assert reply.status_code == 400 and "at least one sample" in reply.json()["error"], reply.text


def _submit_wait(rest_url: str, upload: Path, timeout_s: float) -> subprocess.Popen:
    """`ovms submit --wait` in the background, once it printed its job id."""
    waiting = subprocess.Popen(
        [sys.executable, "-m", "ovms", "submit", "--url", rest_url, "--model", "versioned",
         "--input", str(upload), "--wait", "--timeout", str(timeout_s)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # the job id before it waits
    )  # fmt: skip
    assert waiting.stdout is not None and len(waiting.stdout.readline().strip()) == 32
    return waiting


def test_submit_wait_polls_through_an_api_restart_and_gives_up_in_one_line(
    stopped_worker_stack, small_config, own_redis_url, tmp_path
):
    api, worker = stopped_worker_stack()
    np.save(tmp_path / "x.npy", np.ones((10, 4), np.float32))
    waiting = _submit_wait(api.rest_url, tmp_path / "x.npy", 120)
    api.stop()  # the api goes away while the job waits; another one comes back on the same ports
    time.sleep(1)
    args = ["--config_path", str(small_config), "--broker_url", own_redis_url]
    command = ovms_command("api", *args, "--port", str(api.grpc_port), "--rest_port", str(api.rest_port))
    again = OvmsProcess(command, api.grpc_port, api.rest_port, [GRPC_READY, REST_READY])
    try:
        worker.signal(signal.SIGCONT)
        _, stderr = waiting.communicate(timeout=60)
        assert waiting.returncode == 0 and "10/10" in stderr, stderr

        worker.signal(signal.SIGSTOP)
        gives_up = _submit_wait(again.rest_url, tmp_path / "x.npy", 2)
    finally:
        again.stop()
    started = time.monotonic()
    _, stderr = gives_up.communicate(timeout=60)
    took = time.monotonic() - started
    last = stderr.strip().splitlines()[-1]
    assert gives_up.returncode == 1 and "Traceback" not in stderr, stderr
    assert last.startswith(f"ovms submit: no answer from {again.rest_url}: ConnectionError"), stderr
    print(f"\nsubmit --wait --timeout 2 against a stopped api: exit 1 after {took:.1f} s: {last[:100]}")


def test_a_job_of_zero_samples_kept_from_before_has_no_result_but_no_500(server, redis_url):
    """As an older api queued it (no chunks): it is SUCCESS, and its result is a 409 in every format."""
    job_id = "0" * 32
    record = {"model": "digits", "version": 1, "total": 0, "queue": "q", "created": time.time(),
              "deadline": time.time() + 60, "chunks": [], "revoked": False, "owner": None}  # fmt: skip
    redis.Redis.from_url(redis_url).set(f"ovms:job:{job_id}", json.dumps(record), ex=60)
    assert _status(f"{server.rest_url}/v1/jobs/{job_id}")["state"] == "SUCCESS"
    for form in ("json", "npy", "npz"):
        reply = requests.get(f"{server.rest_url}/v1/jobs/{job_id}/result?format={form}", timeout=10)
        assert reply.status_code == 409 and "no samples" in reply.json()["error"], reply.text
