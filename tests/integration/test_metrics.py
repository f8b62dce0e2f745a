"""Prometheus metrics at GET /metrics move as requests flow."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import requests
from ovmsclient import make_grpc_client
from prometheus_client.parser import text_string_to_metric_families

from tests.support.jobs import wait_for_end
from tests.support.stack import REPO


def _scrape(server) -> dict[tuple[str, tuple], float]:
    reply = requests.get(f"{server.rest_url}/metrics", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _value(samples: dict, metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def test_metrics_content_type_is_prometheus_text_with_one_charset(server):
    """The exposition format's header, as is: Flask's `mimetype=` appended a second "; charset=utf-8"."""
    reply = requests.get(f"{server.rest_url}/metrics", timeout=10)
    assert reply.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"


def test_counters_and_histograms_move_with_requests(server):
    before = _scrape(server)
    for _ in range(5):
        reply = requests.post(
            f"{server.rest_url}/v1/models/versioned/versions/2:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=10
        )
        assert reply.status_code == 200
    client = make_grpc_client(server.grpc_address)
    for _ in range(3):
        client.predict({"x": np.ones((1, 4), np.float32)}, "versioned", 2)
    missing = requests.post(
        f"{server.rest_url}/v1/models/versioned/versions/9:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=10
    )
    assert missing.status_code == 404
    after = _scrape(server)

    def delta(metric: str, **labels: str) -> float:
        return _value(after, metric, **labels) - _value(before, metric, **labels)

    rest = {"name": "versioned", "version": "2", "interface": "rest", "method": "Predict", "tenant": ""}
    grpc_ = {**rest, "interface": "grpc"}
    assert delta("ovms_requests_success_total", **rest) == 5
    assert delta("ovms_requests_success_total", **grpc_) == 3
    assert delta("ovms_requests_fail_total", **{**rest, "version": "", "code": "NOT_FOUND"}) == 1
    api_time = {"name": "versioned", "version": "2", "interface": "rest", "tenant": ""}  # no token file: no tenant
    assert delta("ovms_request_time_us_count", **api_time) == 5
    assert delta("ovms_request_time_us_sum", **api_time) > 0
    for histogram in ("ovms_queue_time_us", "ovms_inference_time_us", "ovms_executed_batch_size"):
        assert delta(f"{histogram}_count", name="versioned", version="2") == 8
    assert delta("ovms_executed_batch_size_sum", name="versioned", version="2") >= 8
    assert _value(after, "ovms_live_workers") >= 1
    assert ("ovms_queue_depth", (("queue", "ovms.CPU.versioned"),)) in after


def test_every_metric_on_the_grafana_dashboard_is_exported(server):
    """ops/grafana/ovms-dashboard.json must only chart metrics the server really exports."""
    dashboard = json.loads((REPO / "ops" / "grafana" / "ovms-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\b(ovms_[a-z_]+)", expr)}
    requests.post(f"{server.rest_url}/v1/models/versioned:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=10)
    exported = {name for name, _ in _scrape(server)}
    assert used and used <= exported, used - exported


def test_async_jobs_inferences_are_counted(server):
    """Job chunks run on workers for no api request: `ovms_job_chunks_total` and `ovms_job_inferences_total`
    report the workers' cluster-wide counts (flushed with their heartbeats, about once a second)."""
    before = _scrape(server)
    for rows in (1, 300, 600):  # 1 + 2 + 3 chunks of at most 256 samples
        reply = requests.post(
            f"{server.rest_url}/v1/jobs",
            json={"model": "versioned", "version": 2, "instances": [[1, 2, 3, 4]] * rows},
            timeout=30,
        )
        assert wait_for_end(server.rest_url + reply.json()["status_url"], 30)["state"] == "SUCCESS"
    labels = {"name": "versioned", "version": "2"}
    deadline = time.monotonic() + 10
    while True:
        after = _scrape(server)
        counted = [
            _value(after, metric, **extra) - _value(before, metric, **extra)
            for metric, extra in (
                ("ovms_job_chunks_total", {**labels, "outcome": "success"}),
                ("ovms_job_inferences_total", labels),
                ("ovms_job_chunks_total", {**labels, "outcome": "fail"}),
            )
        ]
        if counted == [6, 901, 0] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counted == [6, 901, 0], "success chunks, samples, failed chunks"
