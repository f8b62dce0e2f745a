"""Security settings: the TLS and token flags, and bearer-token matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.auth import BearerTokens
from ovms.settings import UsageError, parse_command_line

SINGLE = ["--model_name", "m", "--model_path", "/m"]


@pytest.fixture
def pem(tmp_path: Path) -> str:
    path = tmp_path / "file.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


def test_security_flags_are_parsed(pem: str, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("a-token\n")
    tls = ["--ssl_certificate", pem, "--ssl_private_key", pem, "--ssl_client_ca", pem]
    settings = parse_command_line([*SINGLE, *tls, "--auth_token_file", str(tokens)])
    assert (settings.ssl_certificate, settings.ssl_private_key, settings.ssl_client_ca) == (pem, pem, pem)
    assert settings.auth_token_file == str(tokens)


def test_security_is_off_by_default() -> None:
    settings = parse_command_line(SINGLE)
    assert (settings.ssl_certificate, settings.ssl_private_key, settings.ssl_client_ca) == (None, None, None)
    assert settings.auth_token_file is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ssl_certificate", "{pem}"], "ssl_certificate and ssl_private_key go together"),
        (["--ssl_private_key", "{pem}"], "ssl_certificate and ssl_private_key go together"),
        (["--ssl_client_ca", "{pem}"], "ssl_client_ca needs ssl_certificate and ssl_private_key"),
        (["--ssl_certificate", "/no/cert.pem", "--ssl_private_key", "{pem}"], "ssl_certificate: cannot read"),
        (["--auth_token_file", "/no/tokens"], "auth_token_file: cannot read /no/tokens"),
    ],
)
def test_security_flag_errors(pem: str, flags: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_command_line([*SINGLE, *(flag.format(pem=pem) for flag in flags)])


def test_token_file_lines_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# rotated 2026-11\nfirst-token\n\n  second-token  \n")
    tokens = BearerTokens.from_file(str(path))
    assert tokens.accepts("Bearer first-token")
    assert tokens.accepts("bearer second-token")
    assert not tokens.accepts("Bearer # rotated 2026-11")


def test_a_token_file_without_tokens_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# nothing yet\n\n")
    with pytest.raises(RuntimeError, match="holds no token"):
        BearerTokens.from_file(str(path))


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer ", "Bearer other", "Basic s3cret", "s3cret", "Bearer s3cret2"]
)
def test_anything_but_bearer_and_an_accepted_token_is_refused(authorization: str | None) -> None:
    assert not BearerTokens(["s3cret"]).accepts(authorization)


def test_each_accepted_token_has_its_own_stable_owner_id_that_does_not_hold_it() -> None:
    tokens = BearerTokens(["alpha-token", "beta-token"])
    alpha, beta = tokens.owner_of("Bearer alpha-token"), tokens.owner_of("bearer  beta-token ")
    assert alpha and beta and alpha != beta
    assert BearerTokens(["beta-token", "alpha-token"]).owner_of("Bearer alpha-token") == alpha, "any process agrees"
    assert "alpha" not in alpha and len(alpha) == 32
    assert tokens.owner_of("Bearer gamma-token") is None and tokens.owner_of(None) is None
