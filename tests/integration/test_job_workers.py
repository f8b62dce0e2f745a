"""Async jobs across worker faults: a worker that stalls past its heartbeat and is killed later, and a
version rollout in the middle of a job."""

from __future__ import annotations

import io
import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import requests

from tasks.job_queue import TAKERS_KEY
from tests.support.jobs import post_npy, wait_for_end
from tests.support.stack import Fleet, OvmsProcess, private_redis, worker_and_api

own_redis_url = pytest.fixture(name="own_redis_url")(private_redis)  # no other test's worker may take its chunks


@pytest.fixture
def job_stack(small_config, own_redis_url) -> Iterator[Fleet]:
    """Workers and an api on a private Redis, started as the test needs; all stopped after."""
    with Fleet(["--config_path", str(small_config), "--broker_url", own_redis_url]) as started:
        yield started


def _holding(client: redis.Redis) -> list[bytes]:
    """The taken lists that hold a chunk now."""
    return [key for key in client.scan_iter(match="*:taken:*") if client.llen(key)]


def _until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.01)


def _outputs(api: OvmsProcess, status_url: str) -> dict[str, np.ndarray]:
    reply = requests.get(f"{api.rest_url}{status_url}/result?format=npz", timeout=30)
    return dict(np.load(io.BytesIO(reply.content)))


def test_a_worker_that_stalled_once_and_dies_later_loses_no_chunk(job_stack, own_redis_url):
    """SIGSTOP past the heartbeat expiry: an api takes its chunk back and forgets its (empty) taken list.
    After SIGCONT it takes chunks again; killed holding one, that chunk is still recovered at once."""
    client = redis.Redis.from_url(own_redis_url)
    stalled = job_stack.start_worker()
    api = job_stack.start_api()
    images = np.random.default_rng(0).random((24, 3, 224, 224), dtype=np.float32)  # resnet: 8 chunks

    first = post_npy(api.rest_url, "resnet", images).json()["status_url"]
    _until(lambda: _holding(client), 30, "the worker taking a chunk")
    stalled.signal(signal.SIGSTOP)
    _until(lambda: not client.smembers(TAKERS_KEY), 15, "an api forgetting the stalled worker's taken list")
    stalled.signal(signal.SIGCONT)
    assert wait_for_end(api.rest_url + first, 60)["state"] == "SUCCESS"
    expected = _outputs(api, first)

    second = post_npy(api.rest_url, "resnet", images).json()["status_url"]
    _until(lambda: _holding(client), 30, "the resumed worker taking a chunk")
    stalled.signal(signal.SIGKILL)
    job_stack.start_worker()
    status = wait_for_end(api.rest_url + second, 30)
    assert status["state"] == "SUCCESS", status
    for name, values in _outputs(api, second).items():
        np.testing.assert_allclose(values, expected[name], rtol=1e-5, atol=1e-6)


@pytest.fixture
def one_version_config(models_dir, tmp_path) -> Path:
    """`versioned` with only its version 1 (y = x + 1), served by the default policy (the latest)."""
    shutil.copytree(models_dir / "versioned" / "1", tmp_path / "versioned" / "1")
    config = {"model_config_list": [{"config": {"name": "versioned", "base_path": str(tmp_path / "versioned")}}]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_a_job_that_named_no_version_follows_a_version_rollout(one_version_config, models_dir, own_redis_url):
    """Version 2 (y = x * 2) appears while the job runs and version 1 is unloaded: the job that named
    no version ends SUCCESS, each sample computed by one of them, and its status lists both."""
    args = ["--config_path", str(one_version_config), "--broker_url", own_redis_url]
    with worker_and_api(args) as (_, api):
        samples = np.random.default_rng(0).random((1_000_000, 4), dtype=np.float32) + 2  # 4000 chunks
        status_url = post_npy(api.rest_url, "versioned", samples).json()["status_url"]
        shutil.copytree(models_dir / "versioned" / "2", one_version_config.parent / "versioned" / "2")
        status = wait_for_end(api.rest_url + status_url, 90)
        assert status["state"] == "SUCCESS", status
        assert status["versions"] == [1, 2] and status["version"] == 1 and not status["pinned"], status
        outputs = _outputs(api, status_url)["y"]
        by_v1, by_v2 = outputs == samples + 1, outputs == samples * 2
        assert (by_v1 | by_v2).all(), "every sample is computed by one version"
        assert by_v1.all(axis=1).any() and by_v2.all(axis=1).any()
