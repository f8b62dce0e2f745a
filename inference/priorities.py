"""Request priority levels, as Triton numbers them: 1 is the highest, PRIORITY_LEVELS the lowest, 0 the model's
default level; async job chunks run below every level (JOB_LEVEL).

Ageing keeps lower levels from starving: a request that has waited counts one level higher per AGEING_S
waited, without bound (so after long enough it goes before fresh requests of the highest level); at equal
standing the higher level it was sent with goes first.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.errors import InvalidArgument

PRIORITY_LEVELS = 3
HIGHEST_PRIORITY = 1
DEFAULT_PRIORITY = 2  # a model's default level unless its config says otherwise
JOB_LEVEL = PRIORITY_LEVELS + 1  # async job chunks: below every level a request can ask for
AGEING_S = 1.0


@dataclass(frozen=True)
class Priority:
    """How a request is scheduled: its level, its tenant ("" = none) and that tenant's weight in the fair share
    of its level (inference.fair_queue)."""

    level: int = DEFAULT_PRIORITY
    tenant: str = ""
    weight: int = 1


PLAIN = Priority()  # a request that says nothing: the default level, no tenant


def priority_level(requested: int, default: int) -> int:
    """The level a request runs at: the one it asked for, or the model's `default` for 0 (none)."""
    if requested == 0:
        return default
    if not HIGHEST_PRIORITY <= requested <= PRIORITY_LEVELS:
        raise InvalidArgument(
            f"Invalid priority - {requested}: {HIGHEST_PRIORITY} (highest) to {PRIORITY_LEVELS} (lowest), "
            f"or 0 for the model's default level ({default})"
        )
    return requested


def nearest_level(level: int) -> int:
    """A level read from another process (a message, a heartbeat), brought into range if it is not."""
    return min(max(level, HIGHEST_PRIORITY), PRIORITY_LEVELS)


def standing(level: int, waited_s: float) -> tuple[int, int]:
    """Where a request that has waited `waited_s` stands in line: lower goes first (see the module's ageing)."""
    return level - int(max(waited_s, 0.0) // AGEING_S), level
