"""Models resident on demand, attacked: files that go and come back while a version is out of memory, a
configuration changed while it is out, deadlines too short to publish a request, and a budget of 1 MiB under
concurrent clients rotating over more versions than fit (every answer checked against its own version).

Real processes (Redis, `ovms worker`, `ovms api`) and copies of the example models (the tests move their
files). What broke, and is fixed: a version whose files came back unchanged after a failed load stayed START
for good; a configuration changed while a version was out of memory never reached its signature; a request
whose deadline passed before it was published answered "retry after 1 s" and started no load; and a request
naming no version was told its version was retired when its load failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests

from inference.states import NOT_RESIDENT
from tests.integration.test_residency import serving, wait_until
from tests.support.stack import OvmsProcess, private_redis, wait_for_ready, worker_and_api

redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)

WAIT_S = 60.0
IDLE_S = 1.0
DIGITS = ("gone", "pinned", "back", "late", "control")  # copies of `digits`, each attacked by one test
TINY_TIMEOUT_S = "0.000001"  # passes before the api can publish the request
DEMAND_LOADS = re.compile(r'^ovms_model_loads_total\{name="(\w+)",reason="demand",version="\d+"\} (\S+)$', re.MULTILINE)


class Repository:
    """A config.json over private copies of the example models, rewritten to change the configuration."""

    def __init__(self, models_dir: Path, directory: Path) -> None:
        self.directory = directory
        self.models: dict[str, dict] = {}
        for name in DIGITS:
            shutil.copytree(models_dir / "digits", directory / name)
            self.models[name] = {"base_path": str(directory / name), "idle_unload_s": IDLE_S}
        self.models["late"].pop("idle_unload_s")  # given one later, by a configuration change
        shutil.copytree(models_dir / "versioned", directory / "grown")
        self.models["grown"] = {"base_path": str(directory / "grown"), "batch_size": 2, "idle_unload_s": IDLE_S}

    def change(self, name: str, **settings: object) -> None:
        self.models[name].update(settings)
        entries = [{"config": {"name": n, **s}} for n, s in self.models.items()]
        (self.directory / "config.json").write_text(json.dumps({"model_config_list": entries}))


@pytest.fixture(scope="module")
def stack(
    models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OvmsProcess, OvmsProcess, Repository]]:
    """api, worker (idle_unload_s models, no budget) and their repository."""
    directory = tmp_path_factory.mktemp("hostile")
    repository = Repository(models_dir, directory)
    with worker_and_api(serving(repository.models, directory, redis_url)) as (worker, api):
        wait_for_ready(api, timeout_s=WAIT_S)
        yield api, worker, repository


def version_status(api: OvmsProcess, model: str) -> tuple[str, str]:
    """(state, error_message) of the model's highest version, as `GET /v1/models/{model}` shows it."""
    versions = requests.get(f"{api.rest_url}/v1/models/{model}", timeout=10).json()["model_version_status"]
    top = max(versions, key=lambda v: int(v["version"]))
    return top["state"], top["status"]["error_message"]


def out_of_memory(api: OvmsProcess, model: str) -> bool:
    return version_status(api, model) == ("AVAILABLE", NOT_RESIDENT)


def digits_rows(models_dir: Path) -> list:
    return np.load(models_dir / "data" / "imgs.npy")[:2].tolist()


def predict(
    api: OvmsProcess, model: str, rows: list, timeout_s: str | None = None, version: int | None = None
) -> requests.Response:
    headers = {"X-Request-Timeout": timeout_s} if timeout_s else {}
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    return requests.post(f"{api.rest_url}{path}", json={"instances": rows}, headers=headers, timeout=WAIT_S)


def demand_loads(api: OvmsProcess, model: str) -> float:
    text = requests.get(f"{api.rest_url}/metrics", timeout=10).text
    return sum(float(count) for name, count in DEMAND_LOADS.findall(text) if name == model)


def fail_a_load(api: OvmsProcess, repository: Repository, model: str, rows: list, version: int | None) -> str:
    """Remove the weights of the model's version 1 while it is out of memory, and send it a request (naming
    `version`): the error it answers, asserted to come when the load failed, not at its deadline."""
    wait_until(lambda: out_of_memory(api, model), f"{model} out of memory")
    (repository.directory / model / "1" / "model.bin").unlink()
    started = time.monotonic()
    reply = predict(api, model, rows, timeout_s="30", version=version)
    assert reply.status_code == 404, reply.text
    assert time.monotonic() - started < 15, "answered when the load failed, not at the deadline"
    return reply.json()["error"]


def test_a_version_whose_files_went_away_while_out_of_memory_fails_its_request_at_once(stack, models_dir) -> None:
    api, _, repository = stack
    error = fail_a_load(api, repository, "pinned", digits_rows(models_dir), version=1)
    assert "failed to load" in error and "no complete model" in error, error


def test_a_request_naming_no_version_says_why_the_load_failed(stack, models_dir) -> None:
    api, _, repository = stack
    error = fail_a_load(api, repository, "gone", digits_rows(models_dir), version=None)
    assert "failed to load" in error and "no complete model" in error, error


def test_a_version_whose_files_come_back_unchanged_is_served_again(stack, models_dir) -> None:
    api, _, repository = stack
    rows = digits_rows(models_dir)
    wait_until(lambda: out_of_memory(api, "back"), "back out of memory")
    weights = repository.directory / "back" / "1" / "model.bin"
    aside = repository.directory / "back-model.bin"
    os.rename(weights, aside)
    assert predict(api, "back", rows, timeout_s="30").status_code == 404
    time.sleep(3)  # a few file polls see the version incomplete
    os.rename(aside, weights)  # the very same file, mtime and all
    wait_until(lambda: predict(api, "back", rows).status_code == 200, "back served again", timeout_s=15)


def test_a_configuration_changed_while_out_of_memory_takes_effect(stack) -> None:
    api, worker, repository = stack
    wait_until(lambda: out_of_memory(api, "grown"), "grown out of memory")
    repository.change("grown", batch_size=3)
    wait_until(lambda: "Model grown: configuration changed" in worker.log(), "the change seen")
    three = [[1.0, 2.0, 3.0, 4.0]] * 3

    def new_shape_served() -> bool:
        reply = predict(api, "grown", three)
        return reply.status_code == 200 and reply.json()["predictions"] == [[2.0, 4.0, 6.0, 8.0]] * 3

    wait_until(new_shape_served, "3 rows served after batch_size 3", timeout_s=15)


def test_a_request_that_cannot_even_be_published_still_makes_the_worker_load(stack, models_dir) -> None:
    """Control: with idle_unload_s from the start, the workers know the load time, and the api refuses a
    request whose deadline is shorter at once and publishes it anyway: the load happens."""
    api, _, _ = stack
    wait_until(lambda: out_of_memory(api, "control"), "control out of memory")
    before = demand_loads(api, "control")
    refused = predict(api, "control", digits_rows(models_dir), timeout_s=TINY_TIMEOUT_S)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1, refused.text
    wait_until(lambda: demand_loads(api, "control") > before, "the load the refusal promised", timeout_s=15)


def test_retry_after_is_kept_when_idle_unload_s_came_from_a_reload(stack, models_dir) -> None:
    api, worker, repository = stack
    repository.change("late", idle_unload_s=IDLE_S)
    wait_until(lambda: "Model late: configuration changed" in worker.log(), "the change seen")
    wait_until(lambda: out_of_memory(api, "late"), "late out of memory")
    rows = digits_rows(models_dir)
    refused = predict(api, "late", rows, timeout_s=TINY_TIMEOUT_S)  # its deadline passes before it is published
    assert refused.status_code == 503, refused.text
    time.sleep(int(refused.headers["Retry-After"]))
    wait_until(lambda: demand_loads(api, "late") >= 1, "the load its Retry-After promised")
    assert predict(api, "late", rows).status_code == 200


# ------------------------------------------------------------------------------------ a budget of 1 MiB


@pytest.fixture(scope="module")
def tiny_budget(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvmsProcess]:
    """The api of a stack (on a Redis of its own) whose worker has --worker_memory_mb 1: every version is
    larger than the budget, so each load unloads every other one. Two names for `versioned` (policy all: v1
    x+1, v2 x*2)."""
    directory = tmp_path_factory.mktemp("tiny")
    policy = {"all": {}}
    models = {name: {"base_path": str(models_dir / "versioned"), "model_version_policy": policy} for name in "ab"}
    with contextmanager(private_redis)() as redis_url:
        args = serving(models, directory, redis_url)
        with worker_and_api(args, worker_args=["--worker_memory_mb", "1"]) as (_, api):
            wait_for_ready(api, timeout_s=WAIT_S)
            yield api


def test_clients_rotating_over_versions_under_a_budget_of_one_mib_each_get_their_own_versions_answer(
    tiny_budget: OvmsProcess,
) -> None:
    targets = [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("a", None), ("b", None)]
    wrong: list[str] = []
    served = 0
    lock = threading.Lock()

    def client(offset: int) -> None:
        nonlocal served
        rng = np.random.default_rng(offset)
        for step in range(8):
            model, version = targets[(offset + step) % len(targets)]
            x = rng.uniform(-100, 100, (1, 4)).astype(np.float32)
            path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
            reply = requests.post(f"{tiny_budget.rest_url}{path}", json={"instances": x.tolist()}, timeout=WAIT_S)
            expected = x + 1 if version == 1 else x * 2  # no version: the highest, 2
            with lock:
                if reply.status_code != 200:
                    wrong.append(f"{model} v{version}: {reply.status_code} {reply.text[:120]}")
                elif not np.allclose(np.array(reply.json()["predictions"], np.float32), expected, rtol=1e-5):
                    wrong.append(f"{model} v{version}: {reply.json()['predictions']} for {x.tolist()}")
                else:
                    served += 1

    clients = [threading.Thread(target=client, args=(offset,)) for offset in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=4 * WAIT_S)
    assert not wrong and served == 64, wrong[:5]
    document = requests.get(f"{tiny_budget.rest_url}/v1/status", timeout=10).json()
    in_memory = [row for row in document["versions"] if row["model"] in "ab" and row["resident"]]
    assert len(in_memory) <= 1, f"more than the last version loaded stayed in memory: {in_memory}"
