"""A job callback receiver for tests: an HTTP server on 127.0.0.1 that records every POST and answers each
with the next of its statuses (the last one repeated), e.g. (503, 200) to refuse the first attempt."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Arrival:
    at: float  # time.monotonic()
    wall: float  # time.time(), to compare with the times a callback carries
    path: str
    headers: dict[str, str]
    body: bytes

    def document(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    def __init__(self, statuses: tuple[int, ...] = (200,), location: str = "", port: int = 0) -> None:
        """`location`: the Location header of a 3xx answer; `port`: 0 for a free one."""
        self.received: list[Arrival] = []
        self._statuses = list(statuses)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.received.append(
                        Arrival(time.monotonic(), time.time(), self.path, dict(self.headers), body)
                    )
                    status = receiver._statuses.pop(0) if len(receiver._statuses) > 1 else receiver._statuses[0]
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def of(self, job_id: str) -> list[Arrival]:
        """The callbacks received for one job."""
        with self._lock:
            return [arrival for arrival in self.received if arrival.document().get("id") == job_id]

    def wait_for(self, job_id: str, count: int = 1, timeout_s: float = 60) -> list[Arrival]:
        deadline = time.monotonic() + timeout_s
        while len(arrivals := self.of(job_id)) < count:
            assert time.monotonic() < deadline, f"{len(arrivals)} of {count} callbacks for job {job_id} arrived"
            time.sleep(0.05)
        return arrivals

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
