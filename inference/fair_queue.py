"""The order in which waiting requests are served: by priority level (with ageing, inference.priorities) and,
within a level, by deficit round robin between tenants, each tenant's requests in arrival order.

Deficit round robin (Shreedhar and Varghese): the tenants with requests waiting take turns; at the start of
its turn a tenant's deficit grows by its weight, and it is served while its next request costs no more than
its deficit (a request costs its rows). So over time each waiting tenant gets rows in proportion to its
weight, whatever the others send, and a tenant that sends nothing for a while saves no credit: its deficit
is dropped when it has nothing waiting.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from inference.priorities import Priority, standing


class Queued(Protocol):
    priority: Priority
    waiting_since: float  # time.monotonic() when it began to wait, in the api's lane included: what ages it

    @property
    def cost(self) -> int: ...


Q = TypeVar("Q", bound=Queued)


class _Level(Generic[Q]):
    """One level's waiting requests: a queue per tenant, and their turns."""

    def __init__(self) -> None:
        self.queues: dict[str, deque[Q]] = {}
        self.turns: deque[str] = deque()  # tenants with requests waiting; turns[0]'s turn is now or next
        self.deficit: dict[str, int] = {}
        self.weight: dict[str, int] = {}
        self.turn_open = False  # turns[0] got its weight for the turn in progress

    def add(self, item: Q, front: bool) -> None:
        tenant = item.priority.tenant
        queue = self.queues.get(tenant)
        if queue is None:
            queue = self.queues[tenant] = deque()
            self.turns.append(tenant)
            self.deficit[tenant] = 0
        self.weight[tenant] = max(1, item.priority.weight)
        if front:
            queue.appendleft(item)
        else:
            queue.append(item)

    def oldest(self, tenants: Callable[[str], bool]) -> float | None:
        """When the longest-waiting request of the `tenants` began to wait (None: they have none waiting)."""
        return min(
            (queue[0].waiting_since for tenant, queue in self.queues.items() if tenants(tenant)), default=None
        )

    def pop(self, fits: Callable[[Q], bool], tenants: Callable[[str], bool]) -> Q | None:
        """The next request, by deficit round robin, among each of the `tenants`' first request that `fits`."""
        found = {
            tenant: _first(queue, fits) if tenants(tenant) else None for tenant, queue in self.queues.items()
        }
        if all(index is None for index in found.values()):
            return None
        while True:
            tenant = self.turns[0]
            index = found[tenant]
            if index is not None:
                queue = self.queues[tenant]
                if not self.turn_open:
                    self.deficit[tenant] += self.weight[tenant]
                    self.turn_open = True
                if queue[index].cost <= self.deficit[tenant]:
                    item = queue[index]
                    del queue[index]
                    self.deficit[tenant] -= item.cost
                    if not queue:
                        self._leave(tenant)
                    return item
            self.turns.rotate(-1)
            self.turn_open = False

    def _leave(self, tenant: str) -> None:
        del self.queues[tenant], self.deficit[tenant], self.weight[tenant]
        self.turns.remove(tenant)
        self.turn_open = False


def _everyone(*_: object) -> bool:
    return True


def _first(queue: deque[Q], fits: Callable[[Q], bool]) -> int | None:
    return next((index for index, item in enumerate(queue) if fits(item)), None)


class FairQueue(Generic[Q]):
    """Waiting requests by level and tenant (see the module). Not thread-safe: its owner holds a lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._levels: dict[int, _Level[Q]] = {}
        self._count = 0
        self._clock = clock

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Q]:
        for level in self._levels.values():
            for queue in level.queues.values():
                yield from queue

    def push(self, item: Q) -> None:
        """At the back of its tenant's requests of its level."""
        self._level(item.priority.level).add(item, front=False)
        self._count += 1

    def push_front(self, items: list[Q]) -> None:
        """Back at the front of their tenants' requests, in this order (requests taken and given back)."""
        for item in reversed(items):
            self._level(item.priority.level).add(item, front=True)
        self._count += len(items)

    def next_level(self, allowed: Callable[[int, str], bool] = _everyone) -> int | None:
        """The level served next: the best standing of each level's longest-waiting request (ageing), among
        the requests of the kinds (level, tenant) `allowed`."""
        now = self._clock()
        waiting = []
        for number, level in self._levels.items():
            oldest = level.oldest(lambda tenant, number=number: allowed(number, tenant))
            if oldest is not None:
                waiting.append(standing(number, now - oldest))
        return min(waiting)[1] if waiting else None

    def pop(
        self, level: int, fits: Callable[[Q], bool] = _everyone, allowed: Callable[[int, str], bool] = _everyone
    ) -> Q | None:
        """The next request of `level` (by deficit round robin between tenants) that `fits`, among the
        requests of the kinds (level, tenant) `allowed`; or None."""
        waiting = self._levels.get(level)
        item = waiting.pop(fits, lambda tenant: allowed(level, tenant)) if waiting is not None else None
        if item is not None:
            self._count -= 1
        return item

    def _level(self, number: int) -> _Level[Q]:
        level = self._levels.get(number)
        if level is None:
            level = self._levels[number] = _Level()
        return level
