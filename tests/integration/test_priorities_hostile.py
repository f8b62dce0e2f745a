"""Hostile tests of request priorities and fair share (README "Priorities and fair share", "Tenants and limits"):
malformed priority values, a tenant raising its own level over the fair share of weights, ageing of a level-3
request that waited in the api before its batcher, and cross-talk between kinds that share batches. What broke,
and is fixed: '-+1' was a 500, any tenant could take level 1 and outweigh a heavier one, and ageing ignored the
time a request waited in the api. Counts and orders are asserted, with wide margins on times."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.support.load import GrpcLoad, Outcome, float_request
from tests.support.stack import OvmsProcess, private_redis, start_ovms

redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)

TOKENS = {
    "big": "big-token-1",
    "small": "small-token-1",
    "other": "other-token-1",
    "urgent": "urgent-token-1",
    "pressing": "pressing-token-1",
}
DIGITS_ROW = [float(v) for v in range(64)]


@pytest.fixture(scope="module")
def stack(models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvmsProcess]:
    """One `ovms` (one worker) serving resnet and digits to five tenants: `big` (weight 1000), `small`
    (weight 1) and `other` (weight 1), none of which may ask above a model's default level, and `urgent` and
    `pressing`, which may ask for level 1."""
    directory = tmp_path_factory.mktemp("priorities_hostile")
    tokens = directory / "tokens"
    tokens.write_text(
        f"{TOKENS['big']} tenant=big weight=1000\n{TOKENS['small']} tenant=small weight=1\n"
        f"{TOKENS['other']} tenant=other\n{TOKENS['urgent']} tenant=urgent max_priority=1\n"
        f"{TOKENS['pressing']} tenant=pressing max_priority=1\n"
    )
    config = directory / "config.json"
    entries = [{"name": name, "base_path": str(models_dir / name)} for name in ("resnet", "digits")]
    config.write_text(json.dumps({"model_config_list": [{"config": entry} for entry in entries]}))
    process = start_ovms(["--config_path", str(config), "--broker_url", redis_url, "--auth_token_file", str(tokens)])
    yield process
    process.stop()


def _auth(tenant: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {TOKENS[tenant]}")


def _rest_headers(tenant: str, priority: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {TOKENS[tenant]}"}
    if priority is not None:
        headers["OVMS-Priority"] = priority
    return headers


def _resnet_request() -> object:  # a TF Serving PredictRequest
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, 224, 224)).astype(np.float32)
    return float_request("resnet", "data", image)


def _ok_within(outcomes: list[Outcome], since: float, until: float) -> int:
    return sum(1 for o in outcomes if o.code == "OK" and since <= o.finished < until)


# --------------------------------------------------------------------------- malformed values


def test_a_priority_of_two_signs_is_invalid_argument_not_an_internal_error(stack: OvmsProcess) -> None:
    headers = _rest_headers("other", "-+1")
    tfs = requests.post(
        f"{stack.rest_url}/v1/models/digits:predict", json={"instances": [DIGITS_ROW]}, headers=headers, timeout=30
    )
    v2_body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": DIGITS_ROW}]}
    v2 = requests.post(f"{stack.rest_url}/v2/models/digits/infer", json=v2_body, headers=headers, timeout=30)
    assert (tfs.status_code, v2.status_code) == (400, 400), (tfs.text, v2.text)
    with grpc.insecure_channel(stack.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = float_request("digits", "x", np.array([DIGITS_ROW]))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(request, timeout=30, metadata=(_auth("other"), ("ovms-priority", "-+1")))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()


@pytest.mark.parametrize(
    ("value", "status"),
    [("+3", 200), ("00", 200), ("1\t", 200), ("+-1", 400), ("--1", 400), ("\u00b3", 400), ("1" * 5000, 400)],
)
def test_odd_priority_headers_are_served_or_refused_cleanly(stack: OvmsProcess, value: str, status: int) -> None:
    reply = requests.post(
        f"{stack.rest_url}/v1/models/digits:predict",
        json={"instances": [DIGITS_ROW]},
        headers=_rest_headers("other", value),
        timeout=30,
    )
    assert reply.status_code == status, reply.text
    if status == 400:
        assert "priority" in reply.json()["error"].lower() and len(reply.text) < 500


def test_a_v2_priority_beyond_json_integer_limits_is_400(stack: OvmsProcess) -> None:
    tensor = json.dumps({"name": "x", "datatype": "FP32", "shape": [1, 64], "data": DIGITS_ROW})
    body = '{"parameters": {"priority": ' + "9" * 5000 + '}, "inputs": [' + tensor + "]}"
    reply = requests.post(
        f"{stack.rest_url}/v2/models/digits/infer",
        data=body,
        headers={**_rest_headers("other"), "Content-Type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 400, reply.text


# --------------------------------------------------------------------------- escalation and starvation


def test_a_tenant_cannot_outweigh_a_heavier_tenant_by_raising_its_own_level(stack: OvmsProcess) -> None:
    request = _resnet_request()
    heavy = GrpcLoad(stack.grpc_address, request, 12, timeout_s=60, metadata=(_auth("big"),))
    light = GrpcLoad(stack.grpc_address, request, 12, timeout_s=60, metadata=(_auth("small"), ("ovms-priority", "1")))
    heavy.start()
    light.start()
    try:
        time.sleep(3.0)
        since = time.monotonic()
        time.sleep(6.0)
        until = time.monotonic()
    finally:
        heavy_outcomes, light_outcomes = heavy.stop(), light.stop()
    served_heavy, served_light = _ok_within(heavy_outcomes, since, until), _ok_within(light_outcomes, since, until)
    assert served_heavy + served_light > 20, "resnet was saturated"
    assert served_heavy >= served_light, f"weight 1000: {served_heavy} requests; weight 1 at level 1: {served_light}"


def test_a_level_3_request_waits_at_most_about_3_s_longer_than_a_level_1_flood(stack: OvmsProcess) -> None:
    request = _resnet_request()
    floods = [
        GrpcLoad(stack.grpc_address, request, 12, timeout_s=60, metadata=(_auth(tenant), ("ovms-priority", "1")))
        for tenant in ("urgent", "pressing")
    ]
    low = GrpcLoad(stack.grpc_address, request, 8, timeout_s=60, metadata=(_auth("other"), ("ovms-priority", "3")))
    for flood in floods:
        flood.start()
    try:
        time.sleep(3.0)
        low.start()
        time.sleep(12.0)
    finally:
        low_outcomes = low.stop()
        flood_outcomes = [outcome for flood in floods for outcome in flood.stop()]
    assert {o.code for o in low_outcomes + flood_outcomes} == {"OK"}, "nothing failed"
    low_s = sorted(o.seconds for o in low_outcomes)
    flood_s = sorted(o.seconds for o in flood_outcomes if o.started > low_outcomes[0].started)
    assert low_s, "level 3 is not starved outright"
    median_low, median_flood = low_s[len(low_s) // 2], flood_s[len(flood_s) // 2]
    assert median_low <= median_flood + 3.5, f"level 3 median {median_low:.2f} s, level-1 flood {median_flood:.2f} s"


# --------------------------------------------------------------------------- cross-talk


def _digits_answer(stack: OvmsProcess, rows: np.ndarray, tenant: str, level: str) -> np.ndarray:
    reply = requests.post(
        f"{stack.rest_url}/v1/models/digits:predict",
        json={"instances": rows.tolist()},
        headers=_rest_headers(tenant, level),
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return np.array(reply.json()["predictions"], np.float32)


def test_requests_of_many_levels_and_tenants_batched_together_get_only_their_own_rows(stack: OvmsProcess) -> None:
    rng = np.random.default_rng(7)
    inputs = [rng.uniform(0, 16, (int(rng.integers(1, 4)), 64)).astype(np.float32) for _ in range(48)]
    expected = [_digits_answer(stack, rows, "other", "2") for rows in inputs]
    kinds = [(tenant, level) for tenant in TOKENS for level in ("0", "1", "2", "3")]
    mismatched: list[int] = []

    def client(offset: int) -> None:
        for index in range(offset, len(inputs), 8):
            tenant, level = kinds[(index + offset) % len(kinds)]
            got = _digits_answer(stack, inputs[index], tenant, level)
            if got.shape != expected[index].shape or not np.allclose(got, expected[index], atol=1e-5):
                mismatched.append(index)

    for _ in range(3):
        threads = [threading.Thread(target=client, args=(offset,)) for offset in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert mismatched == []
