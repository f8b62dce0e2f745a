"""A job's samples split into the chunks its model's workers run between predicts (tasks.job_queue): each
chunk one predict message of its own, with a random id so that logs, which show task ids, show no job id."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np

from inference.bytes_tensors import payload_nbytes
from inference.request import InferenceRequest
from tasks.messages import Payload, QueuedChunk, pack_requests
from tasks.registry import Target

CHUNK_ROWS = 256
CHUNK_BYTES = 2 << 20  # a chunk's tensors: a predict waits at most for one chunk's inference


def chunk_task_id() -> str:
    """A job chunk's task id: random, not derived from its job's id, since Flower and logs show task ids
    and a job id is what gives access to the job. The job record lists its chunks' ids."""
    return uuid.uuid4().hex


def split(
    job_id: str,
    target: Target,
    inputs: dict[str, np.ndarray],
    deadline: float,
    pinned: bool,
    tenant: str,
    dead_letters: bool,
) -> Iterator[tuple[QueuedChunk, int, Payload]]:
    """The job's chunks (at most CHUNK_ROWS samples and, above one sample, CHUNK_BYTES), each with its
    number of samples and its tensor payload."""
    total = int(next(iter(inputs.values())).shape[0])
    sample_bytes = sum(payload_nbytes(array[:1]) for array in inputs.values())
    rows = max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(sample_bytes, 1)))
    precisions = {name: spec.precision for name, spec in target.signature.inputs.items()}
    for start in range(0, total, rows):
        task_id = chunk_task_id()
        part = {name: array[start : start + rows] for name, array in inputs.items()}
        request_id = f"{task_id}.0"
        request = InferenceRequest(
            target.model,
            target.version,
            part,
            deadline=deadline,
            request_id=request_id,
            pinned=pinned,
            any_batch=True,
            tenant=tenant,
        )
        envelope, payload = pack_requests([request], precisions)
        nbytes = sum(payload_nbytes(array) for array in part.values())
        chunk = QueuedChunk(task_id, job_id, nbytes, envelope, dead_letters)
        yield chunk, int(next(iter(part.values())).shape[0]), payload
