"""Versions loaded on demand (inference.manager with a memory budget or idle_unload_s, inference.residency):
which version leaves memory and when, loads on demand within a deadline, what is published, what is counted.

Real OpenVINO models (the example `versioned`, under several names). The one stand-in is the process's memory
reading, which each load reads twice: here every load takes exactly SIZE, so the budget's choices are exact.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from inference.errors import NotFound, Unavailable
from inference.manager import Lease, ModelManager
from inference.model_config import ModelConfig
from inference.states import LOADING_ON_DEMAND, NOT_RESIDENT
from inference.statistics import (
    BUDGET,
    DEMAND,
    IDLE,
    STARTUP,
    InferenceStatistics,
    load_field,
    unload_field,
)

SIZE = 10 << 20
WAIT_S = 20.0
X = np.arange(8, dtype=np.float32).reshape(2, 4)
VERSION = 2  # the latest of `versioned`: y = 2 x


@pytest.fixture
def start(models_dir: Path) -> Iterator[Callable[..., tuple[ModelManager, InferenceStatistics]]]:
    """Start a manager over `versioned` under each given name (their settings: `settings`)."""
    started: list[ModelManager] = []

    def build(*names: str, budget: int = 0, **settings: object) -> tuple[ModelManager, InferenceStatistics]:
        statistics = InferenceStatistics()
        configs = [ModelConfig(name, str(models_dir / "versioned"), nireq=1, **settings) for name in names]
        grows = itertools.count(step=SIZE)  # read before and after each load: every load takes SIZE
        manager = ModelManager(configs, statistics=statistics, memory_budget_bytes=budget, memory_in_use=grows.__next__)
        started.append(manager)
        manager.reconcile(initial=True)
        return manager, statistics

    yield build
    for manager in started:
        manager.close()


def resident(manager: ModelManager) -> dict[str, bool | None]:
    """Per model, whether its version is in memory as published (None: it says nothing of residency)."""
    reports = {name: model.versions[VERSION] for name, model in manager.snapshot().items()}
    return {name: report.residency.resident if report.residency else None for name, report in reports.items()}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {WAIT_S} s"
        time.sleep(0.02)


def answer(lease: Lease | None) -> np.ndarray:
    assert lease is not None
    with lease:
        return lease.batcher.submit({"x": X}).result(timeout=WAIT_S).outputs["y"]


def acquire(manager: ModelManager, name: str, wait_s: float = WAIT_S) -> Lease | None:
    return manager.acquire(name, VERSION, False, time.time() + wait_s)


def counted(statistics: InferenceStatistics) -> dict[str, dict[str, int]]:
    return {name: counts.lifecycle for (name, _), counts in statistics.take().items()}


def test_a_load_beyond_the_budget_unloads_the_least_recently_used_version_first(start) -> None:
    manager, statistics = start("a", "b", "c", budget=2 * SIZE + SIZE // 2)
    assert resident(manager) == {"a": False, "b": True, "c": True}, "c's load made room: a went"
    status = manager.snapshot()["a"].versions[VERSION].status
    assert (status.state, status.error_code, status.error_message) == ("AVAILABLE", "OK", NOT_RESIDENT)
    assert manager.snapshot()["a"].versions[VERSION].signature is not None, "still servable: the api routes to it"
    loads = counted(statistics)
    assert {name: lifecycle[load_field(STARTUP)] for name, lifecycle in loads.items()} == {"a": 1, "b": 1, "c": 1}
    assert loads["a"][unload_field(BUDGET)] == 1

    np.testing.assert_array_equal(answer(acquire(manager, "a")), X * 2)
    assert resident(manager) == {"a": True, "b": False, "c": True}, "b was the least recently used"
    np.testing.assert_array_equal(answer(acquire(manager, "c")), X * 2)
    np.testing.assert_array_equal(answer(acquire(manager, "b")), X * 2)
    assert resident(manager) == {"a": False, "b": True, "c": True}
    loads = counted(statistics)
    assert (loads["a"][load_field(DEMAND)], loads["b"][load_field(DEMAND)]) == (1, 1)
    assert (loads["a"][unload_field(BUDGET)], loads["b"][unload_field(BUDGET)]) == (1, 1)


def test_a_version_in_use_is_unloaded_last_and_only_once_its_requests_end(start) -> None:
    manager, _ = start("a", "b", "c", budget=2 * SIZE + SIZE // 2)  # b and c in memory, c the most recent
    held_c = acquire(manager, "c")
    np.testing.assert_array_equal(answer(acquire(manager, "a")), X * 2)
    assert resident(manager) == {"a": True, "b": False, "c": True}, "b went although c was used less recently"

    held_a = acquire(manager, "a")
    loaded: list[Lease | None] = []
    loader = threading.Thread(target=lambda: loaded.append(acquire(manager, "b")))
    loader.start()
    wait_until(lambda: manager.snapshot()["b"].versions[VERSION].status.error_message == LOADING_ON_DEMAND, "LOADING")
    time.sleep(0.5)
    assert resident(manager) == {"a": True, "b": False, "c": True}, "nothing unloaded under a request"
    assert held_a is not None and held_c is not None
    held_c.__exit__()
    held_a.__exit__()
    loader.join(timeout=WAIT_S)
    np.testing.assert_array_equal(answer(loaded[0]), X * 2)
    assert resident(manager)["b"] and list(resident(manager).values()).count(True) == 2


def test_a_version_unused_for_its_idle_unload_s_leaves_memory_and_the_next_request_loads_it(start) -> None:
    manager, statistics = start("idle", idle_unload_s=0.3)
    wait_until(lambda: resident(manager) == {"idle": False}, "the idle version unloaded")
    assert counted(statistics)["idle"][unload_field(IDLE)] == 1
    lease = acquire(manager, "idle")
    assert resident(manager) == {"idle": True}
    time.sleep(1.0)
    assert resident(manager) == {"idle": True}, "a version a request holds is never idle"
    np.testing.assert_array_equal(answer(lease), X * 2)
    wait_until(lambda: resident(manager) == {"idle": False}, "unloaded again once idle")
    lifecycle = counted(statistics)["idle"]
    assert (lifecycle[load_field(DEMAND)], lifecycle[unload_field(IDLE)]) == (1, 1)


def test_a_request_that_cannot_wait_for_the_load_fails_unavailable_and_the_load_goes_on(start) -> None:
    manager, _ = start("a", "b", budget=SIZE + SIZE // 2)
    assert resident(manager) == {"a": False, "b": True}
    with pytest.raises(Unavailable, match="Model a version 2 is loading: not ready within the request's deadline"):
        acquire(manager, "a", wait_s=0.0)
    wait_until(lambda: resident(manager) == {"a": True, "b": False}, "a loaded all the same")


def test_a_version_whose_load_on_demand_fails_is_not_found_with_the_reason(start, models_dir, tmp_path) -> None:
    repository = tmp_path / "versioned"
    shutil.copytree(models_dir / "versioned", repository)
    manager, _ = start("a", budget=SIZE + SIZE // 2)
    broken = ModelConfig("broken", str(repository), nireq=1)
    manager.apply_config([*manager.configs().values(), broken])  # loading it unloads a; then a's load unloads it
    np.testing.assert_array_equal(answer(acquire(manager, "a")), X * 2)
    assert resident(manager) == {"a": True, "broken": False}
    (repository / str(VERSION) / "model.xml").write_text("<net>cut short")
    with pytest.raises(NotFound, match="Model version 2 failed to load: "):
        acquire(manager, "broken")
    assert manager.snapshot()["broken"].versions[VERSION].status.state == "END"


def test_without_a_budget_or_idle_unload_s_every_version_stays_in_memory_and_says_nothing_of_it(start) -> None:
    manager, statistics = start("a", "b")
    assert resident(manager) == {"a": None, "b": None}
    np.testing.assert_array_equal(answer(acquire(manager, "a", wait_s=0.0)), X * 2)
    assert not [thread for thread in threading.enumerate() if thread.name == "ovms-residency"]
    assert all(
        unload_field(reason) not in lifecycle for lifecycle in counted(statistics).values() for reason in [BUDGET, IDLE]
    )
