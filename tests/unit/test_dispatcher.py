"""The api's Dispatcher on a real Redis, with the test playing the workers: it takes the published message
from its queue, claims it and stores its result the way a worker does (tasks.claims, tasks.messages, the
Celery result backend), or vanishes with it. What a lost worker held is run once more, then fails; what
waits in a queue nobody consumes any more is taken back."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pytest
import redis
from celery import states

from inference.errors import DEADLINE_PASSED, NO_LIVE_WORKER, WORKER_LOST, DeadlineExceeded, Internal, Unavailable
from inference.priorities import Priority
from inference.request import InferenceRequest, InferenceResult
from tasks.app import app
from tasks.claims import claim, holders
from tasks.dispatcher import Dispatcher
from tasks.link import RedisLink
from tasks.messages import PredictEnvelope, unpack_requests
from tasks.queue_depth import queue_depths
from tasks.routing import payload_key, priority_queue, priority_queues
from tests.support.worker_part import DOUBLER, doubled, store_reply

WAIT_S = 5.0
WEIGHTS = {"heavy": 3}  # tenants' weights, as the api's token file gives them


@dataclass
class Taken:
    """A predict message as a worker took it from its queue."""

    task_id: str
    reply_to: str
    requests: list[InferenceRequest]  # none if its tensors were gone (a copy of it was answered already)
    queued_in: str  # the list it was taken from
    priority: int  # its properties.priority, which kombu reads
    envelope: PredictEnvelope


def take(store: redis.Redis, worker_id: str, queue: str = DOUBLER.queue) -> Taken:
    """Do what a worker does with the next message of `queue` before it infers: pop it (kombu pops from the
    right of its priority levels' lists, the highest level's first; waits for one), then fetch its tensors and
    claim it in one round trip (tasks.runtime)."""
    popped = store.brpop(priority_queues(queue), timeout=WAIT_S)
    assert popped is not None, f"nothing queued in {queue}"
    message = json.loads(popped[1])
    args, _, _ = json.loads(base64.b64decode(message["body"]))
    envelope = PredictEnvelope.from_wire(args[0])
    task_id, reply_to = message["headers"]["id"], message["properties"]["reply_to"]
    with store.pipeline(transaction=False) as pipe:
        pipe.get(payload_key(task_id))
        claim(pipe, reply_to, task_id, worker_id)
        payload = pipe.execute()[0]
    requests = unpack_requests(envelope, payload) if payload is not None else []
    return Taken(task_id, reply_to, requests, popped[0].decode(), message["properties"]["priority"], envelope)


def answer(taken: Taken, worker_id: str) -> None:
    """Store y = 2 x for each request of the message, as a worker does."""
    store_reply(taken.task_id, worker_id, {r.request_id: doubled(r) for r in taken.requests}, taken.reply_to)


def request(first: float, priority: int = 0, tenant: str = "") -> InferenceRequest:
    inputs = {"x": np.array([[first, first + 1]], np.float32)}
    return InferenceRequest(
        DOUBLER.model, DOUBLER.version, inputs, None, time.time() + 30, priority=priority, tenant=tenant
    )


@pytest.fixture
def dispatcher(store: redis.Redis, core_redis_url: str) -> Iterator[Dispatcher]:
    link = RedisLink(core_redis_url)
    link.start()
    dispatcher = Dispatcher(store, store, link, weights=WEIGHTS)
    dispatcher.start()
    yield dispatcher
    stopper = threading.Thread(target=dispatcher.stop)
    stopper.start()
    wake_up = app.backend.encode({"task_id": "none", "status": states.SUCCESS, "result": {}})  # answers nothing
    while stopper.is_alive():  # wake the listener from its blocking read, rather than wait for its timeout
        store.lpush(dispatcher.reply_to, wake_up)
        stopper.join(0.05)
    link.stop()


def queued(store: redis.Redis, queue: str = DOUBLER.queue) -> int:
    return queue_depths(store, [queue])[0]


def assert_doubled(sent: InferenceRequest, future: Future[InferenceResult], worker_id: str) -> None:
    result = future.result(timeout=WAIT_S)
    np.testing.assert_array_equal(result.outputs["y"], sent.inputs["x"] * 2)
    assert result.worker == worker_id


def test_each_request_of_a_message_gets_its_own_result(dispatcher: Dispatcher, store: redis.Redis) -> None:
    """Two messages in flight at most (one worker): the first two requests leave alone, the three that wait
    leave together once a reply frees a slot, and each gets its own answer."""
    sent = [request(10 * i) for i in range(5)]
    futures = [dispatcher.submit(DOUBLER, r) for r in sent]
    sizes = []
    while sum(sizes) < len(sent):
        taken = take(store, "worker-a")
        answer(taken, "worker-a")
        sizes.append(len(taken.requests))
    assert sizes == [1, 1, 3]
    for r, future in zip(sent, futures, strict=True):
        assert_doubled(r, future, "worker-a")
    assert holders(store, dispatcher.reply_to) == {}, "storing the result released the claims"


def test_enqueue_publishes_nothing_and_says_when_the_caller_must(dispatcher: Dispatcher, store: redis.Redis) -> None:
    """The event loop's path (api.dataplane.inference): enqueue() makes no Redis call; a request it says
    must be published leaves with publish_waiting(), one it does not leaves with the reply that frees a
    slot. Every request gets its own answer."""
    first, second, third, late = (request(10 * i) for i in range(4))
    futures = []
    for sent, must_publish in ((first, True), (second, True)):
        future, publish = dispatcher.enqueue(DOUBLER, sent)
        assert publish is must_publish and queued(store) == len(futures)
        dispatcher.publish_waiting(DOUBLER)
        futures.append(future)
    for sent in (third, late):  # both slots in flight: they wait in the lane, unpublished
        future, publish = dispatcher.enqueue(DOUBLER, sent)
        assert not publish
        futures.append(future)
    assert queued(store) == 2
    sizes = []
    while sum(sizes) < 4:
        taken = take(store, "worker-a")
        answer(taken, "worker-a")
        sizes.append(len(taken.requests))
    assert sizes == [1, 1, 2], "the waiting two left together when a reply freed a slot"
    for sent, future in zip((first, second, third, late), futures, strict=True):
        assert_doubled(sent, future, "worker-a")


def test_a_request_whose_deadline_passed_before_it_was_submitted_is_not_published(
    dispatcher: Dispatcher, store: redis.Redis
) -> None:
    """Always the same error (a worker's "before the request reached a worker" cannot overtake it), and no
    message spent on it."""
    expired = request(1)
    expired.deadline = time.time() - 0.001
    with pytest.raises(DeadlineExceeded, match=DEADLINE_PASSED):
        dispatcher.submit(DOUBLER, expired)
    assert queued(store) == 0


def test_a_message_that_cannot_be_published_fails_its_requests_and_frees_its_slot(
    dispatcher: Dispatcher, store: redis.Redis
) -> None:
    """Whatever stops a message from being published reaches its waiters at once (not at their deadline),
    and never raises: publishing also runs on the result listener (a reply that frees a slot publishes what
    waited), which must not stop. The lane stays usable."""
    broken = request(1)
    broken.inputs = {"x": np.array([["text, not bytes"]], dtype=object)}  # cannot be packed
    future, publish = dispatcher.enqueue(DOUBLER, broken)
    assert publish
    dispatcher.publish_waiting(DOUBLER)
    with pytest.raises(Internal, match="Publishing the request failed"):
        future.result(timeout=WAIT_S)
    assert queued(store) == 0
    for _ in range(3):  # more than the lane's two slots: the failed message gave its slot back
        sent = request(5)
        pending = dispatcher.submit(DOUBLER, sent)
        answer(take(store, "worker-a"), "worker-a")
        assert_doubled(sent, pending, "worker-a")


def test_a_message_whose_worker_was_lost_runs_once_more(dispatcher: Dispatcher, store: redis.Redis) -> None:
    sent = request(1)
    future = dispatcher.submit(DOUBLER, sent)
    first = take(store, "worker-a")
    assert holders(store, dispatcher.reply_to) == {first.task_id: "worker-a"}
    dispatcher.workers_gone({"worker-a"}, {DOUBLER.queue})
    assert queued(store) == 1 and not future.done(), "queued again for another worker"
    assert holders(store, dispatcher.reply_to) == {}, "the lost worker's claim is dropped"
    again = take(store, "worker-b")
    assert again.task_id == first.task_id
    answer(again, "worker-b")
    assert_doubled(sent, future, "worker-b")


def test_a_message_lost_with_a_second_worker_fails(dispatcher: Dispatcher, store: redis.Redis) -> None:
    future = dispatcher.submit(DOUBLER, request(1))
    take(store, "worker-a")
    dispatcher.workers_gone({"worker-a"}, {DOUBLER.queue})
    take(store, "worker-b")
    dispatcher.workers_gone({"worker-b"}, {DOUBLER.queue})
    with pytest.raises(Unavailable, match=WORKER_LOST):
        future.result(timeout=WAIT_S)
    assert queued(store) == 0, "not run a third time"


def test_a_lost_message_whose_queue_nobody_consumes_any_more_fails_at_once(
    dispatcher: Dispatcher, store: redis.Redis
) -> None:
    future = dispatcher.submit(DOUBLER, request(1))
    take(store, "worker-a")
    dispatcher.workers_gone({"worker-a"}, set())
    with pytest.raises(Unavailable, match=WORKER_LOST):
        future.result(timeout=WAIT_S)
    assert queued(store) == 0


def test_a_message_queued_where_nobody_consumes_is_withdrawn(dispatcher: Dispatcher, store: redis.Redis) -> None:
    future = dispatcher.submit(DOUBLER, request(1))
    assert queued(store) == 1
    dispatcher.workers_gone(set(), set())
    with pytest.raises(Unavailable, match=NO_LIVE_WORKER):
        future.result(timeout=WAIT_S)
    assert queued(store) == 0, "taken back out of the queue"


def test_messages_of_other_workers_and_consumed_queues_are_left_alone(
    dispatcher: Dispatcher, store: redis.Redis
) -> None:
    """Worker a is lost; worker b still runs its message, and a third message waits in a queue someone
    consumes: neither is touched."""
    held = request(1)
    held_future = dispatcher.submit(DOUBLER, held)
    by_b = take(store, "worker-b")
    waiting = request(5)
    waiting_future = dispatcher.submit(DOUBLER, waiting)
    dispatcher.workers_gone({"worker-a"}, {DOUBLER.queue})
    assert not held_future.done() and not waiting_future.done()
    assert queued(store) == 1 and holders(store, dispatcher.reply_to) == {by_b.task_id: "worker-b"}
    answer(by_b, "worker-b")
    answer(take(store, "worker-c"), "worker-c")
    assert_doubled(held, held_future, "worker-b")
    assert_doubled(waiting, waiting_future, "worker-c")


def test_a_late_answer_from_the_lost_worker_still_counts_once(dispatcher: Dispatcher, store: redis.Redis) -> None:
    """A worker that only stalled past its heartbeat answers after its message was queued again: that answer
    resolves the request; the copy run again finds its tensors gone, and its answer is dropped."""
    sent = request(3)
    future = dispatcher.submit(DOUBLER, sent)
    stalled = take(store, "worker-a")
    dispatcher.workers_gone({"worker-a"}, {DOUBLER.queue})
    answer(stalled, "worker-a")
    assert_doubled(sent, future, "worker-a")
    copy = take(store, "worker-b")
    assert copy.requests == []
    answer(copy, "worker-b")
    assert future.result(timeout=WAIT_S).worker == "worker-a"


def test_each_level_goes_to_its_own_list_in_a_message_of_its_own_with_its_tenant(
    dispatcher: Dispatcher, store: redis.Redis
) -> None:
    """kombu's priority lists: the highest level's is the queue itself, a worker pops it first."""
    low, plain, high = request(1, priority=3), request(2), request(3, priority=1, tenant="heavy")
    futures = [dispatcher.submit(DOUBLER, sent) for sent in (low, plain, high)]
    lengths = [int(store.llen(listed)) for listed in priority_queues(DOUBLER.queue)]
    assert lengths == [1, 1, 1], "one message per level, each in its level's list"
    taken = [take(store, "worker-a") for _ in range(3)]
    assert [t.queued_in for t in taken] == priority_queues(DOUBLER.queue)
    assert [t.priority for t in taken] == [0, 3, 6], "properties.priority: kombu's step of each list"
    assert [t.envelope.scheduling for t in taken] == [Priority(1, "heavy", 3), Priority(2), Priority(3)]
    for t in taken:
        answer(t, "worker-a")
    for sent, future in zip((low, plain, high), futures, strict=True):
        assert_doubled(sent, future, "worker-a")
        assert future.result().priority == (sent.priority or 2)


def test_a_request_of_another_kind_does_not_wait_for_the_slots_of_a_busy_one(
    dispatcher: Dispatcher, store: redis.Redis
) -> None:
    busy = [request(10 * i) for i in range(3)]
    futures = [dispatcher.submit(DOUBLER, sent) for sent in busy]
    assert queued(store) == 2, "both slots of the default level in flight; the third waits in the api"
    urgent = request(100, priority=1)
    others = [request(200, tenant="other"), request(300, tenant="heavy")]
    futures += [dispatcher.submit(DOUBLER, sent) for sent in [urgent, *others]]
    assert queued(store) == 5, "another level and other tenants are published at once"
    first = take(store, "worker-a")
    assert first.envelope.priority == 1, "the highest level's list is popped first"
    answer(first, "worker-a")
    while queued(store):  # the third of the busy kind is published once a reply frees one of its slots
        answer(take(store, "worker-a"), "worker-a")
    for sent, future in zip([*busy, urgent, *others], futures, strict=True):
        assert_doubled(sent, future, "worker-a")


def test_recovery_finds_a_message_in_its_levels_list(dispatcher: Dispatcher, store: redis.Redis) -> None:
    """Run again where it was queued; taken back from there when nobody consumes its queue any more."""
    lost = request(1, priority=3)
    lost_future = dispatcher.submit(DOUBLER, lost)
    first = take(store, "worker-a")
    dispatcher.workers_gone({"worker-a"}, {DOUBLER.queue})
    assert int(store.llen(priority_queue(DOUBLER.queue, 3))) == 1, "queued again in its level's list"
    answer(take(store, "worker-b"), "worker-b")
    assert_doubled(lost, lost_future, "worker-b")
    assert first.queued_in == priority_queue(DOUBLER.queue, 3)
    stranded = dispatcher.submit(DOUBLER, request(2, priority=1))
    dispatcher.workers_gone(set(), set())
    with pytest.raises(Unavailable, match=NO_LIVE_WORKER):
        stranded.result(timeout=WAIT_S)
    assert queued(store) == 0, "taken back out of its level's list"
