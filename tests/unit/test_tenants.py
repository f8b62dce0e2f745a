"""The token file's tenants, limits and weights (api.tenants), and the tenant each accepted token maps to."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.auth import BearerTokens
from api.tenants import DEFAULT_TENANT, Tenant, TenantLimits, parse_token_file
from ovms.settings import UsageError, parse_command_line

SECRET = "s3cr3t-Tok3n_qz"


def test_plain_tokens_keep_working_and_belong_to_the_default_tenant() -> None:
    parsed = parse_token_file("# comment\n\nalpha\n  beta  \n", "tokens")
    assert parsed.tokens == [("alpha", DEFAULT_TENANT), ("beta", DEFAULT_TENANT)]
    assert parsed.tenants == {DEFAULT_TENANT: Tenant(DEFAULT_TENANT)}
    assert not parsed.tenants[DEFAULT_TENANT].limits.per_call
    assert dict(parsed.weights) == {DEFAULT_TENANT: 1}


def test_tenants_limits_and_weights_are_the_tenants_whichever_token_names_them() -> None:
    parsed = parse_token_file(
        "acme-1 tenant=acme rps=50 inflight=4 job_samples=10000 weight=2\n"
        "acme-2 tenant=acme rps=50\t weight=2\n"
        "beta-1 tenant=beta.team_2 rps=0.5\n"
        "plain\n",
        "tokens",
    )
    assert parsed.tokens == [("acme-1", "acme"), ("acme-2", "acme"), ("beta-1", "beta.team_2"), ("plain", "default")]
    assert parsed.tenants["acme"] == Tenant("acme", TenantLimits(rps=50.0, inflight=4, job_samples=10000), weight=2)
    assert parsed.tenants["beta.team_2"] == Tenant("beta.team_2", TenantLimits(rps=0.5))
    assert parsed.tenants["beta.team_2"].limits.per_call and not TenantLimits(job_samples=5).per_call
    assert dict(parsed.weights) == {"acme": 2, "beta.team_2": 1, "default": 1}
    with pytest.raises(TypeError):
        parsed.weights["acme"] = 5  # type: ignore[index]  # read-only for whoever schedules by it


def test_a_tenant_asks_above_a_model_s_default_level_only_if_the_file_lets_it() -> None:
    parsed = parse_token_file("u-1 tenant=urgent max_priority=1\nb-1 tenant=batch\n", "tokens")
    assert parsed.tenants["urgent"].max_priority == 1
    assert dict(parsed.best_levels) == {"urgent": 1, "batch": 0}  # 0: a model's default level


def test_a_key_given_on_one_line_of_a_tenant_holds_for_all_its_tokens() -> None:
    parsed = parse_token_file("one tenant=acme rps=5\ntwo tenant=acme inflight=2\n", "tokens")
    assert parsed.tenants["acme"].limits == TenantLimits(rps=5.0, inflight=2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"ok\n{SECRET} rps=abc\n", "line 2: rps= must be a number of requests a second from 0.001 to 1e+06"),
        (f"{SECRET} rps=0\n", "line 1: rps= must be a number"),
        (f"{SECRET} rps=nan\n", "line 1: rps= must be a number"),
        (f"{SECRET} inflight=1.5\n", "line 1: inflight= must be a whole number of requests above 0"),
        (f"{SECRET} job_samples=-3\n", "line 1: job_samples= must be a whole number of samples above 0"),
        (f"{SECRET} weight=1001\n", "line 1: weight= must be a whole number from 1 to 1000"),
        (f"{SECRET} max_priority=4\n", "line 1: max_priority= must be a priority level from 1 (highest) to 3"),
        (f"{SECRET} tenant=a/b\n", "line 1: tenant= must be 1 to 64 letters"),
        (f"{SECRET} tenant=\n", "line 1: tenant= must be"),
        (f"# one\n\n{SECRET} colour=red\n", "line 3: field 2 is not one of tenant=, rps=, inflight=, job_samples="),
        (f"{SECRET} rps=1 rps=1\n", "line 1: rps= is given twice"),
        ("s3cr3t Tok3n_qz\n", "line 1: field 2 is not one of"),  # a token with a space: no part of it quoted
        ("s3cr3t abc=\n", "line 1: field 2 is not one of"),  # base64 padding in a split token
        ("a tenant=acme rps=5\nb tenant=acme rps=6\n", "line 2: tenant acme's rps=6 differs from rps=5 on line 1"),
        ("a weight=2\nb weight=3\n", "line 2: tenant default's weight=3 differs from weight=2 on line 1"),
        ("# nothing\n", "holds no token"),
    ],
)
def test_errors_name_the_line_and_never_a_token(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^auth_token_file tokens\.txt") as refused:
        parse_token_file(text, "tokens.txt")
    assert message in str(refused.value)
    for secret_part in ("s3cr3t", "Tok3n", "qz", "abc", "colour", "red"):
        assert secret_part not in str(refused.value)


def test_a_bad_token_file_stops_the_command_line_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"good\n{SECRET} inflight=many\n")
    with pytest.raises(UsageError, match="line 2: inflight= must be a whole number") as refused:
        parse_command_line(["--model_name", "m", "--model_path", "/m", "--auth_token_file", str(path)])
    assert SECRET not in str(refused.value)


def test_each_accepted_token_maps_to_its_tenant(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("acme-token tenant=acme inflight=2\nother-token\n")
    tokens = BearerTokens.from_file(str(path))
    assert tokens.tenant_of("Bearer acme-token") == Tenant("acme", TenantLimits(inflight=2))
    assert tokens.tenant_of("bearer other-token") == Tenant(DEFAULT_TENANT)
    assert tokens.tenant_of("Bearer acme-token tenant=acme") is None and tokens.tenant_of(None) is None
    assert tokens.accepts("Bearer acme-token") and not tokens.accepts("Bearer tenant=acme")
    assert set(tokens.tenants) == {"acme", DEFAULT_TENANT}
