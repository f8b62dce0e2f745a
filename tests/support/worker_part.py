"""The workers' part in in-process tests of the api side: a model that doubles its input, answered with the
workers' own codecs (tasks.messages) and stored through the Celery result backend as a worker stores it."""

from __future__ import annotations

import time

from celery import states
from celery.app.task import Context

from inference.errors import ServingError
from inference.request import InferenceRequest
from inference.signature import ModelSignature, TensorSpec
from tasks.app import app
from tasks.messages import ComputedOutputs, PredictReply, RequestFailure, ResultEntry
from tasks.registry import Target

DOUBLER = Target(
    "doubler",
    1,
    ModelSignature({"x": TensorSpec("x", "FP32", (-1, 2))}, {"y": TensorSpec("y", "FP32", (-1, 2))}),
    "ovms.TEST.doubler",
)


def doubled(request: InferenceRequest) -> ComputedOutputs:
    """The worker's result entry for a request to DOUBLER: y = 2 x."""
    x = request.inputs["x"]
    return ComputedOutputs.pack(
        {"y": x * 2}, {"y": "FP32"}, version=request.version, batch=x.shape[0], started=time.time(), infer_s=0.001
    )


def failed(error: ServingError) -> RequestFailure:
    """The worker's result entry for a request that failed with `error`."""
    return RequestFailure(error)


def store_reply(task_id: str, worker_id: str, entries: dict[str, ResultEntry], reply_to: str = "") -> None:
    """Store a message's reply (request id -> result entry) as the worker's result backend does: pushed to the
    waiting api's reply list if it has one (a predict), else kept under the task's result key (a job chunk)."""
    request = Context(id=task_id, reply_to=reply_to) if reply_to else None
    app.backend.store_result(task_id, PredictReply(worker_id, entries).to_wire(), states.SUCCESS, request=request)
