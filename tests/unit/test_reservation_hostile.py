"""Hostile tests of the infer requests DynamicBatcher keeps free for other kinds of request (level, tenant):
starvation, hangs, wrong rows, leaks, throughput and the validation of `reserved_infer_requests`. Each inference
is ended by hand (tests.unit.test_batcher_scheduling.HandRunModel), so nothing depends on a device's timing.
Each was written against the first version of the reservation; those that broke it are fixed."""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np
import pytest

from inference.batcher import BatchResult, DynamicBatcher
from inference.model_config import ConfigError, model_from_dict
from inference.priorities import JOB_LEVEL, Priority
from ovms.settings import UsageError, parse_command_line
from tests.support.hand_model import WAIT_S, Build, HandRunModel, Inference, hand_batchers
from tests.unit.test_batcher_scheduling import one_row

SHORT_WINDOW_S = 0.2  # SHARED_WINDOW_S in the tests that wait for a kind to leave it
SETTLE_S = 0.3  # long enough for the batching thread to act on what it was told (it takes milliseconds)


@pytest.fixture
def hand_batcher() -> Iterator[Build]:
    """Batchers over HandRunModels (one row a batch, two infer requests unless told otherwise), closed after the
    test, every inference left running completed."""
    with hand_batchers(max_batch_size=1, nireq=2) as build:
        yield build


def values(inference: Inference) -> list[int]:
    return [int(value) for value in inference.inputs["x"][:, 0]]


def started_within(model: HandRunModel, seconds: float) -> list[list[int]]:
    """The values of the inferences started within `seconds` (left running: the test's end completes them)."""
    found = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            found.append(values(model.next_inference(left)))
        except queue.Empty:
            break
    return found


def assert_own(value: int, future: Future[BatchResult]) -> None:
    np.testing.assert_array_equal(future.result(timeout=WAIT_S).outputs["y"], one_row(value)["x"] * 10)


def seen(batcher: DynamicBatcher, model: HandRunModel, priority: Priority, value: int) -> None:
    """One request of `priority` on an idle model, run to its end: its kind is now present."""
    future = batcher.submit(one_row(value), priority=priority)
    model.next_inference().complete()
    assert_own(value, future)


# --------------------------------------------------------------------------- hangs


def test_a_held_back_request_starts_once_the_other_kind_has_left_the_window(hand_batcher, monkeypatch) -> None:
    monkeypatch.setattr("inference.batcher.SHARED_WINDOW_S", SHORT_WINDOW_S)
    batcher, model = hand_batcher()
    seen(batcher, model, Priority(2, "b"), 200)
    batcher.submit(one_row(100), priority=Priority(2, "a"))
    running = model.next_inference()
    held = batcher.submit(one_row(101), priority=Priority(2, "a"))
    assert started_within(model, 0.05) == [], "held back while b is present"
    time.sleep(SHORT_WINDOW_S + 0.1)  # b has left the window; a's long inference still runs
    assert started_within(model, SETTLE_S) == [[101]], "the free infer request stayed idle"
    running.complete()
    model.run_to_the_end([held])
    assert_own(101, held)


def test_closing_while_a_request_is_held_back_answers_it(hand_batcher) -> None:
    batcher, model = hand_batcher()
    seen(batcher, model, Priority(2, "b"), 200)
    first = batcher.submit(one_row(100), priority=Priority(2, "a"))
    running = model.next_inference()
    held = batcher.submit(one_row(101), priority=Priority(2, "a"))
    closer = threading.Thread(target=batcher.close)
    closer.start()
    handed_over = model.next_inference()
    assert values(handed_over) == [101], "closing hands over what is held back"
    handed_over.complete()
    running.complete()
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert_own(100, first)
    assert_own(101, held)


def test_a_failed_batch_retried_alone_while_another_kind_is_present_answers_everyone(hand_batcher) -> None:
    batcher, model = hand_batcher(max_batch_size=4)
    seen(batcher, model, Priority(2, "b"), 200)
    with batcher.incoming(3) as arrivals:
        futures = [batcher.submit(one_row(100 + i), arrivals, Priority(2, "a")) for i in range(3)]
    batch = model.next_inference()
    assert values(batch) == [100, 101, 102]
    late = batcher.submit(one_row(103), priority=Priority(2, "a"))
    assert started_within(model, 0.05) == [], "a runs: the last infer request is b's"
    batch.fail()
    served = []
    while len(served) < 4:
        inference = model.next_inference()
        served.extend(values(inference))
        inference.complete()
    assert sorted(served) == [100, 101, 102, 103]
    for index, future in enumerate([*futures, late]):
        assert_own(100 + index, future)


# --------------------------------------------------------------------------- the reservation's holes


def test_two_flooding_kinds_leave_no_infer_request_idle(hand_batcher) -> None:
    batcher, model = hand_batcher(nireq=3)
    seen(batcher, model, Priority(2, "b"), 200)
    a = [batcher.submit(one_row(100 + i), priority=Priority(2, "a")) for i in range(4)]
    a_running = [model.next_inference(), model.next_inference()]
    b = [batcher.submit(one_row(201 + i), priority=Priority(2, "b")) for i in range(3)]
    assert started_within(model, SETTLE_S) == [[201]], "b takes the infer request kept for it"
    a_running[0].complete()
    assert len(started_within(model, SETTLE_S)) == 1, "an infer request is free and a and b both wait"
    model.run_to_the_end(a + b)


@pytest.mark.parametrize(
    "beside",
    [Priority(3, "a"), Priority(JOB_LEVEL, "j")],
    ids=["the flooding tenant at a second level", "job chunks"],
)
def test_the_infer_request_kept_for_a_waiting_tenant_is_not_taken_by(hand_batcher, beside: Priority) -> None:
    """Tenant a floods level 2 and `beside` sends too: neither takes the infer request kept for tenant b (a
    tenant at two levels is one flood; job chunks come after interactive requests)."""
    batcher, model = hand_batcher()
    seen(batcher, model, Priority(2, "b"), 200)
    batcher.submit(one_row(100), priority=Priority(2, "a"))
    model.next_inference()
    for i in range(3):
        batcher.submit(one_row(101 + i), priority=Priority(2, "a"))
        batcher.submit(one_row(300 + i), priority=beside)
    assert started_within(model, SETTLE_S) == [], "the last infer request is kept for b"
    batcher.submit(one_row(201), priority=Priority(2, "b"))
    assert started_within(model, SETTLE_S) == [[201]], "b's request started at once beside a's"


def test_reserved_beyond_nireq_lets_each_kind_progress_and_a_lone_kind_take_all(hand_batcher) -> None:
    batcher, model = hand_batcher(nireq=2, reserved=5)
    alone = [batcher.submit(one_row(100 + i), priority=Priority(2, "a")) for i in range(3)]
    assert len(started_within(model, SETTLE_S)) == 2, "alone, a takes both infer requests"
    model.complete_left()
    assert len(started_within(model, SETTLE_S)) == 1, "the third"
    model.complete_left()
    for index, future in enumerate(alone):
        assert_own(100 + index, future)
    a = [batcher.submit(one_row(110 + i), priority=Priority(2, "a")) for i in range(3)]
    b = [batcher.submit(one_row(210 + i), priority=Priority(2, "b")) for i in range(3)]
    served = []
    while len(served) < 6:
        inference = model.next_inference()
        served.extend(values(inference))
        inference.complete()
    assert sorted(served) == [110, 111, 112, 210, 211, 212]
    for index, future in enumerate(a):
        assert_own(110 + index, future)
    for index, future in enumerate(b):
        assert_own(210 + index, future)


def test_a_low_level_kind_ages_past_a_higher_level_flood(hand_batcher, monkeypatch) -> None:
    monkeypatch.setattr("inference.priorities.AGEING_S", 0.05)
    batcher, model = hand_batcher()
    seen(batcher, model, Priority(1, "b"), 200)  # the flood keeps one infer request, the other is b's
    flood = [batcher.submit(one_row(100 + i), priority=Priority(1, "a")) for i in range(4)]
    low = batcher.submit(one_row(300), priority=Priority(3, "c"))
    deadline = time.monotonic() + WAIT_S
    sent = 4
    while not low.done() and time.monotonic() < deadline:
        inference = model.next_inference()
        inference.complete()
        flood.append(batcher.submit(one_row(100 + sent), priority=Priority(1, "a")))  # a fresh one each time
        sent += 1
    assert_own(300, low)


# --------------------------------------------------------------------------- rows, leaks


def test_concurrent_tenants_and_levels_get_their_own_rows_and_leave_no_kind_running(hand_batcher) -> None:
    """Eight clients of four tenants at every level (job chunks too), rows of 1 to 3, on two infer requests;
    inferences mixing several requests fail at random and are retried alone. Every request is answered with its
    own rows, and when all are, no kind counts as running."""
    batcher, model = hand_batcher(max_batch_size=6)
    rng = random.Random(7)
    stop = threading.Event()

    def device() -> None:
        while not stop.is_set():
            try:
                inference = model.next_inference(0.05)
            except queue.Empty:
                continue
            time.sleep(rng.random() * 0.003)
            mixed = len({value // 10 for value in values(inference)}) > 1
            inference.fail() if mixed and rng.random() < 0.2 else inference.complete()

    def client(number: int, results: list) -> None:
        local = random.Random(number)
        for index in range(25):
            ident = number * 1000 + index
            count = local.randint(1, 3)
            inputs = {"x": np.full((count, 2), ident * 10, np.float32) + np.arange(count)[:, None]}
            level = local.choice([1, 2, 3, JOB_LEVEL])
            future = batcher.submit(inputs, priority=Priority(level, f"t{number % 4}", 1 + number % 3))
            results.append((inputs, future))

    worker = threading.Thread(target=device)
    worker.start()
    results: list = []
    clients = [threading.Thread(target=client, args=(number, results)) for number in range(1, 9)]
    try:
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(WAIT_S)
        for inputs, future in results:
            np.testing.assert_array_equal(future.result(timeout=WAIT_S).outputs["y"], inputs["x"] * 10)
    finally:
        stop.set()
        worker.join(WAIT_S)
    assert len(results) == 200
    assert batcher._running == Counter(), "kinds left counted as running"
    assert len(batcher._present) <= 16, "more kinds remembered than were seen"


# --------------------------------------------------------------------------- reserved_infer_requests


def config(value: object) -> dict:
    return {"name": "m", "base_path": "/m", "reserved_infer_requests": value}


@pytest.mark.parametrize(
    "value", [-1, True, 1.5, 2.0, float("inf"), float("nan"), "1.5", "2", " 3 ", "1_0", None, [1], "many"]
)
def test_an_invalid_reserved_infer_requests_is_refused(value: object) -> None:
    """As the other integer keys of config.json: a JSON integer, nothing that converts to one."""
    with pytest.raises(ConfigError, match="reserved_infer_requests must be a non-negative integer"):
        model_from_dict(config(value))


@pytest.mark.parametrize("value", [0, 1, 10**6])
def test_a_whole_reserved_infer_requests_is_taken(value: int) -> None:
    assert model_from_dict(config(value)).reserved_infer_requests == value


@pytest.mark.parametrize("text", ["-1", "1.5", "x"])
def test_an_invalid_reserved_infer_requests_flag_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_command_line(["--model_name", "m", "--model_path", "/m", "--reserved_infer_requests", text])
