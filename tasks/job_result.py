"""A finished job's outputs, read from its chunks' results in the Celery result backend one chunk at a time."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import redis

from inference.errors import NotFound
from tasks.app import app
from tasks.messages import JobRecord, PredictReply, RequestFailure


class JobResult:
    """A finished job's outputs, read from Redis one chunk at a time (a download streams them, and never
    holds the whole result). Each output is its chunks' rows in order, as np.concatenate would join them."""

    def __init__(self, client: redis.Redis, record: JobRecord) -> None:
        self._client = client
        self._chunks = [(chunk.task_id, chunk.rows) for chunk in record.chunks]
        first = self._outputs(self._chunks[0][0])
        rows = sum(rows for _, rows in self._chunks)
        self.layout = {name: (array.dtype, (rows, *array.shape[1:])) for name, array in first.items()}

    def parts(self, name: str) -> Iterator[np.ndarray]:
        """Output `name` of each chunk in turn."""
        dtype, shape = self.layout[name]
        for task_id, rows in self._chunks:
            part = self._outputs(task_id)[name]
            if part.dtype != dtype or part.shape != (rows, *shape[1:]):
                raise RuntimeError(f"Output {name} of chunk {task_id} is {part.dtype}{part.shape}, not rows of {shape}")
            yield part

    def _outputs(self, task_id: str) -> dict[str, np.ndarray]:
        raw = self._client.get(app.backend.get_key_for_task(task_id))
        if raw is None:
            raise NotFound("The job's result has expired")
        entry = PredictReply.from_wire(app.backend.decode(raw)["result"]).results[f"{task_id}.0"]
        if isinstance(entry, RequestFailure):
            raise entry.error
        return entry.arrays()
