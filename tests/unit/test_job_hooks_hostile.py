"""Hostile callback URLs and receivers against the allow-list (tasks.callback_targets) and the README's recipe
for checking a callback's signature, found by attacking them (dot segments out of a URL prefix, IPv6 forms of
private IPv4 addresses and a malformed signature header broke, and are fixed).

Host names are resolved by a stand-in resolver (the DNS boundary, as in test_callback_targets), except numeric
host spellings (`2130706433`, `0177.0.0.1`), which the system resolver parses itself without asking a DNS
server. Nothing here connects anywhere."""

from __future__ import annotations

import time

import pytest

from inference.errors import InvalidArgument
from tasks.callback_delivery import signature
from tasks.callback_targets import AllowList, system_resolver
from tests.integration.test_job_hooks import readme_verify
from tests.unit.test_callback_targets import PUBLIC, resolver

SECRET = b"s3cret"
NUMERIC = {"2130706433", "0177.0.0.1", "0x7f.1", "127.1"}  # parsed by glibc, no DNS query


def allow(text: str) -> AllowList:
    return AllowList.parse("--callback_allow", text)


@pytest.mark.parametrize(
    ("entries", "url", "why"),
    [
        ("10.0.0.0/8", "http://2130706433/", "does not admit 2130706433 (127.0.0.1)"),  # decimal 127.0.0.1
        ("10.0.0.0/8", "http://0177.0.0.1/", "does not admit 0177.0.0.1 (127.0.0.1)"),  # octal
        ("10.0.0.0/8", "http://0x7f.1/", "does not admit 0x7f.1 (127.0.0.1)"),  # hex, short form
        ("10.0.0.0/8", "http://127.1/", "does not admit 127.1 (127.0.0.1)"),
        ("10.0.0.0/8", "http://0.0.0.0:8000/", "does not admit 0.0.0.0"),  # Linux connects it to loopback
        ("10.0.0.0/8", "http://[::]:8000/", "does not admit ::"),
        ("10.0.0.0/8", "http://[::ffff:7f00:1]/", "does not admit ::ffff:7f00:1 (127.0.0.1)"),
        ("10.0.0.0/8", "http://[::1%25lo]/", "does not admit ::1%25lo (::1)"),  # a zone id
        ("10.0.0.0/8", "http://[fe80::1%25eth0]/", "does not admit fe80::1%25eth0 (fe80::1)"),
        ("10.0.0.0/8", "http://[127.0.0.1]/", "cannot be in brackets"),
        ("hooks.example.com", "http://hooks.example.com@127.0.0.1/", "no user info"),
        ("hooks.example.com", "http://127.0.0.1\\@hooks.example.com/", "no user info"),
        ("hooks.example.com", "http://hooks.example.com:80@127.0.0.1:8000/", "no user info"),
        ("hooks.example.com", "http://h\u043e\u043eks.example.com/", "only printable ASCII"),  # Cyrillic o's
        ("hooks.example.com", "http://hooks.example.com/\r\nX-Injected: 1", "only printable ASCII"),
        ("hooks.example.com", "HTTPS://hooks.example.com/" + "a" * 2100, "longer than 2048 characters"),
        ("hooks.example.com", "dict://hooks.example.com:11211/", "not an http:// or https:// URL"),
        ("hooks.example.com", "//hooks.example.com/", "not an http:// or https:// URL"),
        ("*.example.com", "http://example.com/", "does not admit example.com"),  # the wildcard is for subdomains
        ("*.example.com", "http://evilexample.com/", "does not admit evilexample.com"),
        ("*.example.com", "http://10.0.0.5.example.com/", "resolves to 10.0.0.5, not a public address"),
    ],
)
def test_hostile_urls_the_allow_list_refuses(entries: str, url: str, why: str) -> None:
    names = resolver({"example.com": [PUBLIC], "evilexample.com": [PUBLIC], "10.0.0.5.example.com": ["10.0.0.5"]})

    def resolve(host: str, port: int) -> list[str]:
        return system_resolver(host, port) if host in NUMERIC else names(host, port)

    with pytest.raises(InvalidArgument) as refused:
        allow(entries).check(url, resolve)
    assert why in refused.value.message, refused.value.message


@pytest.mark.parametrize("path", ["/ovms/../admin", "/ovms/%2e%2e/admin", "/ovms/./../../admin"])
def test_a_url_prefix_does_not_admit_paths_that_climb_out_of_it(path: str) -> None:
    names = resolver({"hooks.example.com": [PUBLIC]})
    with pytest.raises(InvalidArgument):
        allow("https://hooks.example.com/ovms/").check(f"https://hooks.example.com{path}", names)


@pytest.mark.parametrize(
    "address", ["64:ff9b::a9fe:a9fe", "64:ff9b::a00:5", "2002:a9fe:a9fe::1", "::7f00:1", "::ffff:0:a9fe:a9fe"]
)
def test_a_name_resolving_to_an_ipv6_form_of_a_private_ipv4_address_is_refused(address: str) -> None:
    names = resolver({"hooks.example.com": [address]})
    with pytest.raises(InvalidArgument, match="not a public address"):
        allow("hooks.example.com").check("http://hooks.example.com/", names)


def test_the_readme_recipe_refuses_forged_stale_and_replayed_signatures() -> None:
    """Forgery (another key, a changed body, a header of another body) and replay (an old `t`) fail the
    README's five lines; a fresh, true signature passes."""
    verify = readme_verify()
    body = b'{"id": "x", "state": "SUCCESS"}'
    now = int(time.time())
    assert verify(SECRET, signature(SECRET, body, now), body)
    assert not verify(SECRET, signature(b"guess", body, now), body)
    assert not verify(SECRET, signature(SECRET, body, now), body.replace(b"SUCCESS", b"FAILURE"))
    assert not verify(SECRET, signature(SECRET, b"{}", now), body)
    assert not verify(SECRET, signature(SECRET, body, now - 301), body), "a replay 5 min later"
    assert not verify(SECRET, signature(SECRET, body, now + 301), body)
    moved = signature(SECRET, body, now).replace(f"t={now}", f"t={now + 1}")  # the time is signed too
    assert not verify(SECRET, moved, body)


@pytest.mark.parametrize("header", ["", "garbage", "v1=00", "t=1,v1"])
def test_the_readme_recipe_says_false_to_a_malformed_signature_header(header: str) -> None:
    assert readme_verify()(SECRET, header, b"{}") is False
