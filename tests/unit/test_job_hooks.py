"""The shared schedule of job callbacks (tasks.job_hooks) on a real Redis, played by two api processes: a
due job is claimed by one of them at a time, comes back to the other when the first one's lease runs
out (it died), one api at a time holds its delivery, and an attempt is recorded only for the delivery that
is still being told."""

from __future__ import annotations

import time

import redis

from tasks import job_hooks
from tasks.job_hooks import DELIVERED, PENDING, Delivery
from tasks.routing import JOB_EVENTS_KEY

JOB = "0" * 32


def armed(client: redis.Redis) -> None:
    with client.pipeline() as pipe:
        job_hooks.arm(pipe, JOB, time.time(), 60)
        pipe.execute()


def test_a_due_job_is_claimed_by_one_api_until_its_lease_runs_out(store: redis.Redis) -> None:
    armed(store)
    assert job_hooks.claim(store, lease_s=0.3, limit=4)[0] == [JOB]
    assert job_hooks.claim(store, lease_s=0.3, limit=4)[0] == [], "leased to the first api"
    time.sleep(0.4)  # the first api died holding it
    assert job_hooks.claim(store, lease_s=0.3, limit=4)[0] == [JOB]


def test_an_attempt_is_recorded_only_while_its_delivery_is_the_current_one(store: redis.Redis) -> None:
    armed(store)
    [job], _ = job_hooks.claim(store, lease_s=30, limit=4)
    told = job_hooks.read(store, job)
    assert told is not None and (told.delivery, told.state, told.attempts) == (1, PENDING, 0)
    armed(store)  # a retry re-armed it while the first delivery was under way
    done = Delivery(told.delivery, DELIVERED, 1, "", time.time())
    assert not job_hooks.record(store, job, done, None, "callbacks_delivered")
    now = job_hooks.read(store, job)
    assert now is not None and (now.delivery, now.state) == (2, PENDING)
    assert store.zscore(job_hooks.SCHEDULE_KEY, job) is not None, "still to be told"
    assert job_hooks.record(store, job, Delivery(2, DELIVERED, 1, "", time.time()), None, "callbacks_delivered")
    assert store.zscore(job_hooks.SCHEDULE_KEY, job) is None
    assert store.hget(JOB_EVENTS_KEY, "callbacks_delivered") == b"1"


def test_one_api_at_a_time_holds_a_jobs_delivery(store: redis.Redis) -> None:
    first = job_hooks.lock(store, JOB, lease_s=30)
    assert first is not None and job_hooks.lock(store, JOB, lease_s=30) is None
    job_hooks.unlock(store, JOB, "someone else's token")
    assert job_hooks.lock(store, JOB, lease_s=30) is None, "only its holder unlocks it"
    job_hooks.unlock(store, JOB, first)
    assert job_hooks.lock(store, JOB, lease_s=30) is not None


def test_a_chunk_end_nudges_only_a_job_with_a_callback(store: redis.Redis) -> None:
    with store.pipeline() as pipe:
        job_hooks.arm(pipe, JOB, time.time() + 60, 60)
        job_hooks.nudge(pipe, JOB)
        job_hooks.nudge(pipe, "f" * 32)  # no callback
        pipe.execute()
    assert job_hooks.claim(store, lease_s=30, limit=4)[0] == [JOB]
    assert store.zcard(job_hooks.SCHEDULE_KEY) == 1


def test_a_look_that_found_the_job_unfinished_does_not_put_off_a_nudge_that_came_meanwhile(
    store: redis.Redis,
) -> None:
    armed(store)
    [job], leased_until = job_hooks.claim(store, lease_s=30, limit=4)
    job_hooks.later(store, job, 60, leased_until)
    assert store.zscore(job_hooks.SCHEDULE_KEY, job) > time.time() + 50, "no nudge: looked at again later"
    store.zadd(job_hooks.SCHEDULE_KEY, {job: time.time()})  # due again
    [job], leased_until = job_hooks.claim(store, lease_s=30, limit=4)
    with store.pipeline() as pipe:
        job_hooks.nudge(pipe, job)  # its last chunk ended while the api looked
        pipe.execute()
    job_hooks.later(store, job, 60, leased_until)
    assert store.zscore(job_hooks.SCHEDULE_KEY, job) <= time.time(), "still due at once"
