"""Redis URLs: the TLS settings Celery gets from a rediss:// URL, and passwords kept out of logs."""

from __future__ import annotations

import ssl

import pytest

from tasks.connections import redact, ssl_options


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
    ],
)
def test_passwords_never_reach_logs(url: str, shown: str) -> None:
    assert redact(url) == shown
