"""The typed messages of tasks.messages: each round-trips through JSON (msgpack for replies, whose outputs
are raw bytes), carries its format, reads the layout written before the format field existed, and refuses
malformed input with InvalidArgument."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from typing import Any

import msgpack
import numpy as np
import pytest

from inference.bytes_tensors import bytes_array
from inference.errors import DeadlineExceeded, InvalidArgument, NotFound
from inference.priorities import DEFAULT_PRIORITY, JOB_LEVEL, Priority
from inference.request import InferenceRequest
from inference.signature import ModelSignature, TensorSpec
from inference.states import ModelReport, Residency, VersionReport, VersionState, VersionStatus
from tasks.job_states import COMPLETED, FINAL, JobState
from tasks.messages import (
    CatalogEntry,
    ChunkRef,
    ComputedOutputs,
    JobRecord,
    ModelSnapshot,
    PredictEnvelope,
    PredictReply,
    QueuedChunk,
    RequestEntry,
    RequestFailure,
    WorkerSnapshot,
    pack_requests,
    unpack_requests,
)
from tasks.runtime import scheduled_as
from tasks.wire import FORMAT, Message

SIGNATURE = ModelSignature({"x": TensorSpec("x", "FP32", (-1, 4))}, {"y": TensorSpec("y", "FP32", (-1, 4))})


def _json(message: Message) -> dict[str, Any]:
    return json.loads(json.dumps(message.to_wire()))


def _envelope() -> tuple[PredictEnvelope, bytes]:
    requests = [
        InferenceRequest("m", 2, {"x": np.ones((1, 4), np.float32)}, None, 100.0, "t.0"),
        InferenceRequest(
            "m", 2, {"x": np.zeros((2, 4), np.float32)}, ["y"], 105.0, "t.1", pinned=False, queued_at=99.5
        ),
        InferenceRequest("m", 2, {"x": np.ones((3, 4), np.float32)}, None, 101.0, "t.2", any_batch=True),
    ]
    envelope, parts = pack_requests(requests, {"x": "FP32"})
    return envelope, b"".join(parts)


def _snapshot() -> WorkerSnapshot:
    report = ModelReport(
        {
            1: VersionReport(VersionStatus(1, VersionState.END, "UNKNOWN", "failed to load")),
            2: VersionReport(VersionStatus(2, VersionState.AVAILABLE), SIGNATURE),
            3: VersionReport(VersionStatus(3, VersionState.LOADING), SIGNATURE, Residency(False, 1.25, 12.0)),
        },
        error="",
        active=True,
        max_queue_size=7,
    )
    return WorkerSnapshot("CPU-host-1-abc", "CPU", {"m": ModelSnapshot("ovms.CPU.m", report)}, True, False, 12.5)


def _reply() -> PredictReply:
    outputs = ComputedOutputs.pack(
        {"y": np.arange(8, dtype=np.float32).reshape(2, 4)}, {"y": "FP32"}, version=2, batch=3, started=1.5, infer_s=0.2
    )
    return PredictReply("w1", {"t.0": outputs, "t.1": RequestFailure(DeadlineExceeded("late"))})


# --------------------------------------------------------------------------- round trips


def test_an_envelope_round_trips_through_json_with_every_request_field() -> None:
    envelope, payload = _envelope()
    wire = _json(envelope)
    assert wire["format"] == FORMAT
    assert wire["deadline"] == 105.0  # the latest request's
    assert PredictEnvelope.from_wire(wire) == envelope
    requests = unpack_requests(PredictEnvelope.from_wire(wire), payload)
    assert [(r.request_id, r.output_filter, r.deadline, r.pinned, r.any_batch, r.queued_at) for r in requests] == [
        ("t.0", None, 100.0, True, False, 0.0),
        ("t.1", ["y"], 105.0, False, False, 99.5),
        ("t.2", None, 101.0, True, True, 0.0),
    ]
    assert [r.inputs["x"].shape for r in requests] == [(1, 4), (2, 4), (3, 4)]
    assert envelope.payload_size == len(payload) == 6 * 16


def test_the_envelope_keeps_its_wire_keys() -> None:
    """Same layout as before the types: workers and apis of either side of the change read each other."""
    wire = _json(_envelope()[0])
    assert set(wire) == {"format", "model", "version", "deadline", "requests", "priority", "tenant", "weight"}
    assert wire["requests"][1] == {
        "id": "t.1",
        "inputs": [["x", "FP32", [2, 4], 16, 32]],
        "outputs": ["y"],
        "deadline": 105.0,
        "pinned": False,
        "any_batch": False,
        "queued": 99.5,
    }


def test_an_envelope_carries_its_priority_and_one_from_before_priorities_has_the_default() -> None:
    requests = [InferenceRequest("m", 2, {"x": np.ones((1, 4), np.float32)}, None, 100.0, "t.0")]
    envelope, _ = pack_requests(requests, {"x": "FP32"}, Priority(1, "acme", 3))
    wire = _json(envelope)
    assert (wire["priority"], wire["tenant"], wire["weight"]) == (1, "acme", 3)
    assert PredictEnvelope.from_wire(wire).scheduling == Priority(1, "acme", 3)
    older = {key: value for key, value in wire.items() if key not in ("priority", "tenant", "weight")}
    assert PredictEnvelope.from_wire(older).scheduling == Priority(DEFAULT_PRIORITY, "", 1)


def test_the_worker_schedules_a_message_at_its_level_and_a_job_chunk_below_every_level() -> None:
    predict = [InferenceRequest("m", 2, {"x": np.ones((1, 4), np.float32)}, None, 100.0, "t.0")]
    chunk = [InferenceRequest("m", 2, {"x": np.ones((9, 4), np.float32)}, None, 100.0, "c.0", any_batch=True)]
    assert scheduled_as(pack_requests(predict, {"x": "FP32"}, Priority(1, "a", 2))[0]) == Priority(1, "a", 2)
    assert scheduled_as(pack_requests(chunk, {"x": "FP32"}, Priority(1))[0]).level == JOB_LEVEL
    for sent, read in ((0, 1), (7, 3)):  # no api sends these: the nearest level
        assert scheduled_as(pack_requests(predict, {"x": "FP32"}, Priority(sent))[0]).level == read


def test_every_request_entry_field_but_its_inputs_is_an_inference_request_field() -> None:
    """What makes a new per-request field one line here and one in InferenceRequest."""
    carried = {f.name for f in fields(RequestEntry)} - {"inputs"}
    assert carried <= {f.name for f in fields(InferenceRequest)}


def test_a_reply_round_trips_through_msgpack() -> None:
    reply = _reply()
    decoded = PredictReply.from_wire(msgpack.unpackb(msgpack.packb(reply.to_wire(), use_bin_type=True), raw=False))
    assert decoded.to_wire() == reply.to_wire()  # exceptions do not compare equal: compare what is sent
    outputs = decoded.results["t.0"]
    assert isinstance(outputs, ComputedOutputs)
    np.testing.assert_array_equal(outputs.arrays()["y"], np.arange(8, dtype=np.float32).reshape(2, 4))
    result = outputs.to_result("w1", published_at=1.0)
    assert (result.version, result.worker, result.batch_size, result.queue_s, result.infer_s) == (2, "w1", 3, 0.5, 0.2)
    failure = decoded.results["t.1"]
    assert isinstance(failure, RequestFailure) and isinstance(failure.error, DeadlineExceeded)
    assert reply.to_wire()["results"]["t.1"] == {"error": ["DeadlineExceeded", "late"]}


def test_a_worker_snapshot_round_trips_and_keeps_its_layout() -> None:
    snapshot = _snapshot()
    wire = _json(snapshot)
    assert WorkerSnapshot.from_wire(wire) == snapshot
    model = wire["models"]["m"]
    assert model["versions"]["1"] == {"state": "END", "error_code": "UNKNOWN", "error_message": "failed to load"}
    assert model["versions"]["2"]["signature"] == SIGNATURE.to_dict()
    assert "residency" not in model["versions"]["2"], "a version always in memory says nothing of it"
    assert model["versions"]["3"]["residency"] == {"resident": False, "load_s": 1.25, "since": 12.0}
    assert (wire["id"], model["queue"], model["max_queue_size"], wire["loaded"]) == (
        "CPU-host-1-abc",
        "ovms.CPU.m",
        7,
        True,
    )


def test_a_model_snapshot_carries_its_default_priority_a_foreign_one_brought_into_range() -> None:
    wire = _json(_snapshot())
    assert wire["models"]["m"]["default_priority"] == DEFAULT_PRIORITY
    for sent, read in ((1, 1), (3, 3), (0, 1), (99, 3)):
        wire["models"]["m"]["default_priority"] = sent
        assert WorkerSnapshot.from_wire(wire).models["m"].report.default_priority == read
    del wire["models"]["m"]["default_priority"]  # an older worker's
    assert WorkerSnapshot.from_wire(wire).models["m"].report.default_priority == DEFAULT_PRIORITY


def test_job_record_and_chunk_round_trip() -> None:
    envelope, _ = _envelope()
    record = JobRecord("m", 2, 6, "ovms.CPU.m", 10.0, (ChunkRef("a" * 32, 6),), owner="o", pinned=False, deadline=70.0)
    assert JobRecord.from_json(record.to_json()) == record
    assert _json(record)["chunks"] == [{"task": "a" * 32, "rows": 6}]
    chunk = QueuedChunk("b" * 32, "c" * 32, 96, envelope)
    assert QueuedChunk.from_json(chunk.to_json()) == chunk
    assert json.loads(chunk.to_json())["task"] == "b" * 32  # read by a Lua script (tasks.job_queue)
    assert CatalogEntry.from_json(CatalogEntry("CPU", (1, 2)).to_json()) == CatalogEntry("CPU", (1, 2))


# --------------------------------------------------------------------------- formats


def test_messages_without_a_format_are_read_as_format_1() -> None:
    """The layout written before the format field: a job record of an older api (no pinned, no deadline)."""
    old = {"model": "m", "version": 1, "total": 0, "queue": "q", "created": 5.0, "chunks": [], "revoked": False}
    record = JobRecord.from_wire(old)
    assert (record.pinned, record.deadline, record.owner) == (True, None, None)
    entry = {"id": "r", "inputs": [], "outputs": None, "deadline": 1.0, "pinned": True}  # no any_batch yet
    envelope = PredictEnvelope.from_wire({"model": "m", "version": 1, "deadline": 1.0, "requests": [entry]})
    assert envelope.requests[0].any_batch is False


def test_a_newer_format_is_refused() -> None:
    wire = _json(_snapshot())
    wire["format"] = FORMAT + 1
    with pytest.raises(InvalidArgument, match="Malformed worker snapshot: format 2"):
        WorkerSnapshot.from_wire(wire)


def test_unknown_keys_are_ignored() -> None:
    """A field added with a default reaches older readers harmlessly."""
    wire = _json(_envelope()[0])
    wire["requests"][0]["from_a_newer_api"] = 3
    wire["also_newer"] = "t"
    assert PredictEnvelope.from_wire(wire) == _envelope()[0]


# --------------------------------------------------------------------------- malformed input


def _mutated(change: Any) -> dict[str, Any]:
    wire = _json(_envelope()[0])
    change(wire)
    return wire


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [],
        "text",
        _mutated(lambda w: w.pop("requests")),
        _mutated(lambda w: w.update(version="2")),
        _mutated(lambda w: w.update(version=True)),
        _mutated(lambda w: w.update(deadline="soon")),
        _mutated(lambda w: w.update(requests={})),
        _mutated(lambda w: w["requests"][0].pop("id")),
        _mutated(lambda w: w["requests"][0].update(pinned=1)),
        _mutated(lambda w: w["requests"][0].update(outputs="y")),
        _mutated(lambda w: w["requests"][0].update(inputs=[["x", "FP32", [1, 4], 0]])),
        _mutated(lambda w: w["requests"][0].update(inputs=[["x", "FP32", [1, "4"], 0, 16]])),
        _mutated(lambda w: w["requests"][0].update(inputs=[["x", "FP32", [1, 4], 0, 16, 0]])),
        _mutated(lambda w: w.update(format="1")),
    ],
    ids=lambda wire: json.dumps(wire)[:60],
)
def test_a_malformed_envelope_is_invalid_argument(wire: Any) -> None:
    with pytest.raises(InvalidArgument, match=r"^Malformed predict message: "):
        PredictEnvelope.from_wire(wire)


@pytest.mark.parametrize(
    ("kind", "wire"),
    [
        (PredictReply, {"worker": "w", "results": {"r": {"error": ["NotFound"]}}}),
        (PredictReply, {"worker": "w", "results": {"r": {"version": 1, "batch": 1, "started": 0, "infer_s": 0}}}),
        (
            PredictReply,
            {"worker": "w", "results": {"r": {**ComputedOutputs(1, 1, 0.0, 0.0, ()).to_wire(), "batch": None}}},
        ),
        (WorkerSnapshot, {"id": "w", "device": "CPU", "models": {"m": {"queue": "q", "versions": {"x": {}}}}}),
        (
            WorkerSnapshot,
            {"id": "w", "device": "CPU", "models": {"m": {"queue": "q", "versions": {"1": {"state": "READY"}}}}},
        ),
        (JobRecord, {"model": "m"}),
        (CatalogEntry, {"device": "CPU", "versions": ["1"]}),
        (QueuedChunk, {"task": "t", "job": "j", "bytes": 1, "envelope": {"model": "m"}}),
    ],
)
def test_other_malformed_messages_are_invalid_argument(kind: type[Message], wire: Any) -> None:
    with pytest.raises(InvalidArgument, match=r"^Malformed "):
        kind.from_wire(wire)


def test_json_that_does_not_parse_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match=r"^Malformed job record: "):
        JobRecord.from_json(b"{not json")


def test_tensor_metadata_that_does_not_fit_the_payload_is_a_value_error() -> None:
    """Well-formed but lying (the worker turns it into InvalidArgument for its requests)."""
    envelope, payload = _envelope()
    with pytest.raises(ValueError, match="does not match the payload"):
        unpack_requests(envelope, payload[:-1])


# --------------------------------------------------------------------------- states


def test_states_are_their_names_in_json_and_text() -> None:
    assert json.dumps([VersionState.AVAILABLE, JobState.SUCCESS]) == '["AVAILABLE", "SUCCESS"]'
    assert f"{VersionState.END} {JobState.REVOKED}" == "END REVOKED"
    assert VersionState("LOADING") is VersionState.LOADING
    assert JobState.REVOKED in FINAL and JobState.REVOKED not in COMPLETED


def test_a_failed_request_keeps_its_error_kind() -> None:
    wire = json.loads(json.dumps(RequestFailure(NotFound("gone")).to_wire()))
    error = RequestFailure.from_wire(wire).error
    assert type(error) is NotFound and error.message == "gone"


# --------------------------------------------------------------------------- encoded images on the wire


def _with_images() -> tuple[PredictEnvelope, bytes, list[InferenceRequest]]:
    images = bytes_array([b"\xff\xd8\xff" + bytes(100), b"\x89PNG\r\n\x1a\n\0"])
    requests = [
        InferenceRequest("m", 1, {"data": images, "scale": np.ones((1, 2), np.float32)}, None, 100.0, "t.0"),
        InferenceRequest("m", 1, {"data": images[:1], "scale": np.zeros((1, 2), np.float32)}, None, 100.0, "t.1"),
    ]
    envelope, parts = pack_requests(requests, {"data": "FP32", "scale": "FP32"})
    return envelope, b"".join(parts), requests


def test_encoded_images_travel_encoded_as_a_bytes_tensor_of_their_count() -> None:
    envelope, payload, requests = _with_images()
    wire = _json(envelope)
    data, scale = wire["requests"][0]["inputs"]
    assert (data[:3], scale[:3]) == (["data", "BYTES", [2]], ["scale", "FP32", [1, 2]])
    assert envelope.payload_size == len(payload) == (4 + 103 + 4 + 9 + 8) + (4 + 103 + 8)
    unpacked = unpack_requests(PredictEnvelope.from_wire(wire), payload)
    for sent, received in zip(requests, unpacked, strict=True):
        assert received.inputs["data"].dtype == object
        assert list(received.inputs["data"]) == list(sent.inputs["data"])
        np.testing.assert_array_equal(received.inputs["scale"], sent.inputs["scale"])


def _tampered(envelope: PredictEnvelope, **changes: Any) -> PredictEnvelope:
    """The envelope with its first request's first input (the images) changed."""
    wire = _json(envelope)
    meta = wire["requests"][0]["inputs"][0]
    for index, name in enumerate(("name", "precision", "shape", "offset", "nbytes")):
        meta[index] = changes.get(name, meta[index])
    return PredictEnvelope.from_wire(wire)


@pytest.mark.parametrize(
    ("changes", "payload_edit", "message"),
    [
        ({"shape": [2**40]}, None, "cannot fit"),  # an element count no payload holds: nothing allocated
        ({"shape": [3]}, None, "end before their last length"),
        ({"shape": [1]}, None, "follow the last BYTES element"),
        ({"shape": [2, 1]}, None, "a BYTES tensor of shape [2, 1], not (count,)"),
        ({"nbytes": 10**9}, None, "does not match the payload"),
        ({"offset": -4}, None, "does not match the payload"),
        ({}, lambda p: b"\xff\xff\xff\x7f" + p[4:], "claims 2147483647 bytes"),
    ],
)
def test_a_lying_bytes_tensor_is_refused_on_unpack(changes: dict, payload_edit, message: str) -> None:
    envelope, payload, _ = _with_images()
    payload = payload_edit(payload) if payload_edit else payload
    with pytest.raises(ValueError, match=re.escape(message)):
        unpack_requests(_tampered(envelope, **changes), payload)
