"""Optional bearer-token authentication of gRPC and REST calls (`--auth_token_file`).

Clients send `authorization: Bearer <token>`: gRPC metadata (what `grpc.access_token_call_credentials`
sends) or the HTTP header. Health checks stay open (grpc.health.v1, KServe v2's ServerLive and ServerReady),
so that load balancers and Kubernetes probes need no credentials, and so does the Prometheus scrape
(`/metrics`: counters per model, no tensors).

Each token owns the async jobs submitted with it: a job record keeps the token's owner id (`owner_id`),
never the token. Each token belongs to a tenant (api.tenants): the call runs with it in
api.tenants.CALLER, and within its limits (api.quotas).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc

from api.grpc_limits import deadline_s, within
from api.tenants import DEFAULT_TENANT, NO_TENANT, Tenant, TenantScope, TokenFile, as_caller, read_token_file
from inference.errors import TOKEN_REFUSED

OPEN_REST_PATHS = frozenset({"/v1/health/live", "/v1/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"})
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
    """The accepted tokens and their tenants (api.tenants: the lines of a file, blank lines and `#`
    comments ignored)."""

    def __init__(self, tokens: Sequence[str] = (), token_file: TokenFile | None = None) -> None:
        """`tokens` alone: each of the tenant `default`, without limits."""
        plain = TokenFile([(token, DEFAULT_TENANT) for token in tokens], {DEFAULT_TENANT: Tenant(DEFAULT_TENANT)})
        self._file = token_file or plain
        self._tokens = [token.encode() for token, _ in self._file.tokens]
        self._tenants = [self._file.tenants[tenant] for _, tenant in self._file.tokens]

    @classmethod
    def from_file(cls, path: str) -> BearerTokens:
        try:
            token_file = read_token_file(path)
        except ValueError as error:
            raise RuntimeError(str(error)) from None
        return cls(token_file=token_file)

    @property
    def tenants(self) -> dict[str, Tenant]:
        """Every tenant of the file, by name."""
        return self._file.tenants

    @property
    def weights(self) -> Mapping[str, int]:
        """Each tenant's weight in the fair share of a model's capacity."""
        return self._file.weights

    @property
    def best_levels(self) -> Mapping[str, int]:
        """Each tenant's highest priority level (0: a model's default level)."""
        return self._file.best_levels

    def accepts(self, authorization: str | None) -> bool:
        """True for an `Authorization` value `Bearer <an accepted token>` (the scheme in any case)."""
        return self._accepted(authorization) is not None

    def owner_of(self, authorization: str | None) -> str | None:
        """The owner id of the accepted token in an `Authorization` value (None if none is accepted)."""
        index = self._accepted(authorization)
        return None if index is None else owner_id(self._tokens[index])

    def tenant_of(self, authorization: str | None) -> Tenant | None:
        """The tenant of the accepted token in an `Authorization` value (None if none is accepted)."""
        index = self._accepted(authorization)
        return None if index is None else self._tenants[index]

    def _accepted(self, authorization: str | None) -> int | None:
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        offered = token.strip().encode()
        # every token is compared, each in constant time, so timing tells nothing about which one matched
        matches = [hmac.compare_digest(offered, accepted) for accepted in self._tokens]
        return next((index for index, match in enumerate(matches) if match), None)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED to every call without an accepted token, except the health checks'; the
    others run within `scope(tenant, seconds to the deadline)` until they are answered: as their token's
    tenant (api.tenants.CALLER), within its limits (api.quotas), entered before the request is read.

    The refusal is decided on the call's metadata alone, before its request message is read: a caller
    without a token can make the server neither read nor hold a message."""

    def __init__(self, tokens: BearerTokens, scope: TenantScope = as_caller) -> None:
        self._tokens = tokens
        self._scope = scope

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
        tenant = self._tokens.tenant_of(metadata.get("authorization"))
        if tenant is None:
            return _REFUSAL
        return within(handler, lambda context: self._scope(tenant, deadline_s(context)))


async def _refuse(_requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, TOKEN_REFUSED)


# Request-streaming whatever the method: grpc.aio reads a unary request before calling its handler,
# and a streamed one only when the handler asks for it (this one never does). The client sees the
# same status either way.
_REFUSAL = grpc.stream_stream_rpc_method_handler(_refuse)


def rest_caller(tokens: BearerTokens | None, path: str, authorization: str | None) -> Tenant | None:
    """Who a REST call is from: NO_TENANT without tokens or on the open paths, else the tenant of its
    accepted token; None when it may not go on. Decided from the request head alone (api.rest_limits),
    before any body byte is read."""
    if tokens is None or path in OPEN_REST_PATHS:
        return NO_TENANT
    return tokens.tenant_of(authorization)
