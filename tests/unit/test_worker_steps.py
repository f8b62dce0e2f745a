"""The worker's bootsteps (tasks.worker_steps) in a Celery worker run in-process on a real Redis: where
they sit in Celery's boot order, what the worker publishes and consumes while it runs, and what a warm
shutdown (what SIGTERM asks for) leaves behind."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from celery.bootsteps import TERMINATE
from celery.contrib.testing.worker import start_worker
from celery.worker import WorkController, state
from celery.worker.components import Consumer, Pool

from inference.errors import NotFound
from inference.request import InferenceRequest
from ovms.settings import parse_command_line
from tasks.app import ServingApp, app, configure
from tasks.broker import EmbeddedRedis
from tasks.messages import pack_requests
from tasks.routing import payload_key, worker_key
from tasks.statistics import read_totals
from tasks.worker_steps import SERVING_STEPS, ModelManagement, ServingOptions

WORKER_ID = "CPU-test-1-abc"
STOP_TIMEOUT_S = 30.0


@pytest.fixture
def serving_app(broker: EmbeddedRedis) -> Iterator[ServingApp]:
    configure(broker.url)
    app.steps["worker"].update(SERVING_STEPS)
    yield app
    app.steps["worker"].difference_update(SERVING_STEPS)


@pytest.fixture
def worker(serving_app: ServingApp, broker: EmbeddedRedis, models_dir: Path) -> Iterator[WorkController]:
    argv = ["worker", "--model_name", "versioned", "--model_path", str(models_dir / "versioned")]
    settings = parse_command_line([*argv, "--broker_url", broker.url])
    serving = ServingOptions(settings, WORKER_ID, redis.Redis.from_url(broker.url), redis.Redis.from_url(broker.url))
    try:
        with start_worker(
            serving_app,
            pool="threads",
            concurrency=2,
            perform_ping_check=False,
            shutdown_timeout=STOP_TIMEOUT_S,
            hostname=f"{WORKER_ID}@test",
            serving=serving,
        ) as running:
            yield running
    finally:
        state.should_stop = None  # Celery's process-wide flag, set by the warm shutdown below


def test_the_steps_start_in_their_order_between_celerys_pool_and_its_consumer(worker: WorkController) -> None:
    order = [type(step) for step in worker.steps]
    assert [step for step in order if step in SERVING_STEPS] == list(SERVING_STEPS)
    assert order.index(Pool) < order.index(ModelManagement)
    assert order[-1] is Consumer


def test_a_running_worker_publishes_its_loaded_models_and_consumes_their_queue(
    worker: WorkController, serving_app: ServingApp, broker: EmbeddedRedis
) -> None:
    document = json.loads(redis.Redis.from_url(broker.url).get(worker_key(WORKER_ID)))
    assert (document["loaded"], document["draining"]) == (True, False)
    assert {v: s["state"] for v, s in document["models"]["versioned"]["versions"].items()} == {"2": "AVAILABLE"}
    assert list(serving_app.amqp.queues.consume_from) == ["ovms.CPU.versioned"]
    assert serving_app.worker_runtime is worker.runtime


def test_a_warm_shutdown_withdraws_the_worker_after_its_parts_stopped(
    worker: WorkController, serving_app: ServingApp, broker: EmbeddedRedis
) -> None:
    feeders = [thread for thread in threading.enumerate() if thread.name.startswith("jobs-")]
    assert feeders, "a job feeder runs for the model's queue"
    client = redis.Redis.from_url(broker.url)
    envelope, payload = pack_requests(
        [InferenceRequest("versioned", 2, {"x": np.ones((3, 4), np.float32)}, deadline=time.time() + 30)], {"x": "FP32"}
    )
    client.set(payload_key("t"), b"".join(payload))
    worker.runtime.serve("t", envelope)
    state.should_stop = 0  # what Celery's SIGTERM handler sets
    assert worker.blueprint.shutdown_complete.wait(STOP_TIMEOUT_S)
    assert worker.blueprint.state == TERMINATE
    assert client.get(worker_key(WORKER_ID)) is None
    assert read_totals(client, [("versioned", 2)])[0].inference_count == 3  # flushed at the latest on the way out
    assert serving_app.worker_runtime is None
    assert not any(thread.is_alive() for thread in feeders)
    batcher = worker.models.get("versioned", 2)
    with pytest.raises(NotFound):  # closed: the models went last
        batcher.submit({})
