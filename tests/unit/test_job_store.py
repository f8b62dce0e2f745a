"""The api's JobStore on a real Redis, with the test playing the workers through the job queue's own
functions (tasks.job_queue) and storing chunk results as a worker's job feeder does: submission and its
limits, status and progress, cancelling, owners, the recovery of chunks whose worker died, and dead letters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import redis

from inference.errors import WORKER_LOST, Internal, InvalidArgument, NotFound, ServingError, TenantOverLimit
from tasks import dead_letters, job_backlog, job_queue
from tasks.heartbeat import Heartbeat
from tasks.job_chunks import CHUNK_ROWS
from tasks.job_retry import NothingToRetry
from tasks.jobs import JobBacklogFull, JobLimits, JobOptions, JobStore, JobTooLarge
from tasks.lost_chunks import LostChunks
from tasks.messages import QueuedChunk, unpack_requests
from tasks.routing import job_key, job_queue_for, job_taken_key, payload_key
from tasks.settings import JobSettings
from tests.support.worker_part import DOUBLER, doubled, failed, store_reply

QUEUE = job_queue_for(DOUBLER.queue)
TTL_S = 600
ROW_BYTES = 8  # one sample: two float32


def samples(count: int, first: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.arange(first, first + 2 * count, dtype=np.float32).reshape(count, 2)}


def job_store(client: redis.Redis, **limits: int) -> JobStore:
    """A store with the server's default limits, but for the ones given."""
    defaults = JobLimits.from_settings(JobSettings())
    return JobStore(client, TTL_S, dataclasses.replace(defaults, **limits))


def lost_chunks(client: redis.Redis) -> LostChunks:
    """What an api's recovery runs when workers die, with the server's default job timeout."""
    return LostChunks(client, TTL_S, JobSettings().job_timeout_s)


def alive(client: redis.Redis, worker_id: str) -> str:
    """A worker whose heartbeat is current (written by the workers' own Heartbeat)."""
    Heartbeat(client, worker_id, "CPU", dict).publish()
    return worker_id


def take(client: redis.Redis, worker_id: str) -> tuple[bytes, QueuedChunk]:
    taken = job_queue.take(client, QUEUE, worker_id, wait_s=1.0)
    assert taken is not None, "no chunk queued"
    return taken


def store_result(client: redis.Redis, worker_id: str, chunk: QueuedChunk, error: ServingError | None = None) -> None:
    """Compute y = 2 x for a taken chunk (or fail it with `error`) and store the result as a job feeder does."""
    [request] = unpack_requests(chunk.envelope, client.get(payload_key(chunk.task_id)))
    store_reply(chunk.task_id, worker_id, {request.request_id: doubled(request) if error is None else failed(error)})


def run_chunk(client: redis.Redis, worker_id: str, error: ServingError | None = None) -> QueuedChunk:
    """What a worker's job feeder does with the next chunk: take it, run it, store its result, finish it."""
    raw, chunk = take(client, worker_id)
    store_result(client, worker_id, chunk, error)
    job_queue.finish(client, QUEUE, worker_id, raw, chunk)
    return chunk


def run_all(client: redis.Redis, worker_id: str) -> int:
    ran = 0
    while client.llen(QUEUE):
        run_chunk(client, worker_id)
        ran += 1
    return ran


def test_a_job_is_split_into_chunks_and_progresses_to_success(store: redis.Redis) -> None:
    jobs = job_store(store)
    worker = alive(store, "worker-a")
    inputs = samples(2 * CHUNK_ROWS + 10)
    job_id = jobs.submit(DOUBLER, inputs)
    status = jobs.status(job_id)
    assert (status.state, status.done, status.total, status.finished) == ("PENDING", 0, 2 * CHUNK_ROWS + 10, None)
    assert store.llen(QUEUE) == 3
    run_chunk(store, worker)
    status = jobs.status(job_id)
    assert (status.state, status.done, status.versions) == ("STARTED", CHUNK_ROWS, [1])
    assert run_all(store, worker) == 2
    status = jobs.status(job_id)
    assert (status.state, status.done, status.errors) == ("SUCCESS", status.total, [])
    assert status.finished is not None and status.finished >= status.created
    result = jobs.result(job_id)
    np.testing.assert_array_equal(np.concatenate(list(result.parts("y"))), inputs["x"] * 2)
    assert jobs.recent() == [job_id]


def test_a_chunk_that_fails_fails_its_job_with_its_error(store: redis.Redis) -> None:
    jobs = job_store(store)
    worker = alive(store, "worker-a")
    job_id = jobs.submit(DOUBLER, samples(CHUNK_ROWS + 1))
    run_chunk(store, worker)
    run_chunk(store, worker, InvalidArgument("sample 300 is not a number"))
    status = jobs.status(job_id)
    assert (status.state, status.errors) == ("FAILURE", ["sample 300 is not a number"])
    assert status.finished is not None


def test_a_cancelled_job_is_revoked_and_its_other_chunks_are_to_be_dropped(store: redis.Redis) -> None:
    jobs = job_store(store)
    worker = alive(store, "worker-a")
    job_id = jobs.submit(DOUBLER, samples(CHUNK_ROWS + 1))
    run_chunk(store, worker)
    jobs.cancel(job_id)
    assert jobs.status(job_id).state == "REVOKED"
    _, chunk = take(store, worker)
    assert store.exists(job_queue.stop_key(chunk.job_id)), "the worker is told to drop the rest"


def test_cancelling_a_finished_job_keeps_its_state(store: redis.Redis) -> None:
    jobs = job_store(store)
    job_id = jobs.submit(DOUBLER, samples(3))
    run_all(store, alive(store, "worker-a"))
    jobs.cancel(job_id)
    assert jobs.status(job_id).state == "SUCCESS"


def test_a_job_is_visible_to_its_owner_only(store: redis.Redis) -> None:
    jobs = job_store(store)
    mine = jobs.submit(DOUBLER, samples(3), owner="alice")
    theirs = jobs.submit(DOUBLER, samples(3), owner="bob")
    assert jobs.status(mine, owner="alice").job_id == mine
    unknown = "0" * 32
    with pytest.raises(NotFound) as not_found:
        jobs.status(unknown, owner="alice")
    for call in (jobs.status, jobs.result, jobs.cancel):
        with pytest.raises(NotFound) as refused:
            call(theirs, owner="alice")
        assert refused.value.message == not_found.value.message.replace(unknown, theirs), "no hint that it exists"
    assert jobs.status(theirs).state == "PENDING", "not cancelled by another owner"
    assert jobs.recent(owner="alice") == [mine]
    assert set(jobs.recent()) == {mine, theirs}


@pytest.mark.parametrize("job_id", ["", "xyz", "0" * 31, "A" * 32, "../" + "0" * 32, "0" * 32 + "*"])
def test_a_malformed_job_id_is_not_found(store: redis.Redis, job_id: str) -> None:
    with pytest.raises(NotFound):
        job_store(store).status(job_id)


def test_a_job_over_the_job_limit_is_refused_as_too_large(store: redis.Redis) -> None:
    jobs = job_store(store, max_job_bytes=10 * ROW_BYTES)
    with pytest.raises(JobTooLarge, match="--job_max_mb"):
        jobs.submit(DOUBLER, samples(11))
    jobs.submit(DOUBLER, samples(10))


def test_a_job_larger_than_the_whole_backlog_is_too_large_not_retried(store: redis.Redis) -> None:
    jobs = job_store(store, max_backlog_bytes=10 * ROW_BYTES)
    with pytest.raises(JobTooLarge, match="--job_backlog_mb"):
        jobs.submit(DOUBLER, samples(11))


def test_the_backlog_refuses_jobs_until_queued_ones_have_run(store: redis.Redis) -> None:
    jobs = job_store(store, max_backlog_bytes=10 * ROW_BYTES)
    jobs.submit(DOUBLER, samples(6))
    with pytest.raises(JobBacklogFull, match="--job_backlog_mb") as full:
        jobs.submit(DOUBLER, samples(6))
    assert full.value.retry_after_s > 0
    assert store.llen(QUEUE) == 1, "a refused job queues nothing"
    run_all(store, alive(store, "worker-a"))
    jobs.submit(DOUBLER, samples(6))


def test_a_tenant_s_job_samples_are_limited_until_its_chunks_end(store: redis.Redis) -> None:
    """A tenant's samples in unfinished jobs count against its job_samples, apart from other tenants'; a
    job alone beyond the limit is too large (413), not worth a retry."""
    jobs = job_store(store)
    first = jobs.submit(DOUBLER, samples(CHUNK_ROWS + 44), tenant="acme", samples=500)  # two chunks
    assert jobs.status(first).tenant == "acme" and jobs.status(first).to_dict()["tenant"] == "acme"
    assert job_backlog.tenant_samples(store, "acme") == CHUNK_ROWS + 44
    with pytest.raises(TenantOverLimit, match="tenant acme is over its 500 job samples queued") as over:
        jobs.submit(DOUBLER, samples(201), tenant="acme", samples=500)
    assert (over.value.limit, over.value.retry_after_s, over.value.http_status) == ("job_samples", 10, 429)
    assert "300 queued, this job 201" in over.value.message
    jobs.submit(DOUBLER, samples(200), tenant="acme", samples=500)  # exactly up to the limit
    jobs.submit(DOUBLER, samples(400), tenant="beta", samples=500)  # another tenant's are its own
    jobs.submit(DOUBLER, samples(400))  # and a job without a tenant counts for none
    with pytest.raises(JobTooLarge, match="501 samples are more than tenant acme's 500"):
        jobs.submit(DOUBLER, samples(501), tenant="acme", samples=500)
    run_all(store, alive(store, "worker-a"))
    assert job_backlog.tenant_samples(store, "acme") == 0
    assert store.hlen(job_backlog.TENANT_SAMPLES) == 0 and store.hlen(job_backlog.TENANT_CHUNKS) == 0
    jobs.submit(DOUBLER, samples(500), tenant="acme", samples=500)


def test_a_tenant_s_samples_of_chunks_that_never_end_drop_out_at_their_deadline(store: redis.Redis) -> None:
    job_store(store, timeout_s=0).submit(DOUBLER, samples(300), tenant="acme", samples=500)
    assert job_backlog.tenant_samples(store, "acme") == 300
    job_store(store).submit(DOUBLER, samples(500), tenant="acme", samples=500)
    assert job_backlog.tenant_samples(store, "acme") == 500


def test_a_job_not_done_by_its_deadline_fails(store: redis.Redis) -> None:
    jobs = job_store(store, timeout_s=0)
    job_id = jobs.submit(DOUBLER, samples(3))
    status = jobs.status(job_id)
    assert status.state == "FAILURE" and "--job_timeout_s" in status.errors[0]


def test_a_job_record_expires_with_the_results(store: redis.Redis) -> None:
    job_id = job_store(store).submit(DOUBLER, samples(3))
    [record] = [key for key in store.scan_iter(f"*{job_id}*")]
    assert 0 < store.ttl(record) <= TTL_S


def test_a_dead_workers_chunk_is_queued_again_once(store: redis.Redis) -> None:
    jobs = job_store(store)
    inputs = samples(CHUNK_ROWS + 1)
    job_id = jobs.submit(DOUBLER, inputs)
    _, lost = take(store, "worker-dead")  # it never heartbeats: it died
    lost_chunks(store).recover()
    survivor = alive(store, "worker-b")
    again = run_chunk(store, survivor)
    assert again.task_id == lost.task_id, "queued again at the head of the queue"
    run_all(store, survivor)
    assert jobs.status(job_id).state == "SUCCESS"
    np.testing.assert_array_equal(np.concatenate(list(jobs.result(job_id).parts("y"))), inputs["x"] * 2)


def test_a_chunk_lost_with_a_second_worker_fails_its_job(store: redis.Redis) -> None:
    jobs = job_store(store, max_backlog_bytes=10 * ROW_BYTES)
    job_id = jobs.submit(DOUBLER, samples(6))
    take(store, "worker-dead")
    lost_chunks(store).recover()
    take(store, "worker-dead-too")
    lost_chunks(store).recover()
    status = jobs.status(job_id)
    assert status.state == "FAILURE" and any(WORKER_LOST in error for error in status.errors)
    assert store.llen(QUEUE) == 0
    jobs.submit(DOUBLER, samples(6))  # admitted: the lost chunk left the backlog


def test_a_chunk_whose_result_was_stored_before_its_worker_died_is_done(store: redis.Redis) -> None:
    jobs = job_store(store, max_backlog_bytes=10 * ROW_BYTES)
    job_id = jobs.submit(DOUBLER, samples(6))
    _, chunk = take(store, "worker-dead")
    store_result(store, "worker-dead", chunk)  # and died before leaving its taken list
    lost_chunks(store).recover()
    assert store.llen(QUEUE) == 0, "not run again"
    assert jobs.status(job_id).state == "SUCCESS"
    jobs.submit(DOUBLER, samples(6))  # admitted: the chunk left the backlog


def test_a_live_workers_chunks_are_left_alone_unless_it_is_reported_lost(store: redis.Redis) -> None:
    jobs = job_store(store)
    worker = alive(store, "worker-a")
    jobs.submit(DOUBLER, samples(3))
    take(store, worker)
    lost_chunks(store).recover()
    assert store.llen(QUEUE) == 0, "its heartbeat is current: still running it"
    lost_chunks(store).recover({worker})  # its heartbeat lapsed as the registry saw it, though the key is still there
    assert store.llen(QUEUE) == 1


def test_a_stored_record_this_api_cannot_read_is_internal_not_the_callers_fault(store: redis.Redis) -> None:
    store.set(job_key("0" * 32), b'{"format": 2}')
    with pytest.raises(Internal, match="Malformed job record: format 2"):
        job_store(store).status("0" * 32)


def test_a_malformed_chunk_is_dropped_by_the_worker_that_takes_it(store: redis.Redis) -> None:
    store.lpush(QUEUE, b'{"task": "t", "job": "j"}')
    assert job_queue.take(store, QUEUE, "worker-a", wait_s=0.5) is None
    assert store.llen(QUEUE) == 0 and store.llen(job_taken_key(QUEUE, "worker-a")) == 0


# --------------------------------------------------------------------------- dead letters

DEAD_LETTERS = JobOptions(dead_letters=True)


def bury_next(client: redis.Redis, worker_id: str, error: ServingError) -> QueuedChunk:
    """What a job feeder does with a chunk of a job with dead letters whose inference fails: bury it (its
    tensors kept), store its failure, leave the taken list."""
    raw, chunk = take(client, worker_id)
    dead_letters.bury(client, raw, chunk, error.message, TTL_S)
    store_reply(chunk.task_id, worker_id, {f"{chunk.task_id}.0": failed(error)})
    job_queue.finish(client, QUEUE, worker_id, raw, chunk, keep_payload=True)
    return chunk


def backlog_bytes(client: redis.Redis) -> int:
    return int(client.get(job_backlog.TOTAL) or 0)


def test_with_dead_letters_a_failed_chunk_waits_for_a_retry_and_the_job_ends_partial(store: redis.Redis) -> None:
    jobs = job_store(store)
    worker = alive(store, "worker-a")
    inputs = samples(2 * CHUNK_ROWS + 1)
    job_id = jobs.submit(DOUBLER, inputs, options=DEAD_LETTERS)
    run_chunk(store, worker)
    bury_next(store, worker, Internal("out of memory"))
    assert jobs.status(job_id).state == "STARTED", "a failed chunk does not end the job"
    run_chunk(store, worker)
    status = jobs.status(job_id)
    assert (status.state, status.done, status.failed, status.failed_chunks) == (
        "PARTIAL",
        CHUNK_ROWS + 1,
        CHUNK_ROWS,
        1,
    )
    assert status.dead_letters == [
        {"chunk": 1, "samples": [CHUNK_ROWS, 2 * CHUNK_ROWS], "error": "out of memory", "attempts": 1}
    ]
    assert status.finished is not None and status.errors == ["out of memory"]
    assert backlog_bytes(store) == CHUNK_ROWS * ROW_BYTES, "its tensors are kept, and counted"

    assert jobs.retry(job_id) == 1
    assert jobs.status(job_id).state == "STARTED"
    with pytest.raises(NothingToRetry, match="no dead letters"):
        jobs.retry(job_id)  # a second retry queues nothing twice
    run_chunk(store, worker)
    assert jobs.status(job_id).state == "SUCCESS"
    np.testing.assert_array_equal(np.concatenate(list(jobs.result(job_id).parts("y"))), inputs["x"] * 2)
    assert backlog_bytes(store) == 0 and not list(store.scan_iter("ovms:dead:in:*"))


def test_a_retry_that_fails_again_counts_the_attempt_and_stays_dead(store: redis.Redis) -> None:
    jobs = job_store(store)
    worker = alive(store, "worker-a")
    job_id = jobs.submit(DOUBLER, samples(3), options=DEAD_LETTERS)
    bury_next(store, worker, InvalidArgument("corrupt"))
    jobs.retry(job_id)
    bury_next(store, worker, InvalidArgument("still corrupt"))
    status = jobs.status(job_id)
    assert status.state == "PARTIAL" and status.dead_letters[0]["attempts"] == 2, status
    assert status.dead_letters[0]["error"] == "still corrupt"


def test_a_chunk_lost_with_two_workers_is_a_dead_letter_and_a_retry_runs_it(store: redis.Redis) -> None:
    jobs = job_store(store)
    job_id = jobs.submit(DOUBLER, samples(3), options=DEAD_LETTERS)
    take(store, "worker-dead")
    lost_chunks(store).recover()
    take(store, "worker-dead-too")
    lost_chunks(store).recover()
    status = jobs.status(job_id)
    assert status.state == "PARTIAL" and WORKER_LOST in status.dead_letters[0]["error"], status
    jobs.retry(job_id)
    run_chunk(store, alive(store, "worker-b"))
    assert jobs.status(job_id).state == "SUCCESS"


def test_cancel_discards_dead_letters_and_a_job_without_them_has_nothing_to_retry(store: redis.Redis) -> None:
    jobs = job_store(store)
    worker = alive(store, "worker-a")
    job_id = jobs.submit(DOUBLER, samples(3), options=DEAD_LETTERS)
    bury_next(store, worker, Internal("boom"))
    jobs.cancel(job_id)
    assert jobs.status(job_id).state == "PARTIAL", "an ended job keeps its state"
    assert backlog_bytes(store) == 0, "its dead letters' tensors are gone, and their backlog share"
    with pytest.raises(NothingToRetry, match="tensors of its dead letters are gone"):
        jobs.retry(job_id)

    plain = jobs.submit(DOUBLER, samples(3))
    run_chunk(store, worker, Internal("boom"))
    with pytest.raises(NothingToRetry, match="not submitted with"):
        jobs.retry(plain)


def test_a_job_has_ended_once_every_chunk_has_a_result_or_it_passed_its_deadline(store: redis.Redis) -> None:
    jobs = job_store(store)
    worker = alive(store, "worker-a")
    job_id = jobs.submit(DOUBLER, samples(CHUNK_ROWS + 1))
    run_chunk(store, worker)
    assert not jobs.ended(job_id)[1]
    run_chunk(store, worker)
    record, ended = jobs.ended(job_id)
    assert ended and jobs.status_of(job_id, record).state == "SUCCESS"
    late = job_store(store, timeout_s=0).submit(DOUBLER, samples(3))
    record, ended = jobs.ended(late)
    assert ended and jobs.status_of(late, record).state == "FAILURE"
