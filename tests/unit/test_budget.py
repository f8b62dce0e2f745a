"""The in-flight byte budget: what fits is held, what does not is refused at once, a lone request always fits."""

from __future__ import annotations

import pytest

from inference.errors import ResourceExhausted
from tasks.budget import ByteBudget

MIB = 1 << 20


def test_requests_are_held_while_they_fit_and_refused_beyond() -> None:
    budget = ByteBudget(4 * MIB, "this api (--max_inflight_mb)")
    with budget.hold(3 * MIB), budget.hold(1 * MIB):
        with pytest.raises(ResourceExhausted) as refused:
            budget.reserve(1)
        assert "this api (--max_inflight_mb): 4.0 MiB held" in refused.value.message
        assert budget.held_bytes == 4 * MIB
    assert budget.held_bytes == 0


def test_a_lone_request_larger_than_the_budget_is_held() -> None:
    budget = ByteBudget(4 * MIB, "a worker")
    with budget.hold(100 * MIB), pytest.raises(ResourceExhausted):
        budget.reserve(1)
    with budget.hold(100 * MIB):
        assert budget.held_bytes == 100 * MIB


def test_bytes_are_released_when_the_request_fails() -> None:
    budget = ByteBudget(4 * MIB, "a worker")
    with pytest.raises(ValueError), budget.hold(3 * MIB):
        raise ValueError("inference failed")
    assert budget.held_bytes == 0


def test_what_may_not_be_refused_is_counted_beyond_the_limit() -> None:
    budget = ByteBudget(4 * MIB, "a worker")
    with budget.hold(3 * MIB):
        budget.reserve(3 * MIB, refuse=False)  # an async job's chunk: no client waits to retry it
        assert budget.held_bytes == 6 * MIB
        budget.release(3 * MIB)
