"""`ovms submit | jobs | result | cancel | retry`: the command-line client for asynchronous jobs over the REST API,
and the home of `ovms status` (ovms.status) too, which shares its options and its one-line errors.

Against a server with `--auth_token_file`, the token comes from $OVMS_TOKEN (never a flag, so that it
stays off `ps`); for https, --cacert (or $OVMS_CACERT) names a private CA, and --cert/--key (or
$OVMS_CERT/$OVMS_KEY) a client certificate for a server with --ssl_client_ca. Every failure is one line
on stderr and a non-zero exit, never a traceback; a reader that closes the pipe early (`| head`) ends
the command quietly with 141, as a Unix tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from typing import NoReturn

import numpy as np
import requests
from tqdm import tqdm

from ovms.client_http import ClientError, checked_url, failure, no_answer, session
from ovms.status import add_command as add_status_command
from ovms.text_table import table
from tasks.job_states import FINAL, JobState
from tasks.settings import JobSettings

WAIT_TIMEOUT_S = JobSettings.job_timeout_s + 100.0  # a job fails on the server after --job_timeout_s
DEFAULT_URL = "http://localhost:8000"
POLL_INTERVAL_S = 0.2
POLL_TIMEOUT_S = 30.0  # one status request; an api that takes longer is asked again
USAGE_EXIT_CODE = 64  # as the server's command line (ovms.cli)
BROKEN_PIPE_EXIT_CODE = 141  # 128 + SIGPIPE: what a shell reports for `cat big | head`
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT


def main(argv: list[str]) -> int:
    command = f"ovms {argv[0]}"
    try:
        args = _parser().parse_args(argv)
        args.url_given = args.url is not None or "OVMS_URL" in os.environ
        args.url = checked_url(args.url or os.environ.get("OVMS_URL", DEFAULT_URL))
        args.http = session(args.cert, args.key, args.cacert)
        code = args.run(args)
        sys.stdout.flush()  # here, so that a closed pipe is seen while it can still be handled
        return code
    except _UsageError as exc:
        print(f"{command}: {exc} (see {command} --help)", file=sys.stderr)
        return USAGE_EXIT_CODE
    except ClientError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:  # a connection error, a timeout, a reply cut short or not JSON
        print(f"{command}: {no_answer(args.url, exc, args.http.cert is not None)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Python's advice (docs "Note on SIGPIPE"): point stdout at devnull, so that the flush at exit
        # does not raise again; the reader wanted no more, which is no error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT_CODE
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE


class _UsageError(Exception):
    """A command line argparse refused."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (its own prints the usage first and exits 2)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    environment = os.environ.get
    common.add_argument("--url", help=f"REST base URL (env OVMS_URL; default: {DEFAULT_URL})")
    common.add_argument(
        "--cacert", default=environment("OVMS_CACERT"), help="CA file of an https server (env OVMS_CACERT)"
    )
    common.add_argument(
        "--cert", default=environment("OVMS_CERT"), help="client certificate for mutual TLS (env OVMS_CERT)"
    )
    common.add_argument("--key", default=environment("OVMS_KEY"), help="the --cert's private key (env OVMS_KEY)")
    parser = _Parser(prog="ovms", description="Asynchronous jobs on an ovms REST endpoint")
    commands = parser.add_subparsers(required=True, parser_class=_Parser)
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
    submit.add_argument(
        "--output", help="wait (as --wait), then write the outputs here (.npy for one output, else .npz)"
    )
    submit.add_argument(
        "--dead_letters", action="store_true", help="keep failed chunks for `ovms retry` instead of failing the job"
    )
    submit.add_argument("--callback", metavar="URL", help="the server POSTs the job's end there (signed)")
    submit.set_defaults(run=_submit)
    jobs = commands.add_parser("jobs", parents=[common], help="list recent jobs")
    jobs.add_argument(
        "--failed",
        nargs="?",
        const="",
        metavar="ID",
        help="only jobs with failed chunks; with a job id, that job's failed chunks (its dead letters)",
    )
    jobs.set_defaults(run=_jobs)
    result = commands.add_parser("result", parents=[common], help="fetch a finished job's outputs")
    result.add_argument("job_id")
    result.add_argument("--output", help="write the outputs here (.npy for one output, else .npz); else print JSON")
    result.set_defaults(run=_result)
    cancel = commands.add_parser("cancel", parents=[common], help="drop a job's chunks not run yet (REVOKED)")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=_cancel)
    retry = commands.add_parser("retry", parents=[common], help="queue a job's failed chunks (dead letters) again")
    retry.add_argument("job_id")
    retry.set_defaults(run=_retry)
    add_status_command(commands, common)
    return parser


def _submit(args: argparse.Namespace) -> int:
    try:
        with open(args.input, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ClientError(f"cannot read --input {args.input}: {exc.strerror}: give a .npy or .npz file") from None
    _check_writable(args.output)  # before the job is submitted, not once it is done
    params = {"model": args.model, "version": args.version}
    if args.dead_letters:
        params["dead_letters"] = "true"
    if args.callback:
        params["callback_url"] = args.callback
    reply = args.http.post(
        f"{args.url}/v1/jobs",
        params=params,
        data=data,
        headers={"Content-Type": "application/x-npy"},
        timeout=300,
    )
    if reply.status_code != 202:
        return _failed("submit", reply)
    job_id = reply.json()["id"]
    print(job_id, flush=True)
    if not (args.wait or args.output):
        return 0
    status = _follow(args.http, args.url, job_id, time.monotonic() + args.timeout)
    if isinstance(status, requests.Response):
        return _failed("submit", status)
    if status["state"] not in FINAL:
        print(
            f"ovms submit: job {job_id} still {status['state']} after {args.timeout:.0f} s (--timeout)", file=sys.stderr
        )
        return 1
    if status["state"] == JobState.PARTIAL:
        failed = f"{len(status['dead_letters'])} chunk(s), {status['progress']['failed']} samples failed"
        print(f"ovms submit: job {job_id} ended PARTIAL: {failed}: {'; '.join(status['errors'])} (`ovms jobs "
              f"--failed {job_id}` lists them, `ovms retry {job_id}` runs them again)", file=sys.stderr)  # fmt: skip
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
    with tqdm(unit="sample", desc=job_id, file=sys.stderr) as bar:
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
    if args.failed:
        return _dead_letters(args)
    reply = args.http.get(f"{args.url}/v1/jobs", timeout=30)
    if reply.status_code != 200:
        return _failed("jobs", reply)
    jobs = reply.json()["jobs"]
    if args.failed is not None:  # --failed without an id: the jobs with failed chunks
        jobs = [job for job in jobs if job["progress"].get("failed")]
    tenants = any(job.get("tenant") for job in jobs)  # a column only for a server whose tokens name tenants
    rows = [
        (
            job["id"],
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["created"])),
            f"{job['model']} v{job['version']}",
            job["state"],
            f"{job['progress']['done']}/{job['progress']['total']}",
            str(job["progress"].get("failed", 0)),
            *([job.get("tenant") or "-"] if tenants else []),
        )
        for job in jobs
    ]
    header = ("ID", "CREATED", "MODEL", "STATE", "DONE/TOTAL", "FAILED", *(["TENANT"] if tenants else []))
    print("\n".join(table(header, rows)))
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    """One job's failed chunks: which samples, how often they failed, and why."""
    reply = args.http.get(f"{args.url}/v1/jobs/{args.failed}", timeout=30)
    if reply.status_code != 200:
        return _failed("jobs", reply)
    rows = [
        (str(letter["chunk"]), f"{letter['samples'][0]}-{letter['samples'][1] - 1}", str(letter["attempts"]),
         " ".join(letter["error"].split()))
        for letter in reply.json()["dead_letters"]
    ]  # fmt: skip
    print("\n".join(table(("CHUNK", "SAMPLES", "ATTEMPTS", "ERROR"), rows)))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    return _changed("cancel", args, args.http.delete(f"{args.url}/v1/jobs/{args.job_id}", timeout=30))


def _retry(args: argparse.Namespace) -> int:
    return _changed("retry", args, args.http.post(f"{args.url}/v1/jobs/{args.job_id}/retry", timeout=30))


def _changed(command: str, args: argparse.Namespace, reply: requests.Response) -> int:
    """A job's state and progress after `command` changed it, as one line."""
    if reply.status_code != 200:
        return _failed(command, reply)
    status = reply.json()
    print(f"{args.job_id} {status['state']} {status['progress']['done']}/{status['progress']['total']}")
    return 0


def _result(args: argparse.Namespace) -> int:
    _check_writable(args.output)
    return _fetch(args.http, args.url, args.job_id, args.output)


def _fetch(http: requests.Session, url: str, job_id: str, output: str | None) -> int:
    form = "json" if output is None else ("npy" if output.endswith(".npy") else "npz")
    reply = http.get(f"{url}/v1/jobs/{job_id}/result", params={"format": form}, timeout=300)
    if reply.status_code != 200:
        return _failed("result", reply)
    if output is None:
        print(json.dumps(reply.json()))
        return 0
    try:
        with open(output, "wb") as handle:
            handle.write(reply.content)
    except OSError as exc:
        raise ClientError(f"cannot write --output {output}: {exc.strerror}") from None
    if form == "npy":
        print(f"{output}: {np.load(io.BytesIO(reply.content)).shape}")
    return 0


def _check_writable(output: str | None) -> None:
    directory = os.path.dirname(os.path.abspath(output)) if output else ""
    if output and not (os.path.isdir(directory) and os.access(directory, os.W_OK)):
        raise ClientError(f"cannot write --output {output}: {directory} is no directory this user can write to")


def _failed(command: str, reply: requests.Response) -> int:
    print(f"ovms {command}: {failure(reply)}", file=sys.stderr)
    return 1
