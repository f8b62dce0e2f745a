"""Redis URLs: the TLS settings Celery gets from a rediss:// URL, Sentinel URLs split into what Celery and
redis-py take, and passwords kept out of logs."""

from __future__ import annotations

import ssl

import pytest

from tasks.connections import celery_url, check_reachable, redact, ssl_options, transport_options
from tasks.sentinel import SentinelUrl


def test_plain_redis_urls_need_no_tls_options() -> None:
    assert ssl_options("redis://:pw@host:6379/0") is None


def test_rediss_urls_verify_the_server_by_default() -> None:
    assert ssl_options("rediss://host:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_rediss_url_options_reach_celery() -> None:
    url = "rediss://:pw@host:6380/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_cert_reqs=none"
    assert ssl_options(url) == {
        "ssl_cert_reqs": ssl.CERT_NONE,
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
    }


def test_rediss_with_an_unknown_cert_reqs_value_is_refused() -> None:
    with pytest.raises(ValueError, match="ssl_cert_reqs must be required, optional or none"):
        ssl_options("rediss://host/0?ssl_cert_reqs=maybe")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@redis-host:6379/0", "redis://:***@redis-host:6379/0"),
        (
            "rediss://ovms:s3cret@[::1]:6380/1?ssl_ca_certs=/ca.pem",
            "rediss://ovms:***@[::1]:6380/1?ssl_ca_certs=/ca.pem",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        # malformed or with raw separators in the password: shown, but never with the password
        ("redis://:s3;cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("sentinel://:s3;cret@h1;sentinel://h2?master_name=m", "sentinel://:***@h1;sentinel://h2?master_name=m"),
        ("redis://:s3c/ret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://:s3c@ret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://:s3cret@h:notaport/0", "redis://:***@h:notaport/0"),
        ("redis://:s3cret@[::1:6379/0", "redis://:***@[::1:6379/0"),
    ],
)
def test_passwords_never_reach_logs(url: str, shown: str) -> None:
    assert redact(url) == shown


SENTINELS = "sentinel://:s3cret@h1:26379/2;sentinel://h2:26380;sentinel://[::1]?master_name=mymaster"


def test_a_sentinel_url_names_every_sentinel_and_the_master() -> None:
    url = SentinelUrl.parse(SENTINELS)
    assert url.sentinels == (("h1", 26379), ("h2", 26380), ("::1", 26379))
    assert (url.master_name, url.db, url.password, url.sentinel_password) == ("mymaster", 2, "s3cret", None)


def test_celery_gets_every_sentinel_with_the_masters_credentials_and_no_query() -> None:
    """Celery and kombu read the password and db of the first part only, and refuse unknown parameters."""
    assert (
        celery_url(SENTINELS)
        == "sentinel://:s3cret@h1:26379/2;sentinel://:s3cret@h2:26380/2;sentinel://:s3cret@[::1]:26379/2"
    )
    assert transport_options(SENTINELS)["master_name"] == "mymaster"


def test_a_sentinel_password_goes_to_the_sentinels_only() -> None:
    url = "sentinel://ovms:m%40ster@h1;sentinel://h2?master_name=m&sentinel_password=s%2Bnt"
    assert transport_options(url)["sentinel_kwargs"]["password"] == "s+nt"
    assert "password" not in transport_options(url.replace("&sentinel_password=s%2Bnt", ""))["sentinel_kwargs"]
    assert celery_url(url) == "sentinel://ovms:m%40ster@h1:26379/0;sentinel://ovms:m%40ster@h2:26379/0"
    assert SentinelUrl.parse(url).password == "m@ster"


def test_redis_urls_pass_to_celery_unchanged() -> None:
    assert celery_url("rediss://:pw@host:6380/1?ssl_cert_reqs=none") == "rediss://:pw@host:6380/1?ssl_cert_reqs=none"
    assert transport_options("redis://host/0") == {}


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("sentinel://h1;sentinel://h2", "needs \\?master_name=NAME"),
        ("sentinel://h1;redis://h2?master_name=m", "every part of a Sentinel URL is sentinel://"),
        ("sentinel://:a@h1;sentinel://:b@h2?master_name=m", "different values for password"),
        ("sentinel://h1/0;sentinel://h2/1?master_name=m", "different values for db"),
        ("sentinel://h1/x?master_name=m", "the db of a Sentinel URL is a number"),
        ("sentinel://h1?master_name=m&ssl_ca_certs=/ca.pem", "only master_name, sentinel_password"),
    ],
)
def test_wrong_sentinel_urls_are_refused_with_the_reason(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        SentinelUrl.parse(url)


def test_sentinel_passwords_never_reach_logs() -> None:
    url = "sentinel://:s3cret@h1:26379/0;sentinel://:s3cret@h2:26379/0?master_name=m&sentinel_password=t0p"
    assert redact(url) == "sentinel://:***@h1:26379/0;sentinel://:***@h2:26379/0?master_name=m&sentinel_password=***"
    assert redact("sentinel://h1;sentinel://h2?master_name=m") == "sentinel://h1;sentinel://h2?master_name=m"


@pytest.mark.parametrize("url", ["redis://:s3cret@h:notaport/0", "sentinel://:s3cret@[::1?master_name=m"])
def test_a_malformed_url_is_one_line_without_its_password(url: str) -> None:
    """Not a traceback from inside the error message's own redaction."""
    with pytest.raises(RuntimeError, match=r"^Redis broker .* is not usable: ValueError: ") as caught:
        check_reachable(url, "broker")
    assert "s3cret" not in str(caught.value)
