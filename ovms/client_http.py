"""The job client's connection to an api: the base URL checked before any request, TLS (a private CA, a
client certificate for a server with --ssl_client_ca), the bearer token, and what a failed connection
means in one line, with what to do about it."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

MAX_RATE_RETRIES = 30  # reads refused 429 are asked again after their Retry-After, this many times


class ClientError(Exception):
    """A mistake the user can fix: printed as one line `ovms <command>: <message>`, exit 1."""


class Session(requests.Session):
    """requests' session whose own CA file wins over $REQUESTS_CA_BUNDLE: requests lets the environment
    override `Session.verify` (psf/requests#3829), so a --cacert would otherwise be ignored."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


def checked_url(url: str) -> str:
    """The base URL without a trailing slash; one without http:// or https:// is refused saying what to
    write (requests would answer "No connection adapters were found")."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    if not scheme:
        raise ClientError(f"--url {url} has no scheme: use http://{url} (or https:// for a server with TLS)")
    if scheme not in ("http", "https"):
        raise ClientError(f"--url {url}: use http:// or https://, not {scheme}://")
    return url.rstrip("/")


def session(cert: str | None, key: str | None, cacert: str | None) -> Session:
    """A session with the token from $OVMS_TOKEN (never a flag: it would show in `ps`), the client
    certificate `cert` (with its `key`, or both in `cert`), and `cacert` as the only trusted CA."""
    if key and not cert:
        raise ClientError("--key needs --cert (the client certificate it belongs to)")
    for option, path in (("--cert", cert), ("--key", key), ("--cacert", cacert)):
        if path and not os.path.isfile(path):
            raise ClientError(f"{option} {path}: no such file")
    http = Session()
    # A tenant over its rate (api.tenants) is told when to come back: reads wait that long and ask again.
    # Writes are not repeated: a refused submit is the user's to retry.
    waits = Retry(
        total=MAX_RATE_RETRIES,
        connect=0,
        read=0,
        status_forcelist=(429,),
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    for scheme in ("http://", "https://"):
        http.mount(scheme, HTTPAdapter(max_retries=waits))
    token = os.environ.get("OVMS_TOKEN")
    if token:
        http.headers["Authorization"] = f"Bearer {token}"
    if cert:
        http.cert = (cert, key) if key else cert
    if cacert:
        http.verify = cacert
    return http


def no_answer(url: str, exc: requests.RequestException, client_certificate: bool) -> str:
    """Why a request got no usable answer, in one line, with what to do where the cause is known or likely.
    A server with mutual TLS refuses a missing or unknown client certificate after the TLS 1.3 handshake:
    the client sees its alert (CERTIFICATE_REQUIRED, UNKNOWN_CA) or, as often, only the connection closed."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"{url}: the server's certificate is not trusted: give its CA with --cacert FILE ({text})"
    refused = any(sign in text for sign in _CLOSED_AFTER_HANDSHAKE)
    if url.startswith("https://") and refused and not client_certificate:
        return f"{url} wants a client certificate its CA signed: give --cert FILE --key FILE ({text})"
    if url.startswith("https://") and refused:
        return f"{url} refused the client certificate: give one signed by the server's --ssl_client_ca ({text})"
    return f"no answer from {url}: {text}"


_CLOSED_AFTER_HANDSHAKE = ("CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE", "RemoteDisconnected", "EOF")


_HINTS = {
    401: "set $OVMS_TOKEN to a token of the server's --auth_token_file",
    404: "`ovms jobs` lists the ids of your jobs",
}


def failure(reply: requests.Response) -> str:
    """The api's error in one line (its status, its JSON "error", else the start of its body), with what to
    do for the answers that have one obvious remedy."""
    try:
        message = reply.json().get("error", reply.text)
    except ValueError:
        message = reply.text[:200]
    message = " ".join(str(message).split())
    hint = _HINTS.get(reply.status_code)
    if hint and not (reply.status_code == 404 and "/v1/jobs/" not in reply.url):
        message += f" ({hint})"
    return f"{reply.status_code} {message}"
