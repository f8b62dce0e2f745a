"""The Celery task that runs predict messages on a worker."""

from __future__ import annotations

from typing import Any

from celery import Task

from tasks.app import app
from tasks.messages import PredictEnvelope
from tasks.routing import PREDICT_TASK

# Celery takes a repr of every task's return value (for its success log line and task events) before it
# knows whether anything will read it: of a reply of binary tensors that cost ≈ 7 % of a busy worker's
# time (a message of 10 `digits` answers: 439 µs at the default 1,024 characters, 41 µs at 64). Its first
# characters name the worker well enough.
RESULT_REPR_CHARS = 64


@app.task(name=PREDICT_TASK, bind=True, resultrepr_maxsize=RESULT_REPR_CHARS)
def predict(self: Task, envelope: dict[str, Any]) -> dict[str, Any]:
    """Run one message of predict requests for one model version (a tasks.messages.PredictEnvelope);
    returns its PredictReply. A malformed envelope fails the task with InvalidArgument. It runs on the
    runtime of the worker it was delivered to, found through its own app (tasks.app)."""
    worker = self.app.worker_runtime
    if worker is None:
        raise RuntimeError("this process is not a running ovms worker")
    with worker.predicts.serving():
        return worker.serve(self.request.id, PredictEnvelope.from_wire(envelope), self.request.reply_to or "").to_wire()
