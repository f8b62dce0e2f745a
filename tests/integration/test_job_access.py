"""Who may see a job, how its result is sent, and what Flower shows: bearer tokens own their jobs, job ids
are checked before they reach a Redis key, results stream chunk by chunk, and Flower without credentials
stays on 127.0.0.1 and never shows a job id."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis
import requests

from tasks.broker import free_port
from tests.support.jobs import post_npy
from tests.support.stack import OvmsProcess, child_named, listening_addresses, private_redis, start_ovms

TOKEN_A = "tok-a-5d0c2e7f41"
TOKEN_B = "tok-b-91e3a6c0d2"
LARGE_JOB_ROWS = 100_000  # digits: a 26 MB upload, a 4 MB result, ~20 MB as JSON
DOWNLOADS = 4
DATATABLE_QUERY = {"draw": 1, "start": 0, "length": 1000, "order[0][column]": 0, "columns[0][data]": "name"}

own_redis_url = pytest.fixture(name="own_redis_url", scope="module")(private_redis)


@pytest.fixture(scope="module")
def stack(models_dir: Path, own_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvmsProcess]:
    """`ovms` with two bearer tokens, serving digits and multi, and Flower started without credentials."""
    directory = tmp_path_factory.mktemp("job-access")
    (directory / "tokens").write_text(f"{TOKEN_A}\n{TOKEN_B}\n")
    config = {
        "model_config_list": [{"config": {"name": n, "base_path": str(models_dir / n)}} for n in ("digits", "multi")]
    }
    (directory / "config.json").write_text(json.dumps(config))
    process = start_ovms(
        [
            "--config_path", str(directory / "config.json"), "--broker_url", own_redis_url,
            "--auth_token_file", str(directory / "tokens"), "--flower_port", str(free_port()),
        ],
        env={"FLOWER_USER": "", "FLOWER_PASSWORD": ""},
    )  # fmt: skip
    yield process
    process.stop()


def _as(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def _submit(stack: OvmsProcess, session: requests.Session, rows: int = 4) -> str:
    images = np.load(Path(__file__).resolve().parents[2] / "models" / "data" / "imgs.npy")
    samples = np.resize(images, (rows, images.shape[1]))
    reply = post_npy(stack.rest_url, "digits", samples, session, timeout_s=120)
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]


def _wait_for_success(stack: OvmsProcess, session: requests.Session, job_id: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while (status := session.get(f"{stack.rest_url}/v1/jobs/{job_id}", timeout=10).json())["state"] != "SUCCESS":
        assert status["state"] in ("PENDING", "STARTED") and time.monotonic() < deadline, status
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------- ownership


def test_a_token_sees_lists_downloads_and_cancels_only_its_own_jobs(stack):
    alice, bob = _as(TOKEN_A), _as(TOKEN_B)
    alices = _submit(stack, alice)
    bobs = _submit(stack, bob)
    _wait_for_success(stack, alice, alices)
    jobs = f"{stack.rest_url}/v1/jobs"

    assert [job["id"] for job in bob.get(jobs, timeout=10).json()["jobs"]] == [bobs]
    assert alices in [job["id"] for job in alice.get(jobs, timeout=10).json()["jobs"]]
    assert bobs not in [job["id"] for job in alice.get(jobs, timeout=10).json()["jobs"]]

    unknown = "0" * 32
    for method, suffix in (
        ("GET", ""), ("GET", "/result"), ("DELETE", ""), ("GET", "/result?format=npz"), ("POST", "/retry")
    ):  # fmt: skip
        reply = bob.request(method, f"{jobs}/{alices}{suffix}", timeout=10)
        stranger = bob.request(method, f"{jobs}/{unknown}{suffix}", timeout=10)
        assert reply.status_code == stranger.status_code == 404, (method, suffix, reply.text)
        same_words = stranger.json()["error"].replace(unknown, alices)
        assert reply.json() == {"error": same_words}, "the same answer as for no such job"
    assert alice.get(f"{jobs}/{alices}", timeout=10).json()["state"] == "SUCCESS", "bob's DELETE changed nothing"
    assert alice.get(f"{jobs}/{alices}/result", timeout=30).status_code == 200
    retried = alice.post(f"{jobs}/{alices}/retry", timeout=10)
    assert retried.status_code == 409 and "no dead letters" in retried.json()["error"], retried.text


def test_job_records_hold_an_owner_but_never_a_token(stack, own_redis_url):
    job_id = _submit(stack, _as(TOKEN_A))
    record = redis.Redis.from_url(own_redis_url).get(f"ovms:job:{job_id}")
    assert TOKEN_A.encode() not in record and json.loads(record)["owner"]


@pytest.mark.parametrize(
    "job_id",
    [
        "x:claims",
        "{job}:claims",  # a hash while the job's chunks run: a GET on it was a 500 WRONGTYPE
        "..%2F..%2Fovms:jobs",
        "a" * 1024,
        "g" * 32,
        "{job}".upper(),
        "{job}0",
    ],
)
def test_malformed_job_ids_are_not_found_never_an_error(stack, own_redis_url, job_id):
    alice = _as(TOKEN_A)
    real = _submit(stack, alice)
    job_id = job_id.replace("{job}", real).replace("{JOB}", real.upper())
    redis.Redis.from_url(own_redis_url).hset(f"ovms:job:{real}:claims", "held", "worker")  # as while a chunk runs
    for method, suffix in (("GET", ""), ("GET", "/result"), ("DELETE", ""), ("POST", "/retry")):
        reply = alice.request(method, f"{stack.rest_url}/v1/jobs/{job_id}{suffix}", timeout=10)
        assert reply.status_code in (400, 404), (method, suffix, reply.status_code, reply.text)


# ------------------------------------------------------------------------------------- streamed results


def test_results_stream_in_the_same_formats_as_before(stack):
    """JSON and .npy byte for byte as json.dumps / np.save of the whole arrays made them; .npz loads the
    same arrays; over more than one chunk, for a one-output and a two-output model."""
    alice = _as(TOKEN_A)
    digits_job = _submit(stack, alice, rows=600)  # three chunks, the last one short
    rows = [[float(i), float(-i)] for i in range(300)]
    multi = alice.post(
        f"{stack.rest_url}/v1/jobs", json={"model": "multi", "inputs": {"a": rows, "b": rows}}, timeout=30
    )
    multi_job = multi.json()["id"]
    for job_id in (digits_job, multi_job):
        _wait_for_success(stack, alice, job_id)
        url = f"{stack.rest_url}/v1/jobs/{job_id}/result"
        npz = alice.get(url, params={"format": "npz"}, timeout=30)
        assert npz.headers["Content-Type"] == "application/x-npz"
        with np.load(io.BytesIO(npz.content)) as loaded:
            outputs = {name: loaded[name] for name in loaded.files}
        as_json = alice.get(url, timeout=30)
        assert as_json.headers["Content-Type"] == "application/json"
        assert as_json.content == json.dumps({"outputs": {n: a.tolist() for n, a in outputs.items()}}).encode()
        if len(outputs) == 1:
            npy = alice.get(url, params={"format": "npy"}, timeout=30)
            expected = io.BytesIO()
            np.save(expected, next(iter(outputs.values())), allow_pickle=False)
            assert npy.content == expected.getvalue()
            assert int(npy.headers["Content-Length"]) == len(expected.getvalue())
    assert next(iter(outputs.values())).shape == (300, 2)


def _peak_rss_during(process: psutil.Process, work: threading.Thread) -> int:
    peak = process.memory_info().rss
    work.start()
    while work.is_alive():
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.02)
    return peak


def test_parallel_downloads_of_a_large_result_stay_small_in_the_api(stack):
    alice = _as(TOKEN_A)
    job_id = _submit(stack, alice, rows=LARGE_JOB_ROWS)
    _wait_for_success(stack, alice, job_id)
    url = f"{stack.rest_url}/v1/jobs/{job_id}/result"
    sizes: list[int] = []

    def download() -> None:
        with _as(TOKEN_A).get(url, stream=True, timeout=300) as reply:
            assert reply.status_code == 200
            sizes.append(sum(len(part) for part in reply.iter_content(1 << 16)))

    def downloads() -> None:
        threads = [threading.Thread(target=download) for _ in range(DOWNLOADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    api = psutil.Process(stack.process.pid)  # all-in-one: the api serves in the supervisor process
    before = api.memory_info().rss
    started = time.monotonic()
    peak = _peak_rss_during(api, threading.Thread(target=downloads))
    growth_mb = (peak - before) / 2**20
    print(f"{DOWNLOADS} JSON downloads of {sizes[0] / 2**20:.0f} MB in {time.monotonic() - started:.1f} s: "
          f"api RSS {before / 2**20:.0f} MB -> peak {peak / 2**20:.0f} MB (+{growth_mb:.0f} MB)")  # fmt: skip
    assert len(sizes) == DOWNLOADS and len(set(sizes)) == 1
    assert growth_mb < 64, f"the api grew by {growth_mb:.0f} MB for {DOWNLOADS} downloads of {sizes[0] >> 20} MB"


# ------------------------------------------------------------------------------------------------ Flower


def _flower_addresses(stack: OvmsProcess) -> set[tuple[str, int]]:
    """The addresses Flower (a child process of the all-in-one `ovms`) listens on."""
    child = child_named(stack, "flower")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listening = listening_addresses(child.pid)
        if listening:
            return listening
        time.sleep(0.2)
    raise TimeoutError("Flower does not listen")


def test_flower_without_credentials_listens_on_localhost_only_and_shows_no_job_id(stack):
    addresses = _flower_addresses(stack)
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}, addresses
    flower = f"http://127.0.0.1:{next(iter(addresses))[1]}"
    deadline = time.monotonic() + 30
    while not requests.get(f"{flower}/healthcheck", timeout=5).ok:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    time.sleep(2)  # let Flower's event consumer attach before the tasks it should see
    alice = _as(TOKEN_A)
    job_id = _submit(stack, alice, rows=600)
    _wait_for_success(stack, alice, job_id)
    instances = np.load(Path(__file__).resolve().parents[2] / "models" / "data" / "imgs.npy")[:1].tolist()
    for _ in range(3):  # predicts are Celery tasks that Flower lists; job chunks are not
        reply = alice.post(f"{stack.rest_url}/v1/models/digits:predict", json={"instances": instances}, timeout=10)
        assert reply.status_code == 200, reply.text
    deadline = time.monotonic() + 20
    while True:  # what the UI's task list loads, which needs no credentials
        table = requests.get(f"{flower}/tasks/datatable", params=DATATABLE_QUERY, timeout=10)
        tasks = table.json()["data"]
        if len(tasks) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(tasks) >= 3, table.text
    assert job_id not in table.text
    for task in tasks[:5]:  # a task's own page, as a viewer opens it
        page = requests.get(f"{flower}/task/{task['uuid']}", timeout=10)
        assert page.status_code == 200 and job_id not in page.text
