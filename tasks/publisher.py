"""Publish a predict message and its tensors in one pipelined Redis round trip.

Celery's `apply_async` costs about 0.5 ms here (kombu producer, routing, connection pool) and the
claim-check SET another round trip. The message itself is still a standard Celery protocol-2
message built by Celery (`app.amqp.as_task_v2`), wrapped exactly as kombu's Redis transport wraps it
(JSON envelope, base64 body, delivery info for the anonymous exchange), so any Celery worker,
Flower or `celery inspect` reads it as if `apply_async` had sent it. Only the transport write is ours:
`SET payload` (+ `APPEND` for each further part) + `LPUSH` to the queue's list of the message's priority level
(kombu's priority emulation, tasks.routing.priority_queue) in one pipeline. The payload's parts
are views of the request arrays: redis-py writes each one to the socket as it is, so no joined copy
of a large request is made.

The payload goes to the result backend (`store`), the message to the broker (`broker`), where the
workers consume it. When both are one client (the same URL), that is the single round trip above;
when they differ, the payload is written first, so a worker never takes a message whose tensors are
not there yet.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import redis
from celery import Celery
from kombu.serialization import dumps
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

from tasks.connections import redis_client
from tasks.link import REDIS_TIMEOUT_S
from tasks.messages import Payload, PredictEnvelope
from tasks.routing import PREDICT_TASK, message_priority, payload_key, priority_queue

_PAYLOAD_GRACE_MS = 5000  # tensors outlive the deadline a little, for a worker already running them


_SLICE_BYTES = 4 << 20  # the most one socket send carries


class _SlicingSerializer(PythonRespSerializer):
    """redis-py's own command packer, which sends a large value without copying it (the hiredis packer,
    used by default when hiredis is installed, takes ~0.5 ms per 600 KB), with large values sent in
    slices: the socket timeout then bounds each slice, so a paused Redis fails a call within it while
    a 2 GB tensor that moves at loopback speed never times out."""

    def pack(self, *args: Any) -> list[bytes | memoryview]:
        output: list[bytes | memoryview] = []
        for item in super().pack(*args):
            if len(item) <= _SLICE_BYTES:
                output.append(item)
                continue
            view = memoryview(item).cast("B")
            output.extend(view[start : start + _SLICE_BYTES] for start in range(0, len(view), _SLICE_BYTES))
        return output


def store_client(url: str) -> redis.Redis:
    """The api's Redis client (the result backend's tensors, replies, registry, jobs; the broker's
    queues): no call waits more than REDIS_TIMEOUT_S
    for a Redis that stopped answering (see tasks.link)."""
    return redis_client(
        url,
        command_packer=_SlicingSerializer(6000, Encoder("utf-8", "strict", False).encode),
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        health_check_interval=10,
    )


def store_payload(pipe: redis.client.Pipeline, key: str, payload: Payload, expires_ms: int) -> None:
    """Queue the writes of a claim-check payload on `pipe`: `SET` of its first part, `APPEND` of the others
    (each part is sent as it is, with no joined copy)."""
    pipe.set(key, payload[0] if payload else b"", px=expires_ms)
    for part in payload[1:]:
        pipe.append(key, part)


class PredictPublisher:
    def __init__(self, app: Celery, store: redis.Redis, broker: redis.Redis) -> None:
        """`store`: the result backend's client; `broker`: the broker's (the same object when they share a URL)."""
        self._app = app
        self._store = store
        self._broker = broker

    def publish(
        self,
        task_id: str,
        envelope: PredictEnvelope,
        payload: Payload,
        queue: str,
        reply_to: str,
        expires_s: float,
    ) -> tuple[str, str]:
        """`reply_to` names the api's reply list. The message goes to the list of `queue` for its priority level
        (tasks.routing.priority_queue). Returns that list and the message as queued, for `requeue`,
        `withdraw` and `is_queued`."""
        message = self._app.amqp.as_task_v2(
            task_id,
            PREDICT_TASK,
            args=(envelope.to_wire(),),
            kwargs={},
            expires=expires_s,
            reply_to=reply_to,
            argsrepr=envelope.summary,  # what Flower and logs show; also spares Celery a saferepr of the envelope
            kwargsrepr="{}",
            shadow=f"predict {envelope.model} v{envelope.version}",  # the task name Flower shows
        )
        content_type, content_encoding, body = dumps(message.body, serializer="json")
        properties = dict(message.properties)
        properties.update(
            priority=message_priority(envelope.priority),
            body_encoding="base64",
            delivery_tag=str(uuid.uuid4()),
            delivery_info={"exchange": "", "routing_key": queue},
        )
        wire = {
            "body": base64.b64encode(body.encode() if isinstance(body, str) else body).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": message.headers,
            "properties": properties,
        }
        message_text = json.dumps(wire)
        queued_in = priority_queue(queue, envelope.priority)
        with self._store.pipeline(transaction=False) as pipe:
            store_payload(pipe, payload_key(task_id), payload, int(expires_s * 1000) + _PAYLOAD_GRACE_MS)
            if self._broker is self._store:
                pipe.lpush(queued_in, message_text)
            pipe.execute()
        if self._broker is not self._store:
            self._broker.lpush(queued_in, message_text)
        return queued_in, message_text

    def requeue(self, queued_in: str, message_text: str) -> None:
        """Put a published message back at the head of the list it was queued in (kombu pops from the right),
        to be run again; its tensors are still under their claim-check key."""
        self._broker.rpush(queued_in, message_text)

    def withdraw(self, queued_in: str, message_text: str) -> bool:
        """Take a message back out of the list it was queued in; False if a worker took it already."""
        return bool(self._broker.lrem(queued_in, 1, message_text))

    def is_queued(self, queued_in: str, message_text: str) -> bool:
        return self._broker.lpos(queued_in, message_text) is not None
