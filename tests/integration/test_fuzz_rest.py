"""schemathesis fuzzes the REST API of the session server from the OpenAPI document that server publishes.

The schemathesis CLI runs (its pytest plugin does not work with pytest 9): every operation gets its documented
examples, the coverage phase (boundaries, missing and wrong-typed values, undocumented methods) and random
cases, positive and negative, with half the model names real (tests/support/fuzz_hooks.py). Every check runs
except positive_data_acceptance (a schema-valid body may still not fit a model's signature): no 5xx — with
every model served there is no server-side reason for one — and every answer conforms to the document (status,
content type, body, headers, Allow). Afterwards the api is alive, serving, and left nothing behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import requests

from tests.support.leaks import assert_no_leftovers, rss_bytes
from tests.support.stack import REPO, OvmsProcess

MAX_EXAMPLES = 100  # random cases per operation, besides the examples and the coverage cases
SEED = 1  # reproducible: the same cases every run
RUN_TIMEOUT_S = 300


def test_schemathesis_finds_no_failure(server: OvmsProcess, redis_url: str, tmp_path: Path) -> None:
    rss_before = rss_bytes(server.process.pid)
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server.rest_url}/v1/openapi.json",
        "--checks", "all",
        "--exclude-checks", "positive_data_acceptance",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--request-timeout", "30",
        "--suppress-health-check", "all",
        "--generation-database", "none",
        "--no-color",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCHEMATHESIS_HOOKS": "tests.support.fuzz_hooks"}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-8000:]
    generated = re.search(r"(\d+) generated", report)
    assert generated and int(generated[1]) > 16 * MAX_EXAMPLES // 2, report[-2000:]

    reply = requests.post(
        f"{server.rest_url}/v1/models/versioned:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=30
    )
    assert (reply.status_code, reply.json()) == (200, {"predictions": [[2, 4, 6, 8]]})
    assert_no_leftovers(redis_url, server.process.pid, rss_before)
