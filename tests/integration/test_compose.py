"""docker-compose.yml run as a user runs it: the project's image and Redis in containers on a real engine.

One compose project of its own (`-p ovmst<random>`, host ports chosen free, so that nothing clashes
with a `make run` or another project on the machine), from the image `make docker_build_offline`
builds (`--no-build`), with Redis from the offline base image, whose `redis-server` and `redis-cli`
are Debian's (REDIS_IMAGE). The tests run in file order on one stack: up to healthy (the compose
healthchecks themselves, polled through `docker inspect`), predictions from the host over both
protocols, three workers serving, one of them `docker kill`ed under load, Flower's basic auth, an
async job record that outlives a Redis restart (AOF in a named volume), and `down -v` leaving nothing
of the project. The stack is taken down with `down -v` whatever happens.

Debian's docker-compose 1.29 (compose v1) runs the file when there is no `docker compose` plugin; both
read the same file (tests/integration/test_deployment.py renders it with each).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

from tasks.routing import REPLY_PREFIX, claims_key
from tests.support.compose import (
    FLOWER_PASSWORD,
    FLOWER_USER,
    HEALTHY_TIMEOUT_S,
    Stack,
    compose_stack,
    project_resources,
)
from tests.support.docker import BUILD_TIMEOUT_S, docker
from tests.support.jobs import post_npy, wait_for_end
from tests.support.load import GrpcLoad, float_request

SERVICES_WITH_HEALTHCHECKS = ("redis", "api", "worker-cpu", "flower")


@pytest.fixture(scope="module")
def stack(docker_image: str) -> Iterator[Stack]:
    """The compose project, up and healthy; `down -v` at the end, also when a test failed."""
    with compose_stack(docker_image, ["docker-compose.yml"], SERVICES_WITH_HEALTHCHECKS) as running:
        yield running


@pytest.fixture(scope="module")
def digits(models_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(models_dir / "data" / "imgs.npy"), np.load(models_dir / "data" / "labels.npy")


def _rest_predict(stack: Stack, rows: np.ndarray) -> requests.Response:
    return requests.post(f"{stack.rest_url}/v1/models/digits:predict", json={"instances": rows.tolist()}, timeout=20)


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)  # its setup may build the image (seconds when cached, minutes if not)
def test_the_stack_comes_up_healthy_and_predicts_over_rest_grpc_and_v2(
    stack: Stack, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits
    rows = images[:32]
    tfs = _rest_predict(stack, rows)
    assert tfs.status_code == 200, tfs.text
    assert float(np.mean(np.argmax(tfs.json()["predictions"], axis=1) == labels[:32])) >= 0.9
    assert tfs.headers["X-Ovms-Worker"].startswith("CPU-")

    v2 = requests.post(
        f"{stack.rest_url}/v2/models/digits/infer",
        json={"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]},
        timeout=20,
    )
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert output["shape"] == [32, 10]
    np.testing.assert_allclose(np.reshape(output["data"], (32, 10)), tfs.json()["predictions"], rtol=1e-5)

    with grpc.insecure_channel(stack.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        reply = stub.Predict(float_request("digits", "x", rows), timeout=20)
    (tensor,) = reply.outputs.values()
    probabilities = np.frombuffer(tensor.tensor_content, np.float32).reshape(32, 10)
    np.testing.assert_allclose(probabilities, tfs.json()["predictions"], rtol=1e-5)


def _wait_ready(stack: Stack, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (code := _status(f"{stack.rest_url}/v1/health/ready")) != 200:
        assert time.monotonic() < deadline, f"the api is not ready {timeout_s} s on: {code}"
        time.sleep(0.2)


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.ConnectionError:
        return 0


def _holds(stack: Stack, worker_id: str) -> bool:
    """Whether `worker_id` has claimed a message of the api (tasks.claims), read with the redis
    container's own redis-cli (Redis is published on the compose network only)."""
    pattern = claims_key(REPLY_PREFIX + "*")
    script = f'for key in $(redis-cli --scan --pattern "{pattern}"); do redis-cli hvals "$key"; done'
    (redis_container,) = stack.containers("redis")
    return worker_id in docker("exec", redis_container, "sh", "-c", script).stdout.split()


def _freeze_while_holding(stack: Stack, container: str, worker_id: str, timeout_s: float = 30.0) -> None:
    """SIGSTOP the worker (PID 1 of `container`) at a moment it holds a claimed message, so that killing it
    next is killing it mid-batch (a `digits` message is done within milliseconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        docker("kill", "--signal", "STOP", container)
        if _holds(stack, worker_id):
            return
        docker("kill", "--signal", "CONT", container)
        time.sleep(0.05)
    raise AssertionError(f"worker {worker_id} was never caught holding a message")


def _served_by(stack: Stack, row: np.ndarray, until: float, want: int) -> set[str]:
    """The workers that answered REST predicts sent by 4 clients until `want` distinct ones did, or `until`;
    every predict must succeed."""
    seen: set[str] = set()
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        while time.monotonic() < until and len(seen) < want and not errors:
            reply = _rest_predict(stack, row)
            with lock:
                if reply.status_code == 200:
                    seen.add(reply.headers["X-Ovms-Worker"])
                else:
                    errors.append(f"{reply.status_code} {reply.text}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return seen


def test_three_workers_serve_and_killing_one_under_load_fails_no_request(
    stack: Stack, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """README, "Reliability and security": `kill -9` a worker mid-batch, another worker alive — what
    clients see: "nothing: the messages it held run again on the other worker". `docker kill` is that
    SIGKILL, to the worker that is PID 1 of its container; so no request of the load may fail."""
    row = digits[0][:1]
    started = time.monotonic()
    stack.compose("up", "-d", "--no-build", "--scale", "worker-cpu=3", timeout_s=HEALTHY_TIMEOUT_S)
    workers = _served_by(stack, row, until=time.monotonic() + 90, want=3)
    print(f"\n`--scale worker-cpu=3` to three workers serving: {time.monotonic() - started:.1f} s")
    assert len(workers) == 3, workers
    stack.wait_healthy(("worker-cpu",), {"worker-cpu": 3})
    containers = stack.containers("worker-cpu")
    # A container's host name is its short id, and a worker's id is CPU-<host>-<pid>-<tag of this start>.
    by_host = {worker.split("-")[1]: worker for worker in workers}
    assert set(by_host) == {c[:12] for c in containers}, (workers, containers)

    victim = containers[0]
    load = GrpcLoad(stack.grpc_address, float_request("digits", "x", row), threads=4, timeout_s=20).start()
    try:
        time.sleep(2)
        _freeze_while_holding(stack, victim, by_host[victim[:12]])
        docker("kill", victim)
        stack.killed.add(victim)
        killed_at = time.monotonic()
        time.sleep(8)  # the heartbeat expires within 3 s; the api then queues what the worker held again
    finally:
        outcomes = load.stop()
    failed = load.failures()
    caught = [o.seconds for o in outcomes if o.started < killed_at < o.finished]
    logs = docker("logs", stack.containers("api")[0], check=False)
    api_log = logs.stdout + logs.stderr
    rerun = api_log.count(f"again: worker {by_host[victim[:12]]} was lost")
    print(
        f"killed {victim[:12]} under 4 gRPC clients: {len(outcomes)} requests, {len(failed)} failed; "
        f"{len(caught)} in flight at the kill (slowest {max(caught, default=0):.2f} s), {rerun} message(s) run again;"
        f" the killed container is now {docker('inspect', '-f', '{{.State.Status}}', victim).stdout.strip()}"
    )
    assert not failed, failed[:5]
    assert rerun >= 1, "the killed worker held no message: the test did not kill it mid-batch"
    assert load.codes(since=killed_at + 4)["OK"] > 20, "the other two workers carry on"
    late = {o.worker for o in outcomes if o.started > killed_at + 4}
    assert late and by_host[victim[:12]] not in late and late <= set(workers), (late, workers)


def test_flower_needs_its_password_and_lists_the_workers(stack: Stack) -> None:
    url = stack.flower_url
    assert requests.get(f"{url}/", timeout=10).status_code == 401
    assert requests.get(f"{url}/", auth=(FLOWER_USER, "wrong"), timeout=10).status_code == 401
    assert requests.get(f"{url}/", auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=10).status_code == 200
    alive = {c[:12] for c in stack.containers("worker-cpu")}
    deadline = time.monotonic() + 30
    while True:
        listed = requests.get(f"{url}/api/workers?refresh=1", auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=20)
        assert listed.status_code == 200, listed.text
        hosts = {name.split("@")[-1] for name in listed.json()}
        if alive <= hosts:
            break
        assert time.monotonic() < deadline, f"Flower lists {sorted(listed.json())}, the live workers are {alive}"
        time.sleep(1)


def test_async_jobs_survive_a_redis_restart(stack: Stack, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Redis keeps an append-only file in its named volume, and a restarted redis container reads it
    back: a finished job keeps its record and result, and a job running at the restart (its record,
    queued and taken chunks, results so far) ends SUCCESS with every sample once the workers reconnect."""
    finished = post_npy(stack.rest_url, "digits", digits[0][:300].astype(np.float32))
    assert finished.status_code == 202, finished.text
    finished_url = stack.rest_url + finished.json()["status_url"]
    assert wait_for_end(finished_url, 60)["state"] == "SUCCESS"
    finished_result = requests.get(f"{finished_url}/result", timeout=20).json()

    images = np.random.default_rng(7).random((200, 3, 224, 224), dtype=np.float32)  # 120 MB, 67 chunks
    running = post_npy(stack.rest_url, "resnet", images)
    assert running.status_code == 202, running.text
    running_url = stack.rest_url + running.json()["status_url"]
    progress = requests.get(running_url, timeout=20).json()["progress"]
    started = time.monotonic()
    stack.compose("restart", "redis")
    stack.wait_healthy(("redis",))
    _wait_ready(stack)
    print(
        f"\n`restart redis` (a resnet job at {progress['done']}/{progress['total']}) to the api ready again:"
        f" {time.monotonic() - started:.1f} s"
    )
    assert progress["done"] < progress["total"], "the job ended before the restart: nothing was tested"

    status = requests.get(finished_url, timeout=20)
    assert status.status_code == 200 and status.json()["state"] == "SUCCESS", status.text
    assert requests.get(f"{finished_url}/result", timeout=20).json() == finished_result
    ended = wait_for_end(running_url, 120)
    assert ended["state"] == "SUCCESS" and ended["progress"] == {"done": 200, "total": 200, "failed": 0}, ended
    (outputs,) = requests.get(f"{running_url}/result", timeout=60).json()["outputs"].values()
    assert np.shape(outputs) == (200, 1000)
    for row in (0, 199):  # the first and the last chunk, against a predict of the same image
        reply = requests.post(
            f"{stack.rest_url}/v1/models/resnet:predict", json={"instances": images[row : row + 1].tolist()}, timeout=30
        )
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(outputs[row], reply.json()["predictions"][0], rtol=1e-4, atol=1e-6)


def test_stop_ends_every_process_cleanly_and_down_v_leaves_nothing(stack: Stack) -> None:
    """`stop` sends SIGTERM to each container's PID 1 (`ovms`, `celery flower`, `redis-server`): each
    must exit 0 within the grace period rather than be killed at its end (137), whatever its role."""
    started = time.monotonic()
    stack.compose("stop", "--timeout", "20")
    print(f"\n`stop`: {time.monotonic() - started:.1f} s")
    before = project_resources(stack.project)
    assert before["containers"] and before["networks"] and len(before["volumes"]) == 2, before
    exits = {
        c: docker("inspect", "-f", "{{.Name}} {{.State.ExitCode}}", c).stdout.split() for c in before["containers"]
    }
    assert {name: code for c, (name, code) in exits.items() if c not in stack.killed and code != "0"} == {}
    assert {code for c, (_, code) in exits.items() if c in stack.killed} == {"137"}
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "10")
    assert project_resources(stack.project) == {"containers": [], "networks": [], "volumes": []}
