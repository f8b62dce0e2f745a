"""Optional bearer-token authentication of gRPC and REST calls (`--auth_token_file`).

Clients send `authorization: Bearer <token>`: gRPC metadata (what `grpc.access_token_call_credentials`
sends) or the HTTP header. Health checks stay open (grpc.health.v1, KServe v2's ServerLive and ServerReady),
so that load balancers and Kubernetes probes need no credentials, and so does the Prometheus scrape
(`/metrics`: counters per model, no tensors).

Each token owns the async jobs submitted with it: a job record keeps the token's owner id (`owner_id`),
never the token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from inference.errors import TOKEN_REFUSED

OPEN_REST_PATHS = frozenset({"/v1/health/live", "/v1/health/ready", "/metrics"})
OPEN_GRPC_PREFIX = "/grpc.health.v1.Health/"
# KServe v2's health RPCs (as /v1/health/live and /v1/health/ready): the model-level ones need a token
OPEN_GRPC_METHODS = frozenset(
    {"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"}
)
OWNER_SALT = b"ovms job owner v1"


@functools.cache  # one hash per accepted token and process: only accepted tokens get here
def owner_id(token: bytes) -> str:
    """The owner id of a token's jobs: a slow salted hash (scrypt, ~50 ms once), so that whoever reads the
    job records in Redis cannot recover a weak token by fast guessing; the same in every api process."""
    return hashlib.scrypt(token, salt=OWNER_SALT, n=2**14, r=8, p=1, dklen=16).hex()


class BearerTokens:
    """The accepted tokens: the lines of a file, blank lines and `#` comments ignored."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [token.encode() for token in tokens]

    @classmethod
    def from_file(cls, path: str) -> BearerTokens:
        with open(path, encoding="utf-8") as handle:
            tokens = [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
        if not tokens:
            raise RuntimeError(f"auth_token_file {path} holds no token")
        return cls(tokens)

    def accepts(self, authorization: str | None) -> bool:
        """True for an `Authorization` value `Bearer <an accepted token>` (the scheme in any case)."""
        return self._accepted(authorization) is not None

    def owner_of(self, authorization: str | None) -> str | None:
        """The owner id of the accepted token in an `Authorization` value (None if none is accepted)."""
        token = self._accepted(authorization)
        return None if token is None else owner_id(token)

    def _accepted(self, authorization: str | None) -> bytes | None:
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        offered = token.strip().encode()
        # every token is compared, each in constant time, so timing tells nothing about which one matched
        matches = [hmac.compare_digest(offered, accepted) for accepted in self._tokens]
        return next((accepted for accepted, match in zip(self._tokens, matches, strict=True) if match), None)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED to every call without an accepted token, except the health checks'.

    The refusal is decided on the call's metadata alone, before its request message is read: a caller
    without a token can make the server neither read nor hold a message."""

    def __init__(self, tokens: BearerTokens) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_GRPC_PREFIX) or method in OPEN_GRPC_METHODS:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if self._tokens.accepts(metadata.get("authorization")):
            return handler
        return _REFUSAL


async def _refuse(_requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, TOKEN_REFUSED)


# Request-streaming whatever the method: grpc.aio reads a unary request before calling its handler,
# and a streamed one only when the handler asks for it (this one never does). The client sees the
# same status either way.
_REFUSAL = grpc.stream_stream_rpc_method_handler(_refuse)


def rest_call_allowed(tokens: BearerTokens | None, path: str, authorization: str | None) -> bool:
    """Whether a REST call may go on: always without tokens, else on the open paths or with an accepted
    token. Decided from the request head alone (api.rest_limits), before any body byte is read."""
    return tokens is None or path in OPEN_REST_PATHS or tokens.accepts(authorization)
