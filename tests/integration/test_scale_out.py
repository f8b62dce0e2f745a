"""Two api processes and two workers on one Redis, all separate processes; and Flower watching them."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tasks.broker import free_port
from tests.support.stack import Fleet, OvmsProcess, private_redis, start_ovms, wait_for_ready, wait_for_workers

redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)


@pytest.fixture(scope="module")
def cluster(small_config: Path, redis_url: str) -> Iterator[tuple[list[OvmsProcess], list[OvmsProcess]]]:
    with Fleet(["--config_path", str(small_config), "--broker_url", redis_url]) as started:
        for _ in range(2):
            started.start_worker()
        for _ in range(2):
            started.start_api()
        yield started.apis, started.workers


def _predict(api: OvmsProcess, session: requests.Session) -> requests.Response:
    return session.post(f"{api.rest_url}/v1/models/versioned:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=20)


def _spread(apis: list[OvmsProcess], requests_per_api: int = 48) -> list[requests.Response]:
    session = requests.Session()
    targets = [api for api in apis for _ in range(requests_per_api)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda api: _predict(api, session), targets))


def test_both_api_nodes_answer_and_both_workers_take_a_share(cluster):
    apis, _ = cluster
    for api in apis:
        wait_for_workers(api, 2)
        wait_for_ready(api)  # counted live from their first heartbeat; ready once their models are loaded
    served: dict[str, int] = {}
    for _ in range(5):  # coalescing may put a small burst on one worker: a few rounds make both show
        replies = _spread(apis)
        assert all(reply.status_code == 200 for reply in replies), [r.text for r in replies if r.status_code != 200]
        for reply in replies:
            served[reply.headers["X-Ovms-Worker"]] = served.get(reply.headers["X-Ovms-Worker"], 0) + 1
        if len(served) == 2:
            break
    assert len(served) == 2, f"one worker served everything: {served}"


def test_killing_one_worker_leaves_the_other_serving(cluster):
    apis, workers = cluster
    victim, survivor = workers
    victim.signal(signal.SIGKILL)
    for api in apis:
        wait_for_workers(api, 1, timeout_s=10)
    replies = _spread(apis, requests_per_api=16)
    assert all(reply.status_code == 200 for reply in replies)
    assert {reply.headers["X-Ovms-Worker"] for reply in replies} == {survivor.worker_id()}


def test_flower_shows_predict_tasks_by_model(small_config: Path, redis_url: str):
    port = free_port()
    env = {"FLOWER_USER": "ops", "FLOWER_PASSWORD": "s3cret"}
    process = start_ovms(
        ["--config_path", str(small_config), "--broker_url", redis_url, "--flower_port", str(port)], env=env
    )
    try:
        flower = f"http://localhost:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{flower}/healthcheck", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401
        time.sleep(2)  # let Flower's event consumer attach before the tasks it should see
        session = requests.Session()
        for _ in range(3):
            assert _predict(process, session).status_code == 200
        names: set[str] = set()
        deadline = time.monotonic() + 20
        while "predict versioned v2" not in names and time.monotonic() < deadline:
            tasks = requests.get(f"{flower}/api/tasks", auth=("ops", "s3cret"), timeout=10).json()
            names = {task.get("name") for task in tasks.values()}
            time.sleep(0.5)
        assert "predict versioned v2" in names, names
    finally:
        process.stop()
