"""Asynchronous jobs through the REST API and the `ovms submit | jobs | result` client."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import redis
import requests

from tests.support.stack import REPO, private_redis, start_ovms


def _digits(models_dir, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.load(models_dir / "data" / "imgs.npy")
    labels = np.load(models_dir / "data" / "labels.npy")
    repeats = -(-count // len(images))
    return np.tile(images, (repeats, 1))[:count], np.tile(labels, repeats)[:count]


def _ovms(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "api.main", *args], capture_output=True, text=True, cwd=REPO, timeout=300
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
    assert status["progress"] == {"done": 2, "total": 2}
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
    worker = start_ovms(args, role="worker")
    first = start_ovms(args, role="api")
    try:
        reply = requests.post(
            f"{first.rest_url}/v1/jobs",
            json={"model": "versioned", "version": 2, "instances": [[1, 2, 3, 4]] * 600},
            timeout=30,
        )
        job_url = reply.json()["status_url"]
        first.stop()
        second = start_ovms(args, role="api")
        try:
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
        finally:
            second.stop()
    finally:
        worker.stop()


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
