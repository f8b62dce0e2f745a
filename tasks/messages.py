"""Everything that crosses Redis between api and workers, as typed records (codec: tasks.wire).

Predict path: the api publishes a `PredictEnvelope` (the Celery task's one argument, JSON) of
`RequestEntry`s for one model version, and the worker answers with a `PredictReply` (the task's result,
msgpack) holding one `ComputedOutputs` or `RequestFailure` per request. Workers heartbeat a
`WorkerSnapshot` and record each model's `CatalogEntry` (tasks.registry); async jobs keep a `JobRecord`
(tasks.job_records) and queue their chunks as `QueuedChunk`s (tasks.job_chunks, tasks.job_queue), and the
failed chunks of a job with dead letters as `DeadLetter`s (tasks.dead_letters).

Claim check: Celery's Redis transport wraps every body in base64 inside JSON, and a 600 KB image costs
tens of milliseconds that way. So the envelope carries only names, types, shapes and offsets
(`TensorMeta`), and the tensors of all its requests travel as one raw byte string under
`payload_key(task_id)`. The api sends a large one as views of the request arrays (no copy; see
tasks.publisher). Encoded images travel encoded, as a BYTES tensor: Triton's serialization (each element's
4-byte little-endian length, then its bytes; inference.bytes_tensors) with the shape (N,); the worker
decodes them.

A new per-request field is one field of `RequestEntry` named as the `InferenceRequest` field it carries
(copied both ways by name); one the worker reports back is one field of `ComputedOutputs` (set where
the worker builds it, read into `InferenceResult` by `to_result`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from inference import bytes_tensors, dtypes
from inference.errors import ServingError
from inference.model_config import DEFAULT_MAX_QUEUE_SIZE
from inference.priorities import DEFAULT_PRIORITY, PLAIN, Priority, nearest_level
from inference.request import InferenceRequest, InferenceResult, Tensors
from inference.signature import ModelSignature
from inference.states import ModelReport, Residency, VersionReport, VersionState, VersionStatus
from tasks.wire import Message, Record, key

Payload = list[bytes | memoryview]  # the parts of one payload, in order
JOIN_BELOW_BYTES = 1 << 20  # a smaller payload is one joined string (one SET); a larger one, views (SET + APPENDs)

# --------------------------------------------------------------------------- predict: api -> worker


@dataclass(frozen=True, slots=True)
class TensorMeta(Record):
    """Where one input's bytes are in the message's payload. Wire: [name, precision, shape, offset, nbytes].
    A BYTES input's shape is its element count (N,)."""

    AS_ARRAY = True
    name: str
    precision: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class RequestEntry(Record):
    """One request of a predict message. Every field but `inputs` is the InferenceRequest field of its name."""

    request_id: str = field(metadata=key("id"))
    inputs: tuple[TensorMeta, ...]
    output_filter: list[str] | None = field(metadata=key("outputs"))
    deadline: float
    pinned: bool
    any_batch: bool = False
    queued_at: float = field(default=0.0, metadata=key("queued"))

    @staticmethod
    def of(request: InferenceRequest, inputs: tuple[TensorMeta, ...]) -> RequestEntry:
        return RequestEntry(inputs=inputs, **{name: getattr(request, name) for name in _CARRIED})

    def to_request(self, model: str, version: int, inputs: Tensors) -> InferenceRequest:
        return InferenceRequest(model, version, inputs, **{name: getattr(self, name) for name in _CARRIED})


_CARRIED = tuple(f.name for f in fields(RequestEntry) if f.name != "inputs")  # named as InferenceRequest's


@dataclass(frozen=True, slots=True)
class PredictEnvelope(Message):
    """The requests of one predict message, all for one model version, one priority level and one tenant (the
    worker's batcher schedules them by these: inference.fair_queue); their tensors are the payload. Messages
    from before priorities have none: the default level, no tenant."""

    WHAT = "predict message"
    model: str
    version: int
    deadline: float  # the latest of its requests': the message lives while any of them still waits
    requests: tuple[RequestEntry, ...]
    priority: int = DEFAULT_PRIORITY
    tenant: str = ""
    weight: int = 1  # the tenant's weight in the fair share of its level

    @property
    def scheduling(self) -> Priority:
        return Priority(self.priority, self.tenant, self.weight)

    @property
    def payload_size(self) -> int:
        """The bytes of the message's tensors, known before they are fetched."""
        return sum(meta.nbytes for entry in self.requests for meta in entry.inputs)

    @property
    def summary(self) -> str:
        """What Flower and logs show of the message."""
        return f"{self.model} v{self.version}: {len(self.requests)} request(s)"


def pack_requests(
    requests: list[InferenceRequest], precisions: dict[str, str], priority: Priority = PLAIN
) -> tuple[PredictEnvelope, Payload]:
    """One envelope and one payload for requests of the same model version and `priority`."""
    chunks: list[memoryview] = []
    offset = 0
    entries = []
    for request in requests:
        metas = []
        for name, array in request.inputs.items():
            if bytes_tensors.is_bytes_array(array):
                data = memoryview(bytes_tensors.serialize(array))
                meta = TensorMeta(name, bytes_tensors.BYTES, (array.size,), offset, len(data))
            else:
                data = _bytes_view(array)
                meta = TensorMeta(name, precisions[name], array.shape, offset, len(data))
            metas.append(meta)
            chunks.append(data)
            offset += len(data)
        entries.append(RequestEntry.of(request, tuple(metas)))
    first = requests[0]
    envelope = PredictEnvelope(
        first.model,
        first.version,
        max(r.deadline for r in requests),
        tuple(entries),
        priority.level,
        priority.tenant,
        priority.weight,
    )
    return envelope, [b"".join(chunks)] if offset < JOIN_BELOW_BYTES else chunks


def _bytes_view(array: np.ndarray) -> memoryview:
    """The array's bytes without copying them (unless it is not contiguous)."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def unpack_requests(envelope: PredictEnvelope, payload: bytes) -> list[InferenceRequest]:
    """The envelope's requests with their tensors (views of `payload`); ValueError if they do not fit it."""
    view = memoryview(payload)
    return [
        entry.to_request(envelope.model, envelope.version, {meta.name: _array(view, meta) for meta in entry.inputs})
        for entry in envelope.requests
    ]


def _array(view: memoryview, meta: TensorMeta) -> np.ndarray:
    if meta.offset < 0 or meta.nbytes < 0 or meta.offset + meta.nbytes > len(view):
        raise ValueError("tensor metadata does not match the payload")
    data = view[meta.offset : meta.offset + meta.nbytes]
    if meta.precision == bytes_tensors.BYTES:
        if len(meta.shape) != 1:
            raise ValueError(f"a BYTES tensor of shape {list(meta.shape)[:8]}, not (count,)")
        return bytes_tensors.deserialize(data, meta.shape[0])
    dtype = dtypes.by_name(meta.precision).numpy
    if meta.nbytes != math.prod(meta.shape) * dtype.itemsize:
        raise ValueError("tensor metadata does not match the payload")
    return np.frombuffer(data, dtype=dtype).reshape(meta.shape)


# --------------------------------------------------------------------------- predict: worker -> api


@dataclass(frozen=True, slots=True)
class OutputTensor(Record):
    """One output with its bytes (msgpack keeps them raw). Wire: [name, precision, shape, data]."""

    AS_ARRAY = True
    name: str
    precision: str
    shape: tuple[int, ...]
    data: bytes

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=dtypes.by_name(self.precision).numpy).reshape(self.shape)


@dataclass(frozen=True, slots=True)
class ComputedOutputs(Record):
    """A request's outputs with how they were computed."""

    version: int  # that computed them
    batch: int  # rows of that inference
    started: float  # time.time() when the inference was handed to OpenVINO
    infer_s: float
    outputs: tuple[OutputTensor, ...]

    @staticmethod
    def pack(outputs: Tensors, precisions: dict[str, str], **computed: Any) -> ComputedOutputs:
        """`computed`: the other fields."""
        tensors = tuple(
            OutputTensor(name, precisions[name], array.shape, np.ascontiguousarray(array).tobytes())
            for name, array in outputs.items()
        )
        return ComputedOutputs(outputs=tensors, **computed)

    def arrays(self) -> Tensors:
        return {tensor.name: tensor.array() for tensor in self.outputs}

    def to_result(self, worker: str, published_at: float) -> InferenceResult:
        """The api's result of a request published at `published_at` (time.time())."""
        return InferenceResult(
            self.version,
            self.arrays(),
            worker,
            self.batch,
            queue_s=max(self.started - published_at, 0.0),
            infer_s=self.infer_s,
        )


@dataclass(frozen=True, slots=True)
class RequestFailure(Record):
    """A request's error. Wire: {"error": [kind, message]}."""

    error: ServingError


ResultEntry = RequestFailure | ComputedOutputs  # told apart by the "error" key


@dataclass(frozen=True, slots=True)
class PredictReply(Message):
    """A predict message's result: which worker ran it and each request's answer, by request id."""

    WHAT = "predict result"
    worker: str
    results: dict[str, ResultEntry]


# --------------------------------------------------------------------------- worker registry


@dataclass(frozen=True, slots=True)
class ModelSnapshot(Record):
    """One model as a worker reports it. Wire: {"queue", "versions": {"<n>": {"state", "error_code",
    "error_message", "signature" (while it serves), "residency" (only when it may leave memory)}}, "error",
    "active", "max_queue_size", "empty" (only when set), "default_priority"}."""

    queue: str
    report: ModelReport

    def to_wire(self) -> dict[str, Any]:
        report = self.report
        return {
            "queue": self.queue,
            "versions": {str(v): _VersionEntry.of(version).to_wire() for v, version in report.versions.items()},
            "error": report.error,
            "active": report.active,
            "max_queue_size": report.max_queue_size,
            **({"empty": report.empty} if report.empty else {}),  # rare: kept out of every other heartbeat
            "default_priority": report.default_priority,
        }

    @classmethod
    def from_wire(cls, data: Any) -> ModelSnapshot:
        entry = _ModelEntry.from_wire(data)
        versions = {v: version.report(v) for v, version in entry.versions.items()}
        default_priority = nearest_level(entry.default_priority)
        report = ModelReport(versions, entry.error, entry.active, entry.max_queue_size, entry.empty, default_priority)
        return ModelSnapshot(entry.queue, report)


@dataclass(frozen=True, slots=True)
class _ResidencyEntry(Record):
    """inference.states.Residency. Wire: {"resident", "load_s", "since"}."""

    resident: bool
    load_s: float = 0.0
    since: float = 0.0

    def residency(self) -> Residency:
        return Residency(self.resident, self.load_s, self.since)


@dataclass(frozen=True, slots=True)
class _VersionEntry(Record):
    state: VersionState
    error_code: str
    error_message: str
    signature: ModelSignature | None = field(default=None, metadata=key("signature", omit_none=True))
    residency: _ResidencyEntry | None = field(default=None, metadata=key("residency", omit_none=True))

    @staticmethod
    def of(version: VersionReport) -> _VersionEntry:
        status = version.status
        where = version.residency
        residency = _ResidencyEntry(where.resident, where.load_s, where.loading_since) if where is not None else None
        return _VersionEntry(status.state, status.error_code, status.error_message, version.signature, residency)

    def report(self, version: int) -> VersionReport:
        status = VersionStatus(version, self.state, self.error_code, self.error_message)
        return VersionReport(status, self.signature, self.residency.residency() if self.residency else None)


@dataclass(frozen=True, slots=True)
class _ModelEntry(Record):
    """ModelSnapshot as read: its versions by number."""

    queue: str
    versions: dict[int, _VersionEntry]
    error: str = ""
    active: bool = True
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    empty: str = ""
    default_priority: int = DEFAULT_PRIORITY


@dataclass(frozen=True, slots=True)
class WorkerSnapshot(Message):
    """A worker's heartbeat document (`worker_key(id)`, refreshed while it lives)."""

    WHAT = "worker snapshot"
    worker_id: str = field(metadata=key("id"))
    device: str
    models: dict[str, ModelSnapshot]
    loaded: bool = False  # the models present at its start were loaded (or failed)
    draining: bool = False  # shutting down: finishing what it took, taking nothing new
    time: float = 0.0
    host: str = ""  # for `ovms status` (older workers send none)
    in_flight: int = 0  # predict messages it is running now


@dataclass(frozen=True, slots=True)
class CatalogEntry(Message):
    """A model some worker served, in the persistent catalog hash (tasks.registry)."""

    WHAT = "catalog entry"
    device: str
    versions: tuple[int, ...] = ()


# --------------------------------------------------------------------------- async jobs


@dataclass(frozen=True, slots=True)
class ChunkRef(Record):
    task_id: str = field(metadata=key("task"))
    rows: int


@dataclass(frozen=True, slots=True)
class JobRecord(Message):
    """A job as submitted (`ovms:job:<id>`); its progress is read from its chunks' results."""

    WHAT = "job record"
    model: str
    version: int  # named at submission, or the default then
    total: int  # samples
    queue: str
    created: float
    chunks: tuple[ChunkRef, ...]
    revoked: bool = False
    owner: str | None = None  # the submitting token's owner id, with bearer tokens
    pinned: bool = True  # the job named its version
    deadline: float | None = None  # None in records of older apis: created + --job_timeout_s; moved by a retry
    dead_letters: bool = False  # a failed chunk is kept for a retry (tasks.dead_letters) instead of failing the job
    callback: str | None = field(default=None, metadata=key("callback", omit_none=True))  # URL told of its end
    status_url: str | None = field(default=None, metadata=key("status_url", omit_none=True))  # absolute, for it
    tenant: str = ""  # the submitting token's tenant ("": no token file, or a record of an older api)


@dataclass(frozen=True, slots=True)
class QueuedChunk(Message):
    """One job chunk in a job queue (tasks.job_queue): a predict message of its own, with its job's id.
    The key "task" is also read by a Lua script there."""

    WHAT = "job chunk"
    task_id: str = field(metadata=key("task"))
    job_id: str = field(metadata=key("job"))
    nbytes: int = field(metadata=key("bytes"))
    envelope: PredictEnvelope
    dead_letters: bool = field(default=False, metadata=key("dl"))  # its job's: a failure is kept, not fatal


@dataclass(frozen=True, slots=True)
class DeadLetter(Message):
    """A failed chunk of a job with dead letters (tasks.dead_letters), as kept for a retry."""

    WHAT = "dead letter"
    chunk: str  # the QueuedChunk's JSON as it was queued: what a retry queues again (with a new deadline)
    error: str
    at: float  # when it failed, time.time()


def describe_failure(result: Any) -> str:
    """A failed task's stored result (Celery's exception dict) as one line."""
    if isinstance(result, dict) and "exc_type" in result:
        message = result.get("exc_message")
        if isinstance(message, (list, tuple)) and len(message) == 1:
            message = message[0]
        return f"{result['exc_type']}: {message}"
    return str(result)
