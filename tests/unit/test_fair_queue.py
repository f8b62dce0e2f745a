"""The order of waiting requests (inference.fair_queue): by level, with ageing, and by deficit round robin
between the tenants of a level, each tenant's requests in arrival order. A test clock stands in for time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from inference.fair_queue import FairQueue
from inference.priorities import AGEING_S, JOB_LEVEL, Priority


@dataclass
class Request:
    name: str
    priority: Priority
    waiting_since: float
    rows: int = 1
    key: str = "a"

    @property
    def cost(self) -> int:
        return self.rows


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def queue_with(clock: Clock, *requests: tuple[str, Priority, float]) -> FairQueue[Request]:
    """Requests (name, priority, seconds before now)."""
    waiting: FairQueue[Request] = FairQueue(clock)
    for name, priority, ago in requests:
        waiting.push(Request(name, priority, clock.now - ago))
    return waiting


def drain(waiting: FairQueue[Request]) -> list[str]:
    order = []
    while (level := waiting.next_level()) is not None:
        request = waiting.pop(level)
        assert request is not None
        order.append(request.name)
    assert len(waiting) == 0
    return order


def test_the_highest_level_goes_first_and_each_level_in_arrival_order() -> None:
    clock = Clock()
    waiting = queue_with(
        clock,
        ("low-1", Priority(3), 0.3),
        ("mid-1", Priority(2), 0.2),
        ("low-2", Priority(3), 0.1),
        ("high", Priority(1), 0.0),
        ("job", Priority(JOB_LEVEL), 0.5),
        ("mid-2", Priority(2), 0.0),
    )
    assert drain(waiting) == ["high", "mid-1", "mid-2", "low-1", "low-2", "job"]


def test_a_request_counts_one_level_higher_per_ageing_period_waited() -> None:
    """A level-3 request that waited 2 periods stands with fresh level-1 ones (which go first, being sent
    higher); after 3 periods it goes before them; a level-2 one after 1 period goes before fresh level-2."""
    clock = Clock()
    waiting = queue_with(
        clock,
        ("low-aged-2", Priority(3), 2.5 * AGEING_S),
        ("high", Priority(1), 0.0),
        ("mid", Priority(2), 0.0),
    )
    assert drain(waiting) == ["high", "low-aged-2", "mid"]
    waiting = queue_with(clock, ("low-aged-3", Priority(3), 3.2 * AGEING_S), ("high", Priority(1), 0.1))
    assert drain(waiting) == ["low-aged-3", "high"]
    waiting = queue_with(clock, ("job-aged", Priority(JOB_LEVEL), 4.1 * AGEING_S), ("high", Priority(1), 0.0))
    assert drain(waiting) == ["job-aged", "high"], "job chunks age too: they cannot starve"


def test_ageing_counts_from_when_a_request_began_to_wait() -> None:
    clock = Clock()
    waiting = queue_with(clock, ("low", Priority(3), 0.0))
    waiting.push(Request("high", Priority(1), clock.now))
    assert waiting.next_level() == 1
    clock.now += 3 * AGEING_S + 0.01  # both waited as long: the high one stands higher still
    assert waiting.next_level() == 1
    waiting.pop(1)
    assert waiting.next_level() == 3


def test_tenants_of_a_level_take_turns_whatever_one_of_them_sends() -> None:
    clock = Clock()
    waiting: FairQueue[Request] = FairQueue(clock)
    for index in range(20):
        waiting.push(Request(f"flood-{index}", Priority(2, "flood"), clock.now))
    for index in range(3):
        waiting.push(Request(f"other-{index}", Priority(2, "other"), clock.now))
    order = drain(waiting)
    assert order[:6] == ["flood-0", "other-0", "flood-1", "other-1", "flood-2", "other-2"]
    assert order[6:] == [f"flood-{index}" for index in range(3, 20)], "each tenant's requests in arrival order"


def test_weights_share_rows_in_proportion() -> None:
    clock = Clock()
    waiting: FairQueue[Request] = FairQueue(clock)
    for index in range(60):
        waiting.push(Request(f"a{index}", Priority(2, "a", 1), clock.now))
        waiting.push(Request(f"b{index}", Priority(2, "b", 3), clock.now, rows=1))
        waiting.push(Request(f"c{index}", Priority(2, "c", 2), clock.now, rows=2))
    served: Counter[str] = Counter()
    while served.total() < 60:
        request = waiting.pop(2)
        assert request is not None
        served[request.priority.tenant] += request.rows
    assert served == {"a": 10, "b": 30, "c": 20}, "rows in proportion to the weights 1 : 3 : 2"


def test_a_tenant_that_had_nothing_waiting_saves_no_credit() -> None:
    clock = Clock()
    waiting: FairQueue[Request] = FairQueue(clock)
    waiting.push(Request("quiet-0", Priority(2, "quiet"), clock.now))
    for index in range(4):
        waiting.push(Request(f"busy-{index}", Priority(2, "busy"), clock.now))
    assert [waiting.pop(2).name for _ in range(3)] == ["quiet-0", "busy-0", "busy-1"]  # type: ignore[union-attr]
    for index in range(1, 4):
        waiting.push(Request(f"quiet-{index}", Priority(2, "quiet"), clock.now))
    assert drain(waiting) == ["quiet-1", "busy-2", "quiet-2", "busy-3", "quiet-3"], "turns, not a burst of quiet"


def test_pop_takes_the_next_request_that_fits_and_keeps_the_others_in_place() -> None:
    clock = Clock()
    waiting: FairQueue[Request] = FairQueue(clock)
    waiting.push(Request("a-wide", Priority(2, "a"), clock.now, key="wide"))
    waiting.push(Request("a-narrow", Priority(2, "a"), clock.now, key="narrow"))
    waiting.push(Request("b-narrow", Priority(2, "b"), clock.now, key="narrow"))
    narrow = [waiting.pop(2, lambda r: r.key == "narrow") for _ in range(2)]
    assert [r.name for r in narrow if r] == ["a-narrow", "b-narrow"]
    assert waiting.pop(2, lambda r: r.key == "narrow") is None
    assert drain(waiting) == ["a-wide"]


def test_requests_given_back_go_first_in_their_order() -> None:
    clock = Clock()
    waiting = queue_with(clock, ("c", Priority(2), 0.0))
    first, second = Request("a", Priority(2), clock.now), Request("b", Priority(2), clock.now)
    waiting.push_front([first, second])
    assert len(waiting) == 3 and drain(waiting) == ["a", "b", "c"]


def test_only_the_kinds_allowed_are_served_and_their_own_waiting_ages_them() -> None:
    clock = Clock()
    waiting = queue_with(
        clock,
        ("flood-old", Priority(3, "flood"), 5 * AGEING_S),
        ("probe", Priority(3, "probe"), 0.0),
        ("high-flood", Priority(1, "flood"), 0.0),
    )
    not_flood = lambda level, tenant: tenant != "flood"  # noqa: E731
    assert waiting.next_level() == 3, "the flood's old request stands above level 1"
    assert waiting.next_level(lambda level, tenant: False) is None
    assert waiting.next_level(not_flood) == 3
    request = waiting.pop(3, allowed=not_flood)
    assert request is not None and request.name == "probe"
    assert waiting.next_level(not_flood) is None
    assert waiting.pop(1, allowed=not_flood) is None
    assert drain(waiting) == ["flood-old", "high-flood"]
