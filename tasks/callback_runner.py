"""The api process's callback thread: it claims due jobs from the shared schedule (tasks.job_hooks), looks
whether each has ended (whichever api or worker ended it: a job's end is read from Redis, not seen
happen; an unfinished job costs an EXISTS of its chunks' results), and hands the ended ones to a few
delivery threads that tell their callback URLs — never a request thread.

A failed attempt is due again after a back-off that doubles (from --callback_backoff_s, at most
MAX_BACKOFF_S); after --callback_attempts the delivery is `failed`. Every attempt is leased for its
timeout and a margin: an api that dies in the middle leaves the job to another once the lease is over.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from inference.errors import ServingError
from tasks import callback_delivery, job_hooks
from tasks.callback_targets import AllowList
from tasks.job_hooks import DELIVERED, FAILED, HOOK_CHECK_S, PENDING, Delivery
from tasks.job_states import FINAL
from tasks.job_status import JobStatus
from tasks.jobs import JobStore
from tasks.messages import JobRecord

log = logging.getLogger("serving")

POLL_S = 0.25  # how often the schedule is asked for due jobs
LOOK_BATCH = 256  # due jobs claimed at once: looking whether one ended costs a few Redis round trips
LOOK_LEASE_S = 10.0  # for looking at a batch; a job handed to a delivery thread is leased for its attempt
DELIVERY_THREADS = 8
# Deliveries to one receiver (scheme, host and port) at once in an api process: a receiver that never answers
# holds this many threads for --callback_timeout_s, and the others serve every other receiver meanwhile.
PER_RECEIVER = 2
RECEIVER_BUSY_WAIT_S = 0.5  # a job whose receiver is busy is looked at again this much later
LEASE_MARGIN_S = 5.0
MAX_BACKOFF_S = 600.0
MAX_ERRORS_SENT = 10


@dataclass(frozen=True)
class CallbackConfig:
    allow: AllowList
    secret: bytes
    attempts: int
    backoff_s: float
    timeout_s: float


class CallbackRunner:
    def __init__(self, client: redis.Redis, jobs: JobStore, config: CallbackConfig) -> None:
        self._client = client
        self._jobs = jobs
        self._config = config
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ovms-callbacks", daemon=True)
        self._pool = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="ovms-callback")
        self._free = threading.Semaphore(DELIVERY_THREADS)  # a delivery is handed on only to an idle thread
        self._receivers: Counter[str] = Counter()  # deliveries under way per receiver
        self._receivers_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Claim nothing more; attempts under way end within their timeout (their lease covers them)."""
        self._stop.set()
        self._thread.join(LOOK_LEASE_S)
        self._pool.shutdown(wait=False)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                due, leased_until = job_hooks.claim(self._client, LOOK_LEASE_S, LOOK_BATCH)
                for job_id in due:
                    self._look_at(job_id, leased_until)
            except (redis.RedisError, OSError) as exc:  # what it claimed comes back when the lease runs out
                log.debug("Callbacks: Redis failed: %s", exc)
            except Exception:
                log.exception("Callbacks: looking at the due jobs failed")

    def _look_at(self, job_id: str, leased_until: float) -> None:
        """Has the job ended? Then deliver on an idle thread (or look again at the next poll if none is
        idle); else look again in HOOK_CHECK_S."""
        current = job_hooks.read(self._client, job_id)
        try:
            record, ended = self._jobs.ended(job_id)
        except ServingError:  # expired (NotFound), or a record this api cannot read
            job_hooks.drop(self._client, job_id)
            return
        if current is None or record.callback is None:
            job_hooks.drop(self._client, job_id)
        elif current.state != PENDING:
            job_hooks.record(self._client, job_id, current, None, "")  # nothing to tell (unless re-armed)
        elif not ended:
            job_hooks.later(self._client, job_id, HOOK_CHECK_S, leased_until)
        elif not self._take_receiver(record.callback):
            job_hooks.later(self._client, job_id, RECEIVER_BUSY_WAIT_S)
        elif not self._free.acquire(blocking=False):
            self._leave_receiver(record.callback)
            job_hooks.later(self._client, job_id, 0)
        else:
            self._hand_on(job_id, record)

    def _take_receiver(self, url: str) -> bool:
        """Count a delivery to `url`'s receiver, unless PER_RECEIVER are under way already."""
        receiver = _receiver(url)
        with self._receivers_lock:
            if self._receivers[receiver] >= PER_RECEIVER:
                return False
            self._receivers[receiver] += 1
            return True

    def _leave_receiver(self, url: str) -> None:
        receiver = _receiver(url)
        with self._receivers_lock:
            self._receivers[receiver] -= 1
            if self._receivers[receiver] <= 0:
                del self._receivers[receiver]

    def _hand_on(self, job_id: str, record: JobRecord) -> None:
        """To the idle delivery thread reserved for it, under the job's lock (else another api is telling it),
        with the delivery state read again under the lock (another api may have told it just before)."""
        lease_s = self._config.timeout_s + LEASE_MARGIN_S
        token, handed = None, False
        try:
            token = job_hooks.lock(self._client, job_id, lease_s)
            current = job_hooks.read(self._client, job_id) if token else None
            if token and current is not None and current.state == PENDING:
                job_hooks.later(self._client, job_id, lease_s)
                self._pool.submit(self._deliver, job_id, record, current, token)
                handed = True
            else:
                job_hooks.later(self._client, job_id, HOOK_CHECK_S)  # a no-op once it was told and dropped
        finally:
            if not handed:
                self._free.release()
                self._leave_receiver(record.callback)
                if token:
                    job_hooks.unlock(self._client, job_id, token)

    def _deliver(self, job_id: str, record: JobRecord, current: Delivery, token: str) -> None:
        try:
            status = self._jobs.status_of(job_id, record)
            if status.state not in FINAL:  # it ended as far as its chunks go, but not as a job: look again
                job_hooks.later(self._client, job_id, HOOK_CHECK_S)
            else:
                self._attempt(job_id, record, status, current)
        except (redis.RedisError, OSError) as exc:  # the lease runs out: the job is looked at again then
            log.warning("Callback of job %s: Redis failed: %s", job_id, exc)
        except Exception:
            log.exception("Callback of job %s failed", job_id)
        finally:
            self._free.release()
            self._leave_receiver(record.callback)
            with contextlib.suppress(redis.RedisError, OSError):  # else its lease runs out
                job_hooks.unlock(self._client, job_id, token)

    def _attempt(self, job_id: str, record: JobRecord, status: JobStatus, current: Delivery) -> None:
        config = self._config
        delivery = f"{job_id}.{current.delivery}"
        assert record.callback is not None
        error = callback_delivery.post(
            record.callback, _document(status, delivery), delivery, config.secret, config.allow,
            config.timeout_s,
        )  # fmt: skip
        attempts = current.attempts + 1
        now = time.time()
        if error is None:
            job_hooks.record(self._client, job_id, Delivery(current.delivery, DELIVERED, attempts, "", now), None,
                             "callbacks_delivered")  # fmt: skip
        elif attempts >= config.attempts:
            log.warning("Callback of job %s failed %d times; giving up: %s", job_id, attempts, error)
            job_hooks.record(self._client, job_id, Delivery(current.delivery, FAILED, attempts, error, now), None,
                             "callbacks_failed")  # fmt: skip
        else:
            wait_s = min(config.backoff_s * 2 ** (attempts - 1), MAX_BACKOFF_S)
            job_hooks.record(self._client, job_id, Delivery(current.delivery, PENDING, attempts, error, now), wait_s,
                             "callback_retries")  # fmt: skip


def _receiver(url: str | None) -> str:
    """Who receives a callback: its URL's scheme, host and port."""
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{parts.port or ''}"


def _document(status: JobStatus, delivery: str) -> dict[str, Any]:
    """What a callback sends: the job's end, counts and links (never its outputs)."""
    return {
        "id": status.job_id,
        "delivery": delivery,
        "state": status.state,
        "model": status.model,
        "version": status.version,
        "counts": {
            "samples": status.total,
            "done": status.done,
            "failed": status.failed,
            "failed_chunks": status.failed_chunks,
        },
        "errors": status.errors[:MAX_ERRORS_SENT],
        # Paths, not the URLs the submitter saw: those were built from its request's Host header, which a
        # client chooses, and a signed callback must not carry a link to a host of the client's choice.
        "status_url": f"/v1/jobs/{status.job_id}",
        "result_url": f"/v1/jobs/{status.job_id}/result",
        "created": status.created,
        "finished_at": status.finished if status.finished is not None else time.time(),
    }
