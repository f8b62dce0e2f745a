"""One attempt at telling a job's callback URL that the job ended: a signed JSON POST to the address its
host resolves to now, as the allow-list admits it (tasks.callback_targets).

The signature is Stripe's scheme: `OVMS-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with
the secret of --callback_secret_file; the receiver recomputes it and refuses an old `t` (a replay). The
connection goes to the address that was checked (no second resolution), redirects are never followed (a 3xx
is a failed attempt), and the whole attempt — connecting, sending, reading the answer's head and at most
MAX_REPLY_BYTES of its body — ends within the timeout: a watchdog shuts the socket of a receiver that
answers byte by byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import socket
import ssl
import threading
import time
from typing import Any

from inference.errors import InvalidArgument
from tasks.callback_targets import AllowList, Destination, Resolver, system_resolver

SIGNATURE_HEADER = "OVMS-Signature"
DELIVERY_HEADER = "OVMS-Delivery"
MAX_REPLY_BYTES = 64 << 10
USER_AGENT = "ovms-celery-callback/1"


def signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """The OVMS-Signature header's value for `body` sent at `timestamp`."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def post(
    url: str,
    document: dict[str, Any],
    delivery: str,
    secret: bytes,
    allow: AllowList,
    timeout_s: float,
    resolve: Resolver = system_resolver,
) -> str | None:
    """POST `document` to `url` once; None if the receiver answered 2xx, else why not, in one line."""
    try:
        destination = allow.check(url, resolve)
    except InvalidArgument as error:
        return f"refused: {error.message}"
    body = json.dumps(document).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature(secret, body, int(time.time())),
        DELIVERY_HEADER: delivery,
    }
    try:
        status = _send(destination, body, headers, timeout_s)
    except (OSError, http.client.HTTPException) as exc:
        return " ".join(f"{type(exc).__name__}: {exc}".split())
    if 200 <= status < 300:
        return None
    return f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")


def _send(destination: Destination, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """The answer's status; OSError or HTTPException if there is none within `timeout_s` in all, connecting
    included (the attempt's lease in tasks.callback_runner counts on that)."""
    deadline = time.monotonic() + timeout_s
    raw = socket.create_connection((destination.address, destination.port), timeout=timeout_s)
    expired = threading.Event()
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), _shut, (raw, expired))
    watchdog.start()
    try:
        status = _exchange(raw, destination, body, headers, timeout_s)
    except (OSError, http.client.HTTPException):
        if not expired.is_set():
            raise
    finally:
        watchdog.cancel()
        raw.close()
    if expired.is_set():  # also when the cut looked like the end of the answer
        raise TimeoutError(f"timed out after {timeout_s:g} s (--callback_timeout_s)")
    return status


def _exchange(
    raw: socket.socket, destination: Destination, body: bytes, headers: dict[str, str], timeout_s: float
) -> int:
    sock = raw
    if destination.scheme == "https":
        sock = ssl.create_default_context().wrap_socket(raw, server_hostname=destination.host)
    connection = http.client.HTTPConnection(destination.host, destination.port, timeout=timeout_s)
    connection.sock = sock  # already connected to the checked address: http.client does not connect again
    connection.request("POST", destination.target, body, headers)
    reply = connection.getresponse()
    reply.read(MAX_REPLY_BYTES)
    return reply.status


def _shut(sock: socket.socket, expired: threading.Event) -> None:
    """End a blocked attempt: its read or write returns at once."""
    expired.set()
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
