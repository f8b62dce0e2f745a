"""Cluster-wide inference statistics in Redis: workers add what they counted (inference.statistics), apis
read the totals, so every api answers the same figures however many apis and workers there are.

Layout: one hash per model version, `ovms:stats:<model>:<version>`, whose fields are the VersionCounts
fields (`success_count`, `queue_ns`, …, `last_inference_ms`), its loads and unloads (`load:<reason>`,
`unload:<reason>`, `load_ms`, `load_le:<seconds>`: inference.statistics.LIFECYCLE_FIELDS) and four per batch
size seen, `batch:<size>:count` and `batch:<size>:compute_{input,infer,output}_ns`; at most MAX_FIELDS fields.

Each worker adds its counts once a second in its heartbeat's pipeline (tasks.heartbeat: no round trip of
their own), one small Lua script per model version with counts: HINCRBY of each field, the latest
`last_inference_ms`, and the hash's expiry. A worker that dies loses what it counted since its last flush
(at most a second); a flush that fails is given back and added to the next one. The same pipeline renews
the expiry of the versions the worker serves, so a loaded version keeps its totals while it is idle; a
version no worker has served for STATISTICS_TTL_S is forgotten. Keys are only ever made for versions a
worker ran, never from a name a client sent.

The last minute (`ovms status`: requests per second and median latency): the same flush adds each
version's requests of the second to a hash per RECENT_SLOT_S slot, `ovms:recent:<model>:<version>:<slot>`
(fields `fail` and `b<bucket>`, the successful requests by latency bucket, inference.statistics), which
expires soon after it leaves the window; read_recent merges the slots of the last minute.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from inference.statistics import (
    BATCH_FIELDS,
    LIFECYCLE_FIELDS,
    MAX_BATCH_SIZES,
    SCALAR_FIELDS,
    BatchCounts,
    InferenceStatistics,
    RecentCounts,
    VersionCounts,
    VersionKey,
    bucket_middle_ms,
)
from tasks.routing import PREFIX

STATISTICS_TTL_S = 86_400  # a version no worker served for a day loses its totals
MAX_FIELDS = len(SCALAR_FIELDS) + len(LIFECYCLE_FIELDS) + len(BATCH_FIELDS) * MAX_BATCH_SIZES
RECENT_SLOT_S = 10
RECENT_WINDOW_S = 60
RECENT_TTL_S = RECENT_WINDOW_S + 3 * RECENT_SLOT_S

# KEYS[1]: the version's hash. ARGV: expiry (s), last_inference_ms, most fields, how many scalar fields,
# then `field delta` for each of those (the ones that moved), then per batch size the size and a delta per
# BATCH_FIELDS. A batch size the hash does not hold yet is added only while the hash has room for it (looked
# up only when the hash could not take them all). What is not ours is left alone, and never fails the
# heartbeat's pipeline: a key holding something else than a hash, a field something else than an integer.
_ADD = """
local key = KEYS[1]
local kind = redis.call('TYPE', key).ok
if kind ~= 'hash' and kind ~= 'none' then
  return 0
end
local limit = tonumber(ARGV[3])
local first_batch = 5 + 2 * tonumber(ARGV[4])
for i = 5, first_batch - 1, 2 do
  redis.pcall('HINCRBY', key, ARGV[i], ARGV[i + 1])
end
local names = {NAMES}
local room = redis.call('HLEN', key) + (#ARGV - first_batch + 1) / (#names + 1) * #names <= limit
for i = first_batch, #ARGV, #names + 1 do
  local prefix = 'batch:' .. ARGV[i] .. ':'
  if room or redis.call('HEXISTS', key, prefix .. names[1]) == 1 or redis.call('HLEN', key) + #names <= limit then
    for j = 1, #names do
      redis.pcall('HINCRBY', key, prefix .. names[j], ARGV[i + j])
    end
  end
end
local last = tonumber(ARGV[2])
if last > (tonumber(redis.call('HGET', key, 'last_inference_ms')) or 0) then
  redis.call('HSET', key, 'last_inference_ms', last)
end
redis.call('EXPIRE', key, ARGV[1])
return 1
""".replace("NAMES", ", ".join(f"'{name}'" for name in BATCH_FIELDS))


def statistics_key(model: str, version: int) -> str:
    return f"{PREFIX}:stats:{model}:{version}"


@contextmanager
def flushing(pipe: Pipeline, statistics: InferenceStatistics, served: Iterable[VersionKey]) -> Iterator[None]:
    """Queue on `pipe` the addition of the counts taken from `statistics` and the renewal of the served
    versions' totals; the counts are given back if the block (which executes `pipe`) raises."""
    taken = statistics.take()
    for (model, version), counts in taken.items():
        _add(pipe, statistics_key(model, version), counts)
    _add_recent(pipe, statistics.take_recent(), time.time())
    for model, version in served:
        pipe.expire(statistics_key(model, version), STATISTICS_TTL_S)  # no key is made for one with none
    try:
        yield
    except BaseException:
        statistics.give_back(taken)
        raise


def _add(pipe: Pipeline, key: str, counts: VersionCounts) -> None:
    scalars = [
        (name, value) for name in SCALAR_FIELDS if name != "last_inference_ms" and (value := getattr(counts, name))
    ]
    scalars += [(name, value) for name, value in counts.lifecycle.items() if value]
    args: list[int | str] = [STATISTICS_TTL_S, counts.last_inference_ms, MAX_FIELDS, len(scalars)]
    for name, value in scalars:
        args += [name, value]
    for size, batch in counts.batches.items():
        args += [size, *(getattr(batch, name) for name in BATCH_FIELDS)]
    pipe.eval(_ADD, 1, key, *args)


def recent_key(model: str, version: int, slot: int) -> str:
    return f"{PREFIX}:recent:{model}:{version}:{slot}"


def _add_recent(pipe: Pipeline, recent: dict[VersionKey, RecentCounts], now: float) -> None:
    slot = int(now // RECENT_SLOT_S)
    for (model, version), counts in recent.items():
        key = recent_key(model, version, slot)
        fields = {f"b{bucket}": count for bucket, count in counts.latency.items()}
        if counts.fail:
            fields["fail"] = counts.fail
        for name, count in fields.items():
            pipe.hincrby(key, name, count)
        pipe.expire(key, RECENT_TTL_S)


@dataclass(frozen=True)
class RecentWindow:
    """A version's requests over the last `seconds` (up to RECENT_WINDOW_S), cluster-wide."""

    succeeded: int
    failed: int
    seconds: float
    p50_ms: float | None  # median latency of the successful ones (None without any), within 10 %

    @property
    def per_second(self) -> float:
        return (self.succeeded + self.failed) / self.seconds


def read_recent(client: redis.Redis, versions: list[VersionKey], now: float) -> list[RecentWindow]:
    """Each version's last minute (the slots that began within RECENT_WINDOW_S of `now`), in one round trip."""
    slots = _recent_slots(now)
    with client.pipeline(transaction=False) as pipe:
        for model, version in versions:
            for slot in slots:
                pipe.hgetall(recent_key(model, version, slot))
        replies = pipe.execute(raise_on_error=False)
    seconds = recent_seconds(now)
    windows = []
    for index in range(len(versions)):
        latency: dict[int, int] = {}
        failed = 0
        for fields in replies[index * len(slots) : (index + 1) * len(slots)]:
            for name, value in fields.items() if isinstance(fields, dict) else ():
                name, count = name.decode(errors="replace"), _integer(value)
                if name == "fail":
                    failed += count
                elif name[1:].isascii() and name[1:].isdigit() and name.startswith("b"):
                    latency[int(name[1:])] = latency.get(int(name[1:]), 0) + count
        windows.append(RecentWindow(sum(latency.values()), failed, seconds, _median_ms(latency)))
    return windows


def _recent_slots(now: float) -> range:
    last = int(now // RECENT_SLOT_S)
    return range(last - RECENT_WINDOW_S // RECENT_SLOT_S + 1, last + 1)


def recent_seconds(now: float) -> float:
    """How long the last minute's figures read at `now` span: from the start of its first slot, between
    RECENT_WINDOW_S - RECENT_SLOT_S and RECENT_WINDOW_S."""
    return now - _recent_slots(now)[0] * RECENT_SLOT_S


def _median_ms(latency: dict[int, int]) -> float | None:
    """The middle of the bucket holding the median request."""
    total, seen = sum(latency.values()), 0
    for bucket in sorted(latency):
        seen += latency[bucket]
        if 2 * seen >= total > 0:
            return bucket_middle_ms(bucket)
    return None


def read_totals(client: redis.Redis, versions: list[VersionKey]) -> list[VersionCounts]:
    """The cluster-wide counts of each version (zeros for one never counted), in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for model, version in versions:
            pipe.hgetall(statistics_key(model, version))
        return [_counts(fields) for fields in pipe.execute(raise_on_error=False)]


def read_fields(client: redis.Redis, versions: list[VersionKey], names: tuple[str, ...]) -> list[tuple[int, ...]]:
    """Some fields of each version's totals (0 for one not counted, or not an integer), in one round trip:
    what a Prometheus scrape reads, rather than whole hashes of up to MAX_FIELDS fields."""
    with client.pipeline(transaction=False) as pipe:
        for model, version in versions:
            pipe.hmget(statistics_key(model, version), names)
        replies = pipe.execute(raise_on_error=False)
    return [
        tuple(_integer(value) for value in reply) if isinstance(reply, list) else (0,) * len(names) for reply in replies
    ]


def _integer(value: bytes | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _counts(fields: dict[bytes, bytes] | redis.ResponseError) -> VersionCounts:
    """A version's hash as counts; a field that is not ours, or not an integer, is skipped, as is a key that
    holds something else than a hash."""
    counts = VersionCounts()
    if isinstance(fields, redis.ResponseError):
        return counts
    for raw_name, raw_value in fields.items():
        try:
            name, value = raw_name.decode(), int(raw_value)
        except (UnicodeDecodeError, ValueError):
            continue
        if name in SCALAR_FIELDS:
            setattr(counts, name, value)
            continue
        if name in LIFECYCLE_FIELDS:
            counts.lifecycle[name] = value
            continue
        kind, _, rest = name.partition(":")
        size, _, field = rest.partition(":")
        if kind == "batch" and size.isascii() and size.isdigit() and field in BATCH_FIELDS:
            batch = counts.batches.setdefault(int(size), BatchCounts())
            setattr(batch, field, value)
    return counts
