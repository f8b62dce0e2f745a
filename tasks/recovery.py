"""Recovery after workers stop serving, run by the registry's background thread (tasks.registry), never
on a request thread: what this api published to them (tasks.dispatcher) and the job chunks they had
taken (tasks.lost_chunks) are run again or failed, and requests waiting for a queue nobody consumes fail. While
someone watches an unfinished job (tasks.jobs), it also looks now and then for chunks of workers that died unseen."""

from __future__ import annotations

import logging

import redis

from tasks.dispatcher import Dispatcher
from tasks.jobs import JobStore
from tasks.lost_chunks import LostChunks

log = logging.getLogger("serving")


class WorkerLossRecovery:
    def __init__(self, dispatcher: Dispatcher, jobs: JobStore, lost_chunks: LostChunks) -> None:
        self._dispatcher = dispatcher
        self._jobs = jobs
        self._lost_chunks = lost_chunks

    def workers_gone(self, lost: set[str], queues: set[str]) -> None:
        """`lost`: workers whose heartbeat lapsed (what they held is lost); `queues`: the queues live
        workers still consume (see RegistryView)."""
        self._dispatcher.workers_gone(lost, queues)
        if lost:
            self._recover_jobs(lost)

    def refreshed(self) -> None:
        """After each background refresh: the chunks of workers that died unseen (JobStore.sweep_due)."""
        if self._jobs.sweep_due():
            self._recover_jobs(set())

    def _recover_jobs(self, lost: set[str]) -> None:
        try:
            self._lost_chunks.recover(lost)
        except (redis.RedisError, OSError) as exc:
            log.warning("Could not recover the job chunks of lost workers %s: %s", sorted(lost), exc)
