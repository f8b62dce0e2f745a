"""DynamicBatcher's scheduling, with a stand-in model whose inferences the test completes by hand: which
requests share an inference, in which order, and what each one gets back. No timing is guessed: the test
sees every inference the batcher hands to the model and decides when (and how) it ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np
import pytest

from inference.batcher import BatchResult, DynamicBatcher, guard_rows
from inference.errors import VERSION_RETIRED, NotFound
from inference.priorities import JOB_LEVEL, Priority
from tests.support.hand_model import WAIT_S, Build, HandRunModel, Inference, Tensors, hand_batchers


@pytest.fixture
def make_batcher() -> Iterator[Build]:
    """A batcher over a HandRunModel (8 rows, one infer request unless told otherwise); every one built is
    closed after the test (its inferences ended)."""
    with hand_batchers(max_batch_size=8, nireq=1) as build:
        yield build


def rows(first: int, count: int, width: int = 2) -> Tensors:
    """`count` rows whose values start at `first`: no two requests of a test share a value."""
    return {"x": np.arange(first, first + count * width, dtype=np.float32).reshape(count, width)}


def assert_own_rows(inputs: Tensors, future: Future[BatchResult]) -> BatchResult:
    result = future.result(timeout=WAIT_S)
    np.testing.assert_array_equal(result.outputs["y"], inputs["x"] * 10)
    return result


def occupy(batcher: DynamicBatcher, model: HandRunModel) -> tuple[Inference, Future[BatchResult]]:
    """Submit a request to an idle model: it goes straight to its only infer request, so what is submitted
    next queues in the batcher until the test ends this inference."""
    future = batcher.submit(rows(-100, 1))
    return model.next_inference(), future


def test_a_lone_request_on_an_idle_model_is_run_at_once_and_alone(make_batcher) -> None:
    batcher, model = make_batcher()
    inputs = rows(0, 3)
    future = batcher.submit(inputs)
    inference = model.next_inference()
    assert inference.rows == 3 and not future.done()
    inference.complete()
    result = assert_own_rows(inputs, future)
    assert result.batch_rows == 3 and result.compiled is model


def test_a_batch_holds_at_most_max_batch_size_rows(make_batcher) -> None:
    batcher, model = make_batcher(max_batch_size=4)
    busy, _ = occupy(batcher, model)
    requests = [rows(10 * i, 2) for i in range(5)]
    futures = [batcher.submit(inputs) for inputs in requests]
    busy.complete()
    sizes = []
    for _ in range(3):  # one infer request: each batch starts once the previous one ended
        inference = model.next_inference()
        sizes.append(inference.rows)
        inference.complete()
    assert sizes == [4, 4, 2]
    for inputs, future in zip(requests, futures, strict=True):
        assert_own_rows(inputs, future)


def test_a_request_larger_than_the_batch_limit_runs_alone_whole(make_batcher) -> None:
    batcher, model = make_batcher(max_batch_size=4)
    busy, _ = occupy(batcher, model)
    small, large = rows(0, 1), rows(100, 6)
    futures = [batcher.submit(small), batcher.submit(large)]
    busy.complete()
    first = model.next_inference()
    assert first.rows == 1
    first.complete()
    second = model.next_inference()
    assert second.rows == 6
    second.complete()
    assert_own_rows(small, futures[0])
    assert assert_own_rows(large, futures[1]).batch_rows == 6


def test_only_requests_of_the_same_shape_and_type_share_an_inference(make_batcher) -> None:
    batcher, model = make_batcher()
    busy, _ = occupy(batcher, model)
    narrow = [rows(0, 1, width=2), rows(10, 2, width=2)]
    wide = [rows(100, 1, width=3), rows(110, 1, width=3)]
    other_type = {"x": np.arange(2, dtype=np.int32).reshape(1, 2)}
    submitted = [narrow[0], wide[0], other_type, narrow[1], wide[1]]
    futures = [batcher.submit(inputs) for inputs in submitted]
    busy.complete()
    seen = []
    for _ in range(3):
        inference = model.next_inference()
        seen.append((inference.inputs["x"].shape, inference.inputs["x"].dtype))
        inference.complete()
    assert seen == [((3, 2), np.float32), ((2, 3), np.float32), ((1, 2), np.int32)], "grouped by shape, in order"
    for inputs, future in zip(submitted, futures, strict=True):
        assert_own_rows(inputs, future)


def test_announced_requests_wait_for_each_other_and_share_one_inference(make_batcher) -> None:
    batcher, model = make_batcher()
    requests = [rows(10 * i, 1) for i in range(3)]
    with batcher.incoming(len(requests)) as arrivals:
        futures = [batcher.submit(inputs, arrivals) for inputs in requests]
    inference = model.next_inference()
    assert inference.rows == 3
    inference.complete()
    for inputs, future in zip(requests, futures, strict=True):
        assert assert_own_rows(inputs, future).batch_rows == 3


def test_a_partial_batch_leaves_after_the_queue_delay_without_the_missing_requests(make_batcher) -> None:
    batcher, model = make_batcher(delay_s=0.05)
    with batcher.incoming(2) as arrivals:
        inputs = rows(0, 1)
        future = batcher.submit(inputs, arrivals)
        inference = model.next_inference()  # while the second is still announced
        assert inference.rows == 1
    inference.complete()
    assert_own_rows(inputs, future)


def test_a_failed_batch_is_retried_one_by_one_so_a_bad_request_fails_alone(make_batcher) -> None:
    batcher, model = make_batcher()
    busy, _ = occupy(batcher, model)
    requests = [rows(10 * i, 1) for i in range(3)]
    futures = [batcher.submit(inputs) for inputs in requests]
    busy.complete()
    batch = model.next_inference()
    assert batch.rows == 3
    batch.fail("one of them is poison")
    for index in range(3):
        inference = model.next_inference()
        assert inference.rows == 1, "retried requests never share an inference"
        np.testing.assert_array_equal(inference.inputs["x"], requests[index]["x"])
        if index == 1:
            inference.fail("poison")
        else:
            inference.complete()
    assert_own_rows(requests[0], futures[0])
    assert_own_rows(requests[2], futures[2])
    with pytest.raises(RuntimeError, match="poison"):
        futures[1].result(timeout=WAIT_S)


def test_a_request_that_fails_alone_gets_the_models_error(make_batcher) -> None:
    batcher, model = make_batcher()
    future = batcher.submit(rows(0, 1))
    model.next_inference().fail("out of device memory")
    with pytest.raises(RuntimeError, match="out of device memory"):
        future.result(timeout=WAIT_S)
    assert model.nothing_started(), "a lone request is not retried"


def test_closing_finishes_what_is_queued_then_refuses_new_requests(make_batcher) -> None:
    batcher, model = make_batcher()
    busy, busy_future = occupy(batcher, model)
    queued = [rows(10 * i, 1) for i in range(2)]
    futures = [batcher.submit(inputs) for inputs in queued]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    queued_batch = model.next_inference()  # handed over at close, without waiting for a free infer request
    assert queued_batch.rows == 2
    with pytest.raises(NotFound, match=VERSION_RETIRED):
        batcher.submit(rows(100, 1))
    busy.complete()
    queued_batch.complete()
    closer.join(WAIT_S)
    assert not closer.is_alive() and model.closed.is_set()
    busy_future.result(timeout=WAIT_S)
    for inputs, future in zip(queued, futures, strict=True):
        assert_own_rows(inputs, future)


def test_a_batch_that_fails_while_closing_still_answers_each_request(make_batcher) -> None:
    """A reload closes the old version's batcher while it still runs a batch: if that batch fails, its
    requests are retried one by one as ever, not left waiting for a batcher that stopped."""
    batcher, model = make_batcher()
    busy, _ = occupy(batcher, model)
    queued = [rows(10 * i, 1) for i in range(2)]
    futures = [batcher.submit(inputs) for inputs in queued]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    model.next_inference().fail("a batch that fails")
    busy.complete()
    for inputs, future in zip(queued, futures, strict=True):
        alone = model.next_inference()
        np.testing.assert_array_equal(alone.inputs["x"], inputs["x"])
        alone.complete()
        assert_own_rows(inputs, future)
    closer.join(WAIT_S)
    assert not closer.is_alive()


def test_concurrent_callers_each_get_their_own_rows(make_batcher) -> None:
    """Many threads submit at once to a model with two infer requests: however the batcher groups them,
    every caller gets exactly the answer to its own rows."""
    batcher, model = make_batcher(max_batch_size=8, nireq=2)
    callers = 24
    requests = [rows(1000 * i, 1 + i % 3) for i in range(callers)]
    futures: list[Future[BatchResult] | None] = [None] * callers
    start = threading.Barrier(callers)

    def call(index: int) -> None:
        start.wait(WAIT_S)
        futures[index] = batcher.submit(requests[index])

    threads = [threading.Thread(target=call, args=(index,)) for index in range(callers)]
    for thread in threads:
        thread.start()
    answered = 0
    batch_sizes = []
    while answered < sum(inputs["x"].shape[0] for inputs in requests):
        inference = model.next_inference()
        batch_sizes.append(inference.rows)
        answered += inference.rows
        inference.complete()
    for thread in threads:
        thread.join(WAIT_S)
    for inputs, future in zip(requests, futures, strict=True):
        assert future is not None
        assert_own_rows(inputs, future)
    assert max(batch_sizes) <= 8


# --------------------------------------------------------------------------- priorities and tenants


def one_row(value: int) -> Tensors:
    """A one-row request told apart by its value."""
    return {"x": np.full((1, 2), value, np.float32)}


def served_in_order(model: HandRunModel, count: int) -> list[list[int]]:
    """The values of the next inferences, each ended at once, until `count` requests were served."""
    inferences = []
    while sum(len(values) for values in inferences) < count:
        inference = model.next_inference()
        inferences.append([int(value) for value in inference.inputs["x"][:, 0]])
        inference.complete()
    return inferences


def test_waiting_requests_are_served_by_level_one_level_per_inference(make_batcher) -> None:
    batcher, model = make_batcher()
    busy, _ = occupy(batcher, model)
    sent = [(300, 3), (301, 3), (900, JOB_LEVEL), (200, 2), (100, 1), (302, 3), (101, 1)]
    futures = [batcher.submit(one_row(value), priority=Priority(level)) for value, level in sent]
    busy.complete()
    inferences = served_in_order(model, len(sent))
    assert [value for values in inferences for value in values] == [100, 101, 200, 300, 301, 302, 900]
    assert all(len({value // 100 for value in values}) == 1 for values in inferences), "one level per inference"
    for (value, _), future in zip(sent, futures, strict=True):
        assert_own_rows(one_row(value), future)


def test_tenants_of_a_level_take_turns_in_and_across_inferences(make_batcher) -> None:
    batcher, model = make_batcher(max_batch_size=4)
    busy, _ = occupy(batcher, model)
    flood = [batcher.submit(one_row(100 + index), priority=Priority(2, "flood")) for index in range(6)]
    other = [batcher.submit(one_row(200 + index), priority=Priority(2, "other", 2)) for index in range(4)]
    busy.complete()
    order = [value for values in served_in_order(model, 10) for value in values]
    assert order == [100, 200, 201, 101, 202, 203, 102, 103, 104, 105], "two of other's rows per turn of flood's one"
    for future in flood + other:
        future.result(timeout=WAIT_S)


def learn_that_rows_are_slow(batcher: DynamicBatcher, model: HandRunModel) -> None:
    """Run a 4-row inference that takes 0.3 s: each row costs far more than the guard's slack."""
    busy, _ = occupy(batcher, model)
    futures = [batcher.submit(one_row(index)) for index in range(4)]
    busy.complete()
    batch = model.next_inference()
    assert batch.rows == 4, "one kind of request: no limit but max_batch_size"
    time.sleep(0.3)
    batch.complete()
    for future in futures:
        future.result(timeout=WAIT_S)


def test_while_kinds_share_a_model_a_batch_holds_the_rows_a_lone_request_would_take(make_batcher) -> None:
    batcher, model = make_batcher()
    learn_that_rows_are_slow(batcher, model)
    busy, _ = occupy(batcher, model)
    chunk = batcher.submit(one_row(900), priority=Priority(JOB_LEVEL))  # a job chunk does not count as a kind
    plain = [batcher.submit(one_row(100 + index)) for index in range(4)]
    busy.complete()
    assert served_in_order(model, 5) == [[100, 101, 102, 103], [900]]
    busy, _ = occupy(batcher, model)
    plain = [batcher.submit(one_row(100 + index)) for index in range(4)]
    urgent = batcher.submit(one_row(50), priority=Priority(1))
    busy.complete()
    assert served_in_order(model, 5) == [[50], [100], [101], [102], [103]], "shared: one row per inference"
    for future in [chunk, urgent, *plain]:
        future.result(timeout=WAIT_S)


def test_the_guard_reads_the_cost_of_a_row_beyond_the_first_from_the_inferences_seen() -> None:
    unlimited = guard_rows({})
    assert guard_rows({1: 5e6}) == unlimited, "no batch of several rows seen"
    assert guard_rows({1: 10e6, 16: 160e6}) == 1, "10 ms a row: a lone request's time is all a batch may take"
    assert guard_rows({1: 80e3, 16: 155e3}) == 1 + int(1e6 // 5e3), "5 µs a row: 1 ms buys 200 more"
    assert guard_rows({8: 16e6}) == 1, "without a single row's time, the largest batch's time per row"
    assert guard_rows({1: 10e6, 4: 9e6}) == unlimited, "no cost per row measured"


# --------------------------------------------------------------------------- the last infer request


def test_a_kind_running_an_inference_leaves_the_last_infer_request_to_another_kind_present(make_batcher) -> None:
    """Two infer requests: a level-3 flood keeps one busy, and while a level-1 client has been seen it does not
    take the other, so the level-1 request starts at once instead of waiting for a flood inference to end."""
    batcher, model = make_batcher(max_batch_size=1, nireq=2)
    urgent_first = batcher.submit(one_row(100), priority=Priority(1))
    model.next_inference().complete()
    assert_own_rows(one_row(100), urgent_first)
    flood = [batcher.submit(one_row(300 + index), priority=Priority(3)) for index in range(3)]
    running = model.next_inference()
    assert [int(value) for value in running.inputs["x"][:, 0]] == [300]
    assert model.nothing_started(), "the level-3 flood took the last infer request while level 1 is present"
    urgent = batcher.submit(one_row(101), priority=Priority(1))
    alone = model.next_inference()
    assert [int(value) for value in alone.inputs["x"][:, 0]] == [101], "started at once, beside the flood"
    alone.complete()
    assert_own_rows(one_row(101), urgent)
    running.complete()
    assert served_in_order(model, 2) == [[301], [302]], "the flood still runs, on one infer request at a time"
    for index, future in enumerate(flood):
        assert_own_rows(one_row(300 + index), future)


def both_infer_requests_taken_by(model: HandRunModel) -> set[int]:
    """The values of the next two inferences started (left running)."""
    return {int(model.next_inference().inputs["x"][0, 0]) for _ in range(2)}


def test_with_none_reserved_a_running_kind_takes_every_free_infer_request(make_batcher) -> None:
    batcher, model = make_batcher(max_batch_size=1, nireq=2, reserved=0)
    urgent = batcher.submit(one_row(100), priority=Priority(1))
    model.next_inference().complete()
    urgent.result(timeout=WAIT_S)
    flood = [batcher.submit(one_row(300 + index), priority=Priority(3)) for index in range(3)]
    assert both_infer_requests_taken_by(model) == {300, 301}
    model.run_to_the_end(flood)
    for future in flood:
        future.result(timeout=WAIT_S)


def test_alone_a_kind_takes_every_infer_request(make_batcher) -> None:
    batcher, model = make_batcher(max_batch_size=1, nireq=2)
    futures = [batcher.submit(one_row(300 + index), priority=Priority(3)) for index in range(3)]
    assert both_infer_requests_taken_by(model) == {300, 301}
    model.run_to_the_end(futures)
    for index, future in enumerate(futures):
        assert_own_rows(one_row(300 + index), future)


def test_a_higher_level_flood_is_not_held_back_by_a_lower_level_present(make_batcher) -> None:
    batcher, model = make_batcher(max_batch_size=1, nireq=2)
    low = batcher.submit(one_row(300), priority=Priority(3))
    model.next_inference().complete()
    low.result(timeout=WAIT_S)
    futures = [batcher.submit(one_row(100 + index), priority=Priority(1)) for index in range(3)]
    assert both_infer_requests_taken_by(model) == {100, 101}
    model.run_to_the_end(futures)
    for future in futures:
        future.result(timeout=WAIT_S)


def test_tenants_of_one_level_each_keep_an_infer_request_from_the_other(make_batcher) -> None:
    batcher, model = make_batcher(max_batch_size=1, nireq=2)
    probe_first = batcher.submit(one_row(200), priority=Priority(2, "probe"))
    model.next_inference().complete()
    probe_first.result(timeout=WAIT_S)
    flood = [batcher.submit(one_row(100 + index), priority=Priority(2, "flood")) for index in range(3)]
    running = model.next_inference()
    assert model.nothing_started(), "the flooding tenant took the infer request kept for the other"
    probe = batcher.submit(one_row(201), priority=Priority(2, "probe"))
    alone = model.next_inference()
    assert int(alone.inputs["x"][0, 0]) == 201
    alone.complete()
    running.complete()
    model.complete_started()
    for future in [probe, *flood]:
        future.result(timeout=WAIT_S)


def test_job_chunks_leave_the_last_infer_request_to_interactive_requests(make_batcher) -> None:
    batcher, model = make_batcher(max_batch_size=1, nireq=2)
    interactive_first = batcher.submit(one_row(300), priority=Priority(3))
    model.next_inference().complete()
    interactive_first.result(timeout=WAIT_S)
    chunks = [batcher.submit(one_row(900 + index), priority=Priority(JOB_LEVEL)) for index in range(3)]
    running = model.next_inference()
    assert model.nothing_started(), "a job chunk took the last infer request while interactive requests come"
    interactive = batcher.submit(one_row(301), priority=Priority(3))
    beside = model.next_inference()
    assert int(beside.inputs["x"][0, 0]) == 301, "started at once, beside the chunk"
    beside.complete()
    running.complete()
    model.complete_started()
    for future in [interactive, *chunks]:
        future.result(timeout=WAIT_S)


def test_with_several_infer_requests_a_shared_model_batches_fully(make_batcher) -> None:
    """The guard on batch rows is for a model with one infer request; with more, another kind takes the one
    kept free, so the flood's batches need not shrink."""
    batcher, model = make_batcher(max_batch_size=4, nireq=2)
    first, second = batcher.submit(one_row(0)), batcher.submit(one_row(1))
    running = [model.next_inference(), model.next_inference()]
    learned = [batcher.submit(one_row(10 + index)) for index in range(4)]
    running[0].complete()
    batch = model.next_inference()
    assert batch.rows == 4
    time.sleep(0.3)  # slow rows: with one infer request, a shared batch would hold one
    batch.complete()
    running[1].complete()
    for future in [first, second, *learned]:
        future.result(timeout=WAIT_S)
    urgent = batcher.submit(one_row(100), priority=Priority(1))
    model.next_inference().complete()
    urgent.result(timeout=WAIT_S)
    flood = [batcher.submit(one_row(300 + index), priority=Priority(3)) for index in range(5)]
    model.next_inference().complete()
    assert served_in_order(model, 4) == [[301, 302, 303, 304]]
    for future in flood:
        future.result(timeout=WAIT_S)


def test_a_batch_held_back_after_waiting_for_mates_leaves_the_batcher_waiting_not_broken(make_batcher) -> None:
    """F's batch waits for an announced mate; meanwhile O's inference ends, so O (present, of a higher level) is
    waiting again and the last two free infer requests are kept for it: F's batch may no longer start. The
    batcher waits (it used to fail an assertion, which ended its thread) and serves O's next request at once."""
    batcher, model = make_batcher(max_batch_size=4, nireq=4, delay_s=0.3, reserved=2)
    o_first = batcher.submit(one_row(100), priority=Priority(1, "o"))
    o_running = model.next_inference()
    f_first = [batcher.submit(one_row(200 + index), priority=Priority(2, "f")) for index in range(2)]
    f_running = [model.next_inference(), model.next_inference()]
    with batcher.incoming(1):  # a mate is announced and never comes
        f_next = batcher.submit(one_row(202), priority=Priority(2, "f"))
        o_running.complete()
        time.sleep(0.5)  # past the queue delay
        assert model.nothing_started(), "F took an infer request kept for O"
    o_next = batcher.submit(one_row(101), priority=Priority(1, "o"))
    started = model.next_inference()
    assert [int(value) for value in started.inputs["x"][:, 0]] == [101], "O's request started at once"
    started.complete()
    for inference in f_running:
        inference.complete()
    model.complete_started()
    for value, future in [(100, o_first), (200, f_first[0]), (201, f_first[1]), (202, f_next), (101, o_next)]:
        assert_own_rows(one_row(value), future)
