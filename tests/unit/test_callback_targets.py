"""Where job callbacks may go (tasks.callback_targets) and one delivery attempt (tasks.callback_delivery).

Host names are resolved by a stand-in resolver (the DNS boundary), so that a name can resolve to a public
address at submission and to a private one at delivery, as a rebinding attacker's would; deliveries go to
real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from inference.errors import InvalidArgument
from tasks import callback_delivery
from tasks.callback_targets import AllowList
from tests.support.receiver import Receiver

PUBLIC = "93.184.215.14"  # a public address (example.com's); nothing here connects to it
SECRET = b"s3cret"


def resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


def allow(text: str) -> AllowList:
    return AllowList.parse("--callback_allow", text)


@pytest.mark.parametrize(
    ("entries", "url", "why"),
    [
        ("", "http://127.0.0.1/", "Callbacks are off on this server"),
        ("127.0.0.1/32", "http://10.1.2.3/hook", "does not admit 10.1.2.3"),
        ("127.0.0.1/32", "http://169.254.169.254/latest/meta-data/", "does not admit 169.254.169.254"),
        ("127.0.0.1/32", "http://[::ffff:10.0.0.1]/", "does not admit ::ffff:10.0.0.1 (10.0.0.1)"),
        ("192.0.2.0/24", "http://localhost:8000/", "does not admit localhost (127.0.0.1)"),
        ("localhost", "http://localhost:8000/", "resolves to 127.0.0.1, not a public address"),
        ("hooks.example.com", "http://hooks.example.com/", "resolves to 10.0.0.5, not a public address"),
        ("*.example.com", "http://metadata.example.com/", "resolves to 169.254.169.254, not a public address"),
        ("0.0.0.0/0", "file:///etc/passwd", "not an http:// or https:// URL"),
        ("0.0.0.0/0", "gopher://127.0.0.1:6379/_FLUSHALL", "not an http:// or https:// URL"),
        ("0.0.0.0/0", "http://user:pw@127.0.0.1/", "no user info"),
        ("0.0.0.0/0", "http://127.0.0.1/a b", "only printable ASCII"),
        ("0.0.0.0/0", "http://127.0.0.1:99999/", "Port out of range"),
        ("0.0.0.0/0", "http://127.0.0.1:0/", "port 0 is no port"),
        ("0.0.0.0/0", "http://nowhere.invalid/", "cannot resolve nowhere.invalid"),
        ("https://hooks.example.com/ovms/", "https://hooks.example.com/ovmsx", "does not admit hooks.example.com"),
        ("https://hooks.example.com/ovms/", "http://hooks.example.com/ovms/a", "does not admit hooks.example.com"),
        ("hooks.example.com", "http://hooks.example.com.evil.net/", "does not admit hooks.example.com.evil.net"),
    ],
)
def test_what_the_allow_list_refuses(entries: str, url: str, why: str) -> None:
    names = resolver({
        "localhost": ["127.0.0.1"], "hooks.example.com": ["10.0.0.5"], "metadata.example.com": ["169.254.169.254"],
        "hooks.example.com.evil.net": [PUBLIC],
    })  # fmt: skip
    with pytest.raises(InvalidArgument) as refused:
        allow(entries).check(url, names)
    assert why in refused.value.message, refused.value.message


@pytest.mark.parametrize(
    ("entries", "url"),
    [
        ("127.0.0.1/32", "http://127.0.0.1:8000/hook?job=1"),
        ("10.0.0.0/8", "http://hooks.internal/"),  # a private receiver, admitted by an address entry
        ("hooks.example.com", "https://HOOKS.example.com/any"),
        ("*.example.com", "https://a.b.example.com/"),
        ("https://hooks.example.com/ovms/", "https://hooks.example.com/ovms/job-ended"),
        ("https://hooks.example.com/ovms", "https://hooks.example.com:443/ovms"),
    ],
)
def test_what_the_allow_list_admits(entries: str, url: str) -> None:
    names = resolver({"hooks.internal": ["10.9.8.7"], "hooks.example.com": [PUBLIC], "a.b.example.com": [PUBLIC]})
    destination = allow(entries).check(url, names)
    assert destination.address in ("127.0.0.1", "10.9.8.7", PUBLIC)


def test_a_name_that_resolves_to_a_public_and_a_private_address_is_refused() -> None:
    names = resolver({"hooks.example.com": [PUBLIC, "127.0.0.1"]})
    with pytest.raises(InvalidArgument, match=r"resolves to 127\.0\.0\.1"):
        allow("hooks.example.com").check("http://hooks.example.com/", names)


@pytest.mark.parametrize("entry", ["ftp://x/", "hooks example.com", "http://u:p@h/", "10.0.0.0/33"])
def test_a_bad_entry_is_refused_at_start(entry: str) -> None:
    with pytest.raises(ValueError, match="--callback_allow"):
        allow(entry)


def test_a_delivery_is_signed_and_goes_to_the_address_checked_then() -> None:
    """The receiver gets the body with a signature over `<t>.<body>` and the Host it was named by; a name
    that resolves elsewhere by the time of delivery (DNS rebinding) gets nothing."""
    with Receiver() as receiver:
        url = f"http://hooks.test:{receiver.port}/end"
        names = resolver({"hooks.test": ["127.0.0.1"]})
        assert callback_delivery.post(url, {"id": "a"}, "a.1", SECRET, allow("127.0.0.1/32"), 5, names) is None
        rebound = resolver({"hooks.test": ["10.0.0.1"]})
        error = callback_delivery.post(url, {"id": "a"}, "a.1", SECRET, allow("127.0.0.1/32"), 5, rebound)
    assert error is not None and error.startswith("refused:") and "10.0.0.1" in error
    [arrival] = receiver.received
    headers, body = arrival.headers, arrival.body
    assert body == b'{"id": "a"}' and headers["Host"] == f"hooks.test:{receiver.port}" and arrival.path == "/end"
    assert headers["OVMS-Delivery"] == "a.1"
    timestamp = int(headers["OVMS-Signature"].split(",")[0].removeprefix("t="))
    assert headers["OVMS-Signature"] == callback_delivery.signature(SECRET, body, timestamp)


def test_a_redirect_is_not_followed() -> None:
    with Receiver() as target, Receiver((302,), location=target.url) as redirecting:
        error = callback_delivery.post(redirecting.url, {"id": "a"}, "a.1", SECRET, allow("127.0.0.1/32"), 5)
    assert error == "HTTP 302 (redirects are not followed)"
    assert len(redirecting.received) == 1 and target.received == []


def test_an_attempt_ends_within_its_timeout_against_a_receiver_that_answers_byte_by_byte() -> None:
    """Each byte comes well within the socket timeout, so only the attempt's own deadline ends it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        stop = threading.Event()

        def drip() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not stop.wait(0.05):
                    with contextlib.suppress(OSError):
                        connection.sendall(b"a")

        dripping = threading.Thread(target=drip)
        dripping.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        started = time.monotonic()
        try:
            error = callback_delivery.post(url, {"id": "a"}, "a.1", SECRET, allow("127.0.0.1/32"), 1.0)
        finally:
            took = time.monotonic() - started
            stop.set()
            dripping.join()
    assert error == "TimeoutError: timed out after 1 s (--callback_timeout_s)", error
    assert took < 10, f"the attempt took {took:.1f} s"
