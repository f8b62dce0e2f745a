"""A job's record in Redis (`ovms:job:<id>`, a JobRecord) and the indexes that list jobs by creation time:
`ovms:jobs` for every job and `ovms:jobs:<owner>` for one owner's, with bearer tokens. Job ids are 32 lowercase
hex digits, checked before they make a Redis key."""

from __future__ import annotations

import re

import redis

from inference.errors import Internal, InvalidArgument, NotFound
from tasks.messages import JobRecord
from tasks.routing import job_key

JOB_INDEX = "ovms:jobs"
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex


def add(pipe: redis.client.Pipeline, job_id: str, record: JobRecord, ttl_s: int) -> None:
    """Store a new job's record for `ttl_s` and list it in the indexes (the caller executes the pipeline);
    index entries older than `ttl_s` go, as their records have."""
    pipe.set(job_key(job_id), record.to_json(), ex=ttl_s)
    for index in {JOB_INDEX, _index(record.owner)}:
        pipe.zadd(index, {job_id: record.created})
        pipe.zremrangebyscore(index, 0, record.created - ttl_s)
        pipe.expire(index, ttl_s)


def update(client: redis.Redis | redis.client.Pipeline, job_id: str, record: JobRecord) -> None:
    """Replace a job's record, keeping its expiry."""
    client.set(job_key(job_id), record.to_json(), keepttl=True)


def read(client: redis.Redis, job_id: str, owner: str | None = None) -> JobRecord:
    """A job's record; NotFound for a malformed id (before it makes a key) and, with `owner`, for another
    owner's job, in the same words as for no such job."""
    raw = client.get(job_key(job_id)) if JOB_ID.fullmatch(job_id) else None
    try:
        record = JobRecord.from_json(raw) if raw is not None else None
    except InvalidArgument as error:  # not the caller's fault: the stored record is not one this api reads
        raise Internal(error.message) from None
    if record is None or (owner is not None and record.owner != owner):
        raise NotFound(f"Job {job_id[:64]} is not found: unknown id, expired, or lost when Redis restarted empty")
    return record


def recent(client: redis.Redis, limit: int, owner: str | None = None) -> list[str]:
    """The ids of the latest jobs, newest first: every job's, or with `owner` that owner's only."""
    return [job_id.decode() for job_id in client.zrevrange(_index(owner), 0, limit - 1)]


def _index(owner: str | None) -> str:
    """The sorted set of job ids by creation time: every job's, or one owner's."""
    return JOB_INDEX if owner is None else f"{JOB_INDEX}:{owner}"
