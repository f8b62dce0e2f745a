"""TLS, mutual TLS and bearer tokens on gRPC and REST, through real `ovms` processes and real clients.

Certificates are made at test time by trustme: one CA signs the server's and a client's certificate;
a second CA, which the server does not trust, signs a stranger's.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ovmsclient import make_grpc_client
from ovmsclient.tfs_compat.grpc.tensors import make_ndarray, make_tensor_proto
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.support.hostile_grpc import HTTP2_PREFACE, HalfOpenStreams, IdleConnections
from tests.support.stack import OvmsProcess, ovms_command, start_ovms

TOKEN = "tok-3c1b9f0e8d"
ROTATED_TOKEN = "tok-next-77a2"


@dataclass(frozen=True)
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    stranger_cert: str  # signed by a CA the server does not trust
    stranger_key: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    issued = {
        "server": ca.issue_cert("localhost", "127.0.0.1"),
        "client": ca.issue_cert("client.ovms.test"),
        "stranger": other_ca.issue_cert("client.ovms.test"),
    }
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    for name, cert in issued.items():
        cert.cert_chain_pems[0].write_to_path(str(directory / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    files = {
        f"{name}_{kind}": str(directory / f"{name}.{ext}")
        for name in issued
        for kind, ext in (("cert", "pem"), ("key", "key"))
    }
    return Pki(ca=str(directory / "ca.pem"), **files)


@pytest.fixture(scope="module")
def tls_server(
    pki: Pki, models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OvmsProcess]:
    """TLS (no client certificates) and bearer tokens: a token file with two tokens, as during a rotation."""
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"# current, then the next one\n{TOKEN}\n{ROTATED_TOKEN}\n")
    process = start_ovms(
        [
            "--model_name", "digits_tls", "--model_path", str(models_dir / "digits"), "--broker_url", redis_url,
            "--ssl_certificate", pki.server_cert, "--ssl_private_key", pki.server_key,
            "--auth_token_file", str(tokens),
        ]
    )  # fmt: skip
    yield process
    process.stop()


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, models_dir: Path, redis_url: str) -> Iterator[OvmsProcess]:
    """Mutual TLS: clients must present a certificate signed by the CA."""
    process = start_ovms(
        [
            "--model_name", "digits_mtls", "--model_path", str(models_dir / "digits"), "--broker_url", redis_url,
            "--ssl_certificate", pki.server_cert, "--ssl_private_key", pki.server_key, "--ssl_client_ca", pki.ca,
        ]
    )  # fmt: skip
    yield process
    process.stop()


@pytest.fixture(scope="module")
def digits(models_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(models_dir / "data" / "imgs.npy")[:8], np.load(models_dir / "data" / "labels.npy")[:8]


def _https(process: OvmsProcess) -> str:
    return f"https://localhost:{process.rest_port}"


def _channel_credentials(pki: Pki, client: str | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(Path(pki.ca).read_bytes())
    cert, key = getattr(pki, f"{client}_cert"), getattr(pki, f"{client}_key")
    return grpc.ssl_channel_credentials(Path(pki.ca).read_bytes(), Path(key).read_bytes(), Path(cert).read_bytes())


def _health(address: str, credentials: grpc.ChannelCredentials | None = None) -> int:
    """The gRPC health status of the server, over TLS with `credentials`, else in plain text."""
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def _predict_request(model: str, images: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(make_tensor_proto(images))
    return request


# ------------------------------------------------------------------------------------------- TLS + tokens


def test_rest_over_tls_with_a_token(tls_server, pki, digits):
    images, labels = digits
    for token in (TOKEN, ROTATED_TOKEN):
        reply = requests.post(
            f"{_https(tls_server)}/v1/models/digits_tls:predict",
            json={"instances": images.tolist()},
            headers={"Authorization": f"Bearer {token}"},
            verify=pki.ca,
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        assert (np.argmax(reply.json()["predictions"], axis=1) == labels).mean() >= 0.75


def test_kserve_v2_rest_over_tls_with_a_token(tls_server, pki, digits):
    """The binary tensor data extension: the JSON header, then the images' raw float32 bytes."""
    images, labels = digits
    tensor = {"name": "x", "datatype": "FP32", "shape": list(images.shape), "parameters": {"binary_data_size": 2048}}
    header = json.dumps({"inputs": [tensor]}).encode()
    reply = requests.post(
        f"{_https(tls_server)}/v2/models/digits_tls/infer",
        data=header + images.astype("<f4").tobytes(),
        headers={"Authorization": f"Bearer {TOKEN}", "Inference-Header-Content-Length": str(len(header))},
        verify=pki.ca,
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    probabilities = np.array(reply.json()["outputs"][0]["data"]).reshape(len(labels), 10)
    assert (np.argmax(probabilities, axis=1) == labels).mean() >= 0.75


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}"])
def test_rest_without_an_accepted_token_is_401(tls_server, pki, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in (
        ("GET", "/v1/models/digits_tls"),
        ("POST", "/v1/models/digits_tls:predict"),
        ("GET", "/v1/jobs"),
        ("GET", "/v2"),
        ("GET", "/v2/models/digits_tls"),
        ("POST", "/v2/models/digits_tls/infer"),
    ):
        reply = requests.request(method, f"{_https(tls_server)}{path}", headers=headers, verify=pki.ca, timeout=30)
        assert reply.status_code == 401
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="ovms"'
        assert reply.json() == {"error": "Missing or invalid bearer token"}


def test_health_and_metrics_need_no_token(tls_server, pki):
    for path in ("/v1/health/live", "/v1/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"):
        assert requests.get(f"{_https(tls_server)}{path}", verify=pki.ca, timeout=30).status_code == 200, path


def test_plain_http_to_the_tls_rest_port_gets_no_answer(tls_server):
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://localhost:{tls_server.rest_port}/v1/health/live", timeout=10)


def test_an_unknown_server_certificate_is_refused_by_the_client(tls_server):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{_https(tls_server)}/v1/health/live", timeout=10)  # the system CAs do not know ours


def test_the_jobs_client_sends_the_token_from_the_environment(tls_server, pki, digits, tmp_path):
    """`ovms submit`: the token from $OVMS_TOKEN, the CA from requests' $REQUESTS_CA_BUNDLE."""
    images, labels = digits
    np.save(tmp_path / "imgs.npy", images)
    submit = ["submit", "--url", _https(tls_server), "--model", "digits_tls", "--input", str(tmp_path / "imgs.npy")]

    def ovms(*args: str, **env: str) -> subprocess.CompletedProcess:
        environment = {**os.environ, "REQUESTS_CA_BUNDLE": pki.ca, **env}
        return subprocess.run(ovms_command(*args), env=environment, capture_output=True, text=True, timeout=120)

    refused = ovms(*submit)
    assert refused.returncode == 1
    assert "ovms submit: 401 Missing or invalid bearer token" in refused.stderr
    done = ovms(*submit, "--wait", "--output", str(tmp_path / "out.npy"), OVMS_TOKEN=TOKEN)
    assert done.returncode == 0, done.stderr
    assert (np.load(tmp_path / "out.npy").argmax(axis=1) == labels).mean() >= 0.75
    assert ovms("jobs", "--url", _https(tls_server), OVMS_TOKEN=TOKEN).returncode == 0


def test_grpc_over_tls_with_a_token(tls_server, pki, digits):
    images, labels = digits
    credentials = grpc.composite_channel_credentials(
        _channel_credentials(pki), grpc.access_token_call_credentials(TOKEN)
    )
    with grpc.secure_channel(tls_server.grpc_address, credentials) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(_predict_request("digits_tls", images), timeout=30)
    assert (make_ndarray(response.outputs["probabilities"]).argmax(axis=1) == labels).mean() >= 0.75


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_grpc_without_an_accepted_token_is_unauthenticated(tls_server, pki, digits, token):
    credentials = _channel_credentials(pki)
    if token:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    with grpc.secure_channel(tls_server.grpc_address, credentials) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(_predict_request("digits_tls", digits[0]), timeout=30)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.value.details() == "Missing or invalid bearer token"


def test_half_open_streams_without_a_token_are_refused_at_once(tls_server, pki, digits):
    """300 streams over TLS, with no token, that never send their request: each is answered
    UNAUTHENTICATED without its message being awaited, and others are served meanwhile."""
    tls = ssl.create_default_context(cafile=pki.ca)
    tls.set_alpn_protocols(["h2"])
    credentials = grpc.composite_channel_credentials(
        _channel_credentials(pki), grpc.access_token_call_credentials(TOKEN)
    )
    with (
        HalfOpenStreams(tls_server.grpc_port, 300, tls=tls) as streams,
        grpc.secure_channel(tls_server.grpc_address, credentials) as channel,
    ):
        assert streams.opened == 300
        assert _health(tls_server.grpc_address, _channel_credentials(pki)) == health_pb2.HealthCheckResponse.SERVING
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert stub.Predict(_predict_request("digits_tls", digits[0]), timeout=5).outputs["probabilities"]
        deadline = time.monotonic() + 5
        while streams.answered()["16"] < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert streams.answered() == {"16": 300}, "every stream without a token ends UNAUTHENTICATED (16)"


def test_preface_only_tls_connections_are_closed_within_seconds(tls_server, pki):
    """Over TLS too, a connection that sends the HTTP/2 preface and nothing more is closed once idle."""
    tls = ssl.create_default_context(cafile=pki.ca)
    tls.set_alpn_protocols(["h2"])
    with IdleConnections(tls_server.grpc_port, 100, greeting=HTTP2_PREFACE, tls=tls) as connections:
        assert connections.open_after(20) == 0, "preface-only TLS connections still open after 20 s"


def test_grpc_health_needs_no_token(tls_server, pki):
    assert _health(tls_server.grpc_address, _channel_credentials(pki)) == health_pb2.HealthCheckResponse.SERVING


def test_a_plain_text_grpc_client_is_refused(tls_server):
    with pytest.raises(grpc.RpcError) as error:
        _health(tls_server.grpc_address)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_log_says_what_is_on_and_never_shows_a_token(tls_server):
    log = tls_server.log()
    grpc_port, rest_port = tls_server.grpc_port, tls_server.rest_port
    grpc_on = f"gRPC on 0.0.0.0:{grpc_port} and [::]:{grpc_port}"
    assert f"Server started on port {grpc_port} ({grpc_on}, TLS, bearer tokens required)" in log
    assert f"Started REST server at 0.0.0.0:{rest_port} (TLS, bearer tokens required)" in log
    assert "Listening on all interfaces without credentials" not in log  # tokens are credentials
    assert TOKEN not in log and ROTATED_TOKEN not in log


# ------------------------------------------------------------------------------------------------- mTLS


def test_mtls_serves_clients_with_a_certificate_from_the_ca(mtls_server, pki, digits):
    images, labels = digits
    client = make_grpc_client(
        mtls_server.grpc_address,
        {"server_cert_path": pki.ca, "client_cert_path": pki.client_cert, "client_key_path": pki.client_key},
    )
    assert (client.predict({"x": images}, "digits_mtls").argmax(axis=1) == labels).mean() >= 0.75
    reply = requests.post(
        f"{_https(mtls_server)}/v1/models/digits_mtls:predict",
        json={"instances": images.tolist()},
        cert=(pki.client_cert, pki.client_key),
        verify=pki.ca,
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert "(mutual TLS)" in mtls_server.log()


@pytest.mark.parametrize("client", [None, "stranger"])
def test_mtls_refuses_clients_without_a_trusted_certificate(mtls_server, pki, client):
    cert = (getattr(pki, f"{client}_cert"), getattr(pki, f"{client}_key")) if client else None
    with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
        requests.get(f"{_https(mtls_server)}/v1/health/live", cert=cert, verify=pki.ca, timeout=10)
    with pytest.raises(grpc.RpcError) as error:
        _health(mtls_server.grpc_address, _channel_credentials(pki, client))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_jobs_client_presents_a_client_certificate(mtls_server, pki, digits, tmp_path):
    """`ovms submit | jobs` against mutual TLS: --cert/--key/--cacert or $OVMS_CERT/$OVMS_KEY/$OVMS_CACERT;
    --cacert wins over requests' $REQUESTS_CA_BUNDLE; without a certificate, one line saying what to give."""
    images, labels = digits
    np.save(tmp_path / "imgs.npy", images)
    url = _https(mtls_server)

    def ovms(*args: str, **env: str) -> subprocess.CompletedProcess:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("OVMS_")}
        environment = {**environment, "REQUESTS_CA_BUNDLE": pki.stranger_cert, **env}  # a CA file that trusts nobody
        return subprocess.run(
            ovms_command(*args, "--url", url), env=environment, capture_output=True, text=True, timeout=120
        )

    untrusted = ovms("jobs")
    assert untrusted.returncode == 1 and "Traceback" not in untrusted.stderr, untrusted.stderr
    assert "the server's certificate is not trusted: give its CA with --cacert FILE" in untrusted.stderr
    no_certificate = ovms("jobs", "--cacert", pki.ca)
    assert no_certificate.returncode == 1 and len(no_certificate.stderr.splitlines()) == 1, no_certificate.stderr
    assert "wants a client certificate its CA signed: give --cert FILE --key FILE" in no_certificate.stderr
    stranger = ovms("jobs", "--cacert", pki.ca, "--cert", pki.stranger_cert, "--key", pki.stranger_key)
    assert stranger.returncode == 1 and len(stranger.stderr.splitlines()) == 1, stranger.stderr
    assert "refused the client certificate: give one signed by the server's --ssl_client_ca" in stranger.stderr

    certificate = ["--cacert", pki.ca, "--cert", pki.client_cert, "--key", pki.client_key]
    submit = ["submit", "--model", "digits_mtls", "--input", str(tmp_path / "imgs.npy")]
    done = ovms(*submit, *certificate, "--output", str(tmp_path / "out.npy"))
    assert done.returncode == 0, done.stderr
    assert (np.load(tmp_path / "out.npy").argmax(axis=1) == labels).mean() >= 0.75
    listed = ovms("jobs", OVMS_CACERT=pki.ca, OVMS_CERT=pki.client_cert, OVMS_KEY=pki.client_key)
    assert listed.returncode == 0 and done.stdout.split()[0] in listed.stdout, listed.stderr
