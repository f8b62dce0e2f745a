"""The api-side coalescing lane: a lone request leaves at once, a crowd leaves together."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest

from inference.errors import ResourceExhausted
from inference.request import InferenceRequest
from tasks.lanes import MAX_COALESCED_BYTES, MESSAGES_IN_FLIGHT_PER_WORKER, Lane


def entry(index: int) -> tuple[InferenceRequest, Future]:
    return InferenceRequest("m", 1, {"x": np.full((1, 1), index, np.float32)}, deadline=1e12), Future()


def test_a_lone_request_is_taken_at_once() -> None:
    lane = Lane(max_requests_per_message=64)
    lane.add(entry(0), workers=1, max_waiting=100)
    taken = lane.take()
    assert taken is not None and len(taken) == 1


def test_requests_wait_while_the_in_flight_limit_is_reached_then_leave_together() -> None:
    lane = Lane(max_requests_per_message=64)
    for index in range(MESSAGES_IN_FLIGHT_PER_WORKER):
        lane.add(entry(index), workers=1, max_waiting=100)
        assert lane.take() is not None
        lane.published()
    crowd = [entry(index) for index in range(10)]
    for item in crowd:
        lane.add(item, workers=1, max_waiting=100)
    assert lane.take() is None, "no slot is free: the crowd must wait"
    lane.completed()
    taken = lane.take()
    assert taken == crowd, "one message, in arrival order"


def test_more_workers_allow_more_messages_in_flight() -> None:
    lane = Lane(max_requests_per_message=64)
    for index in range(MESSAGES_IN_FLIGHT_PER_WORKER * 3):
        lane.add(entry(index), workers=3, max_waiting=100)
        assert lane.take() is not None
        lane.published()
    lane.add(entry(99), workers=3, max_waiting=100)
    assert lane.take() is None


def test_one_taker_at_a_time_and_message_size_is_bounded() -> None:
    lane = Lane(max_requests_per_message=4)
    for index in range(10):
        lane.add(entry(index), workers=5, max_waiting=100)
    first = lane.take()
    assert first is not None and len(first) == 4
    assert lane.take() is None, "another taker must wait until the first published"
    lane.published()
    assert len(lane.take() or []) == 4


def test_requests_that_gave_up_are_skipped() -> None:
    lane = Lane(max_requests_per_message=64)
    gone, kept = entry(0), entry(1)
    lane.add(gone, workers=1, max_waiting=100)
    lane.add(kept, workers=1, max_waiting=100)
    gone[1].cancel()
    assert lane.take() == [kept]


def test_a_full_lane_refuses_at_once() -> None:
    lane = Lane(max_requests_per_message=64)
    for index in range(MESSAGES_IN_FLIGHT_PER_WORKER):
        lane.add(entry(index), workers=1, max_waiting=3)
        assert lane.take() is not None
        lane.published()
    for index in range(3):
        lane.add(entry(index), workers=1, max_waiting=3)
    with pytest.raises(ResourceExhausted, match="Too many requests waiting for model m"):
        lane.add(entry(9), workers=1, max_waiting=3)


def test_a_message_stops_taking_requests_once_it_holds_enough_bytes() -> None:
    lane = Lane(max_requests_per_message=64)
    half = MAX_COALESCED_BYTES // 2 // 4  # float32 elements in half the cap
    for elements in (half, half, half, 4 * half):
        request = InferenceRequest("m", 1, {"x": np.zeros((1, elements), np.float32)}, deadline=1e12)
        lane.add((request, Future()), workers=4, max_waiting=100)
    sizes = []
    while (taken := lane.take()) is not None:
        sizes.append([entry[0].inputs["x"].size // half for entry in taken])
        lane.published()
    assert sizes == [[1, 1], [1], [4]]  # a request larger than the cap still leaves, alone


def test_may_publish_says_whether_a_take_now_would_give_requests() -> None:
    """The api's event loop queues a small request and hands it to a thread only when may_publish() says a
    take() would publish it; otherwise a taker or a freed slot carries it (api.dataplane.inference)."""
    lane = Lane(max_requests_per_message=64)
    assert not lane.may_publish(), "nothing waits"
    lane.add(entry(0), workers=1, max_waiting=100)
    assert lane.may_publish()
    assert lane.take() is not None
    lane.add(entry(1), workers=1, max_waiting=100)
    assert not lane.may_publish(), "someone is taking: the taker's next take() carries it"
    lane.published()
    assert lane.may_publish()
    assert lane.take() is not None
    lane.published()
    lane.add(entry(2), workers=1, max_waiting=100)
    assert not lane.may_publish(), "every slot is in flight: the reply that frees one publishes it"
    lane.completed()
    assert lane.may_publish() and lane.take() is not None
