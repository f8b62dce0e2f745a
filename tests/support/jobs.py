"""Async jobs from a test's side: upload samples as `.npy`, follow a job to its end."""

from __future__ import annotations

import io
import time

import numpy as np
import requests


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def post_npy(
    rest_url: str, model: str, array: np.ndarray, session: requests.Session | None = None, timeout_s: float = 60
) -> requests.Response:
    """POST /v1/jobs with `array` as the model's one input (with `session`'s headers, e.g. a token)."""
    return (session or requests).post(
        f"{rest_url}/v1/jobs?model={model}",
        data=npy_bytes(array),
        headers={"Content-Type": "application/x-npy"},
        timeout=timeout_s,
    )


def wait_for_end(status_url: str, timeout_s: float, session: requests.Session | None = None) -> dict:
    """The job's status once it is neither PENDING nor STARTED (asked with `session`'s headers, e.g. a token)."""
    deadline = time.monotonic() + timeout_s
    while (status := (session or requests).get(status_url, timeout=10).json())["state"] in ("PENDING", "STARTED"):
        assert time.monotonic() < deadline, f"the job did not end within {timeout_s} s: {status}"
        time.sleep(0.2)
    return status
