"""The states of an async job (tasks.jobs), as the REST API and `ovms jobs` show them (Celery's names)."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "PENDING"  # no chunk has a result yet
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"  # a chunk failed, or the job passed its deadline
    PARTIAL = "PARTIAL"  # with "dead_letters" only: every chunk ended, some failed (a retry may run them again)
    REVOKED = "REVOKED"  # cancelled


COMPLETED = (JobState.SUCCESS, JobState.FAILURE, JobState.PARTIAL)  # ran to an end: it has a finishing time
FINAL = (*COMPLETED, JobState.REVOKED)  # nothing more will happen to it
