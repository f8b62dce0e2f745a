"""`ovms submit | jobs | result`: the command-line client for asynchronous jobs over the REST API.

Against a server with `--auth_token_file`, the token comes from $OVMS_TOKEN (never a flag, so that it
stays off `ps`); for https with a private CA, requests' own $REQUESTS_CA_BUNDLE names the CA file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np
import requests
from tqdm import tqdm

from tasks.job_states import FINAL, JobState
from tasks.settings import JobSettings

COMMANDS = ("submit", "jobs", "result")
WAIT_TIMEOUT_S = JobSettings.job_timeout_s + 100.0  # a job fails on the server after --job_timeout_s
POLL_INTERVAL_S = 0.2
POLL_TIMEOUT_S = 30.0  # one status request; an api that takes longer is asked again


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    args.http = _session()
    try:
        return args.run(args)
    except requests.RequestException as exc:  # a connection error, a timeout, a reply cut short or not JSON
        print(f"ovms {argv[0]}: no answer from {args.url}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _session() -> requests.Session:
    session = requests.Session()
    token = os.environ.get("OVMS_TOKEN")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=os.environ.get("OVMS_URL", "http://localhost:8000"), help="REST base URL (env OVMS_URL)"
    )
    parser = argparse.ArgumentParser(prog="ovms", description="Asynchronous jobs on an ovms REST endpoint")
    commands = parser.add_subparsers(required=True)
    submit = commands.add_parser(
        "submit", parents=[common], help="submit a .npy (one input) or .npz (inputs by name) as a job"
    )
    submit.add_argument("--model", required=True)
    submit.add_argument("--version", type=int, default=0)
    submit.add_argument("--input", required=True, help=".npy or .npz file of samples")
    submit.add_argument("--wait", action="store_true", help="show progress until the job ends")
    submit.add_argument(
        "--timeout",
        type=float,
        default=WAIT_TIMEOUT_S,
        help=f"with --wait: give up (exit 1) after this many seconds (default: {WAIT_TIMEOUT_S:.0f})",
    )
    submit.add_argument("--output", help="with --wait: write the outputs here (.npy for one output, else .npz)")
    submit.set_defaults(run=_submit)
    jobs = commands.add_parser("jobs", parents=[common], help="list recent jobs")
    jobs.set_defaults(run=_jobs)
    result = commands.add_parser("result", parents=[common], help="fetch a finished job's outputs")
    result.add_argument("job_id")
    result.add_argument("--output", help="write the outputs here (.npy for one output, else .npz); else print JSON")
    result.set_defaults(run=_result)
    return parser


def _submit(args: argparse.Namespace) -> int:
    with open(args.input, "rb") as handle:
        data = handle.read()
    reply = args.http.post(
        f"{args.url}/v1/jobs",
        params={"model": args.model, "version": args.version},
        data=data,
        headers={"Content-Type": "application/x-npy"},
        timeout=300,
    )
    if reply.status_code != 202:
        return _failed("submit", reply)
    job_id = reply.json()["id"]
    print(job_id)
    if not args.wait:
        return 0
    status = _follow(args.http, args.url, job_id, time.monotonic() + args.timeout)
    if isinstance(status, requests.Response):
        return _failed("submit", status)
    if status["state"] not in FINAL:
        print(
            f"ovms submit: job {job_id} still {status['state']} after {args.timeout:.0f} s (--timeout)", file=sys.stderr
        )
        return 1
    if status["state"] != JobState.SUCCESS:
        print(f"ovms submit: job {job_id} ended {status['state']}: {'; '.join(status['errors'])}", file=sys.stderr)
        return 1
    return _fetch(args.http, args.url, job_id, args.output)


def _follow(http: requests.Session, url: str, job_id: str, deadline: float) -> dict | requests.Response:
    """Poll the job, drawing a progress bar of samples done, until it ends or `deadline` (time.monotonic())
    passes: its last status, or the reply that was not one (e.g. 404 once the job expired). An api that is
    unreachable, slow (a request timeout) or unavailable (503) is asked again until then; past it, its last
    connection error is raised."""
    with tqdm(unit="sample", desc=job_id[:8], file=sys.stderr) as bar:
        while True:
            try:
                reply = http.get(f"{url}/v1/jobs/{job_id}", timeout=min(POLL_TIMEOUT_S, _left(deadline)))
            except (requests.ConnectionError, requests.Timeout):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(POLL_INTERVAL_S)
                continue
            if reply.status_code == 503 and time.monotonic() < deadline:  # e.g. Redis restarting: ask again
                time.sleep(POLL_INTERVAL_S)
                continue
            if reply.status_code != 200:
                return reply
            status = reply.json()
            bar.total = status["progress"]["total"]
            bar.n = status["progress"]["done"]
            bar.refresh()
            if status["state"] in FINAL or time.monotonic() > deadline:
                return status
            time.sleep(POLL_INTERVAL_S)


def _left(deadline: float) -> float:
    """Seconds until `deadline`, at least a short one: a poll's request timeout."""
    return max(deadline - time.monotonic(), POLL_INTERVAL_S)


def _jobs(args: argparse.Namespace) -> int:
    reply = args.http.get(f"{args.url}/v1/jobs", timeout=30)
    if reply.status_code != 200:
        return _failed("jobs", reply)
    for job in reply.json()["jobs"]:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["created"]))
        progress = f"{job['progress']['done']}/{job['progress']['total']}"
        print(f"{job['id']}  {created}  {job['model']} v{job['version']}  {job['state']:<8}  {progress}")
    return 0


def _result(args: argparse.Namespace) -> int:
    return _fetch(args.http, args.url, args.job_id, args.output)


def _fetch(http: requests.Session, url: str, job_id: str, output: str | None) -> int:
    form = "json" if output is None else ("npy" if output.endswith(".npy") else "npz")
    reply = http.get(f"{url}/v1/jobs/{job_id}/result", params={"format": form}, timeout=300)
    if reply.status_code != 200:
        return _failed("result", reply)
    if output is None:
        print(json.dumps(reply.json()))
        return 0
    with open(output, "wb") as handle:
        handle.write(reply.content)
    if form == "npy":
        print(f"{output}: {np.load(io.BytesIO(reply.content)).shape}")
    return 0


def _failed(command: str, reply: requests.Response) -> int:
    try:
        message = reply.json().get("error", reply.text)
    except ValueError:
        message = reply.text
    print(f"ovms {command}: {reply.status_code} {message}", file=sys.stderr)
    return 1
