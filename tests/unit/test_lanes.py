"""The api-side coalescing lane: a lone request leaves at once, a crowd leaves together; kinds of request
(priority level, tenant) have their own slots, so none waits for another's messages."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest

from inference.errors import ResourceExhausted
from inference.priorities import PLAIN, Priority
from inference.request import InferenceRequest
from tasks.lanes import MAX_COALESCED_BYTES, MESSAGES_IN_FLIGHT_PER_WORKER, Entry, Lane, Taken

HIGH, LOW = Priority(1), Priority(3)


def entry(index: int) -> Entry:
    return InferenceRequest("m", 1, {"x": np.full((1, 1), index, np.float32)}, deadline=1e12), Future()


def add(lane: Lane, item: Entry, priority: Priority = PLAIN, workers: int = 1, max_waiting: int = 100) -> None:
    lane.add(item, priority, workers, max_waiting)


def take(lane: Lane) -> list[Entry] | None:
    taken = lane.take()
    return None if taken is None else taken.entries


def fill_slots(lane: Lane, priority: Priority = PLAIN, workers: int = 1) -> list[Taken]:
    """Publish one request per slot of `priority`'s kind, so that its next requests wait."""
    published = []
    for index in range(MESSAGES_IN_FLIGHT_PER_WORKER * workers):
        add(lane, entry(index), priority, workers)
        taken = lane.take()
        assert taken is not None
        lane.published()
        published.append(taken)
    return published


def test_a_lone_request_is_taken_at_once() -> None:
    lane = Lane(max_requests_per_message=64)
    add(lane, entry(0))
    taken = take(lane)
    assert taken is not None and len(taken) == 1


def test_requests_wait_while_the_in_flight_limit_is_reached_then_leave_together() -> None:
    lane = Lane(max_requests_per_message=64)
    published = fill_slots(lane)
    crowd = [entry(index) for index in range(10)]
    for item in crowd:
        add(lane, item)
    assert lane.take() is None, "no slot is free: the crowd must wait"
    lane.completed(published[0].kind)
    taken = take(lane)
    assert taken == crowd, "one message, in arrival order"


def test_more_workers_allow_more_messages_in_flight() -> None:
    lane = Lane(max_requests_per_message=64)
    fill_slots(lane, workers=3)
    add(lane, entry(99), workers=3)
    assert lane.take() is None


def test_one_taker_at_a_time_and_message_size_is_bounded() -> None:
    lane = Lane(max_requests_per_message=4)
    for index in range(10):
        add(lane, entry(index), workers=5)
    first = take(lane)
    assert first is not None and len(first) == 4
    assert lane.take() is None, "another taker must wait until the first published"
    lane.published()
    assert len(take(lane) or []) == 4


def test_requests_that_gave_up_are_skipped() -> None:
    lane = Lane(max_requests_per_message=64)
    gone, kept = entry(0), entry(1)
    add(lane, gone)
    add(lane, kept)
    gone[1].cancel()
    assert take(lane) == [kept]


def test_a_full_lane_refuses_at_once() -> None:
    lane = Lane(max_requests_per_message=64)
    fill_slots(lane)
    for index in range(3):
        add(lane, entry(index), max_waiting=3)
    with pytest.raises(ResourceExhausted, match="Too many requests waiting for model m"):
        add(lane, entry(9), max_waiting=3)
    add(lane, entry(10), HIGH, max_waiting=3)  # another kind: its own room


def test_a_message_stops_taking_requests_once_it_holds_enough_bytes() -> None:
    lane = Lane(max_requests_per_message=64)
    half = MAX_COALESCED_BYTES // 2 // 4  # float32 elements in half the cap
    for elements in (half, half, half, 4 * half):
        request = InferenceRequest("m", 1, {"x": np.zeros((1, elements), np.float32)}, deadline=1e12)
        add(lane, (request, Future()), workers=4)
    sizes = []
    while (taken := take(lane)) is not None:
        sizes.append([entry[0].inputs["x"].size // half for entry in taken])
        lane.published()
    assert sizes == [[1, 1], [1], [4]]  # a request larger than the cap still leaves, alone


def test_may_publish_says_whether_a_take_now_would_give_requests() -> None:
    """The api's event loop queues a small request and hands it to a thread only when may_publish() says a
    take() would publish it; otherwise a taker or a freed slot carries it (api.dataplane.inference)."""
    lane = Lane(max_requests_per_message=64)
    assert not lane.may_publish(), "nothing waits"
    add(lane, entry(0))
    assert lane.may_publish()
    first = lane.take()
    assert first is not None
    add(lane, entry(1))
    assert not lane.may_publish(), "someone is taking: the taker's next take() carries it"
    lane.published()
    assert lane.may_publish()
    assert lane.take() is not None
    lane.published()
    add(lane, entry(2))
    assert not lane.may_publish(), "every slot is in flight: the reply that frees one publishes it"
    add(lane, entry(3), HIGH)
    assert lane.may_publish(), "another kind has its own slots"
    assert take(lane) is not None
    lane.published()
    lane.completed(first.kind)
    assert lane.may_publish() and take(lane) is not None


def test_a_higher_level_is_published_at_once_beside_a_full_lower_one_and_first_when_both_may() -> None:
    lane = Lane(max_requests_per_message=64)
    published = fill_slots(lane, LOW)
    backlog = [entry(index) for index in range(5)]
    for item in backlog:
        add(lane, item, LOW)
    urgent = entry(100)
    add(lane, urgent, HIGH)
    taken = lane.take()
    assert taken is not None and taken.entries == [urgent] and taken.priority == HIGH, "one kind per message"
    lane.published()
    assert lane.take() is None, "the low backlog still waits for its own slots"
    later = entry(101)
    add(lane, later, HIGH)
    lane.completed(published[0].kind)  # now both kinds may publish: the higher level goes first
    first, second = lane.take(), None
    assert first is not None and first.entries == [later]
    lane.published()
    second = lane.take()
    assert second is not None and second.entries == backlog and second.priority == LOW


def test_tenants_of_a_level_have_their_own_slots() -> None:
    lane = Lane(max_requests_per_message=64)
    flood, other = Priority(2, "flood", 1), Priority(2, "other", 3)
    fill_slots(lane, flood)
    for index in range(6):
        add(lane, entry(index), flood)
    assert lane.take() is None
    mine = entry(50)
    add(lane, mine, other)
    taken = lane.take()
    assert taken is not None and taken.entries == [mine] and taken.priority == other, "not behind the flood"


def test_tenants_of_a_level_take_turns_when_both_may_publish() -> None:
    lane = Lane(max_requests_per_message=1)
    flood, other = Priority(2, "flood"), Priority(2, "other")
    for priority in (flood, other):  # each publishes once: "flood" longest ago
        add(lane, entry(0), priority, workers=5)
        assert lane.take() is not None
        lane.published()
    for index in range(3):
        add(lane, entry(index), flood, workers=5)
        add(lane, entry(index), other, workers=5)
    order = []
    while (taken := lane.take()) is not None:
        order.append(taken.priority.tenant)
        lane.published()
    assert order == ["flood", "other"] * 3


def test_abandon_takes_out_every_kind() -> None:
    lane = Lane(max_requests_per_message=64)
    fill_slots(lane, LOW)
    waiting = [entry(1), entry(2)]
    add(lane, waiting[0], LOW)
    add(lane, waiting[1], Priority(3, "t"))
    fill_slots(lane, HIGH)
    assert sorted(id(e) for e in lane.abandon()) == sorted(id(e) for e in waiting)
    assert not lane.may_publish()
