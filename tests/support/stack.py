"""Start and stop real `ovms` processes for tests, and wait for the seed's readiness log lines."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import requests

from tasks.broker import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parents[2]
GRPC_READY = "Server started on port"
REST_READY = "Started REST server at"


class OvmsProcess:
    """A running `ovms` command with its ports and log file."""

    def __init__(
        self,
        command: list[str],
        grpc_port: int,
        rest_port: int,
        wait_for: list[str],
        env: dict[str, str] | None = None,
        host: str = "localhost",
    ) -> None:
        """`host`: the address its ports listen on (one of a test network's hosts, tests.support.netns)."""
        self.grpc_port = grpc_port
        self.rest_port = rest_port
        self.grpc_address = f"{host}:{grpc_port}"
        self.rest_url = f"http://{host}:{rest_port}"
        self.log_path = Path(tempfile.mkstemp(prefix="ovms-test-", suffix=".log")[1])
        self._log = open(self.log_path, "w")  # noqa: SIM115 - kept open for the process' lifetime
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        self.wait_for_log(*wait_for)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, *lines: str, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log()
            if all(line in text for line in lines):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"ovms exited with {self.process.returncode}:\n{text[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"ovms did not log {lines} within {timeout_s} s:\n{self.log()[-4000:]}")

    def worker_id(self) -> str:
        """The id a worker process logged at start (ids carry a random tag of each start)."""
        found = re.search(r"Worker (\S+) serves", self.log())
        if found is None:
            raise RuntimeError(f"no worker id in the log:\n{self.log()[-2000:]}")
        return found.group(1)

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL the whole process group if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode


def children_named(server: OvmsProcess, role: str) -> list[psutil.Process]:
    """The children of an all-in-one `ovms` named `ovms <role> …` (worker, api, flower; ovms.titled). A title
    fills argv[0], the rest of the rewritten argv being empty strings."""
    children = psutil.Process(server.process.pid).children()
    return [p for p in children if " ".join(p.cmdline()).split()[:2] == ["ovms", role]]


def child_named(server: OvmsProcess, role: str) -> psutil.Process:
    """The one child of an all-in-one `ovms` named `ovms <role> …`."""
    (child,) = children_named(server, role)
    return child


def ovms_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ovms", *args]


def start_ovms(
    args: list[str],
    rest: bool = True,
    role: str | None = None,
    env: dict[str, str] | None = None,
    open_file_limit: int | None = None,
) -> OvmsProcess:
    """Start `ovms [role] args` on free ports and wait until it is ready; with `open_file_limit`, under
    that hard limit of open files."""
    grpc_port = free_port()
    rest_port = free_port() if rest else 0
    while rest and rest_port == grpc_port:  # a port closed a moment ago can be handed out again at once
        rest_port = free_port()
    command = ovms_command(*([role] if role else []), *args, "--port", str(grpc_port))
    wait_for = [GRPC_READY] if role != "worker" else ["is ready"]
    if rest and role != "worker":
        command += ["--rest_port", str(rest_port)]
        wait_for.append(REST_READY)
    if role == "worker":
        command = ovms_command("worker", *args)
    if open_file_limit is not None:
        command = ["sh", "-c", f'ulimit -n {open_file_limit} && exec "$@"', "sh", *command]
    return OvmsProcess(command, grpc_port, rest_port, wait_for, env)


class Fleet:
    """`ovms worker` and `ovms api` processes on the same flags (`args`), each started with flags of its own
    added. Leaving `with Fleet(args) as fleet:` stops every one of them, the apis first, each resumed (SIGCONT)
    first: a test may have left a worker frozen with SIGSTOP."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.workers: list[OvmsProcess] = []
        self.apis: list[OvmsProcess] = []

    @property
    def api(self) -> OvmsProcess:
        """The first api started."""
        return self.apis[0]

    def start_worker(self, *flags: str) -> OvmsProcess:
        self.workers.append(start_ovms([*self.args, *flags], role="worker"))
        return self.workers[-1]

    def start_api(self, *flags: str) -> OvmsProcess:
        self.apis.append(start_ovms([*self.args, *flags], role="api"))
        return self.apis[-1]

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *_: object) -> None:
        for process in [*self.apis, *self.workers]:
            with contextlib.suppress(ProcessLookupError):  # one the test stopped already
                process.signal(signal.SIGCONT)
            process.stop()


@contextlib.contextmanager
def worker_and_api(
    args: list[str], worker_args: list[str] | None = None, api_args: list[str] | None = None
) -> Iterator[tuple[OvmsProcess, OvmsProcess]]:
    """An `ovms worker`, then an `ovms api`, on `args` (plus each one's own flags): a Fleet of the two, so the
    worker is stopped if the api fails to start, and both on the way out."""
    with Fleet(args) as fleet:
        yield fleet.start_worker(*(worker_args or [])), fleet.start_api(*(api_args or []))


def private_redis() -> Iterator[str]:
    """A Redis server of its own on a free port (yields its URL), for a pytest fixture: modules that
    freeze or kill workers use one, so that no other module's worker answers from their queues."""
    server = EmbeddedRedis()
    yield server.start()
    server.stop()


def live_workers(api: OvmsProcess) -> int:
    """How many live workers the api counts (its `ovms_live_workers` metric)."""
    text = requests.get(f"{api.rest_url}/metrics", timeout=5).text
    return int(next(float(line.split()[1]) for line in text.splitlines() if line.startswith("ovms_live_workers ")))


def wait_for_workers(api: OvmsProcess, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while live_workers(api) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the api never counted {count} live worker(s)")
        time.sleep(0.1)


def wait_for_ready(api: OvmsProcess, timeout_s: float = 30.0) -> None:
    """Until GET /v1/health/ready answers 200 (every configured model served by a live worker)."""
    deadline = time.monotonic() + timeout_s
    while requests.get(f"{api.rest_url}/v1/health/ready", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the api was not ready within {timeout_s} s")
        time.sleep(0.1)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs process `pid` listens on (TCP); an IPv4-mapped IPv6 address (gRPC binds
    `127.0.0.1` as `::ffff:127.0.0.1` on a dual-stack socket) as the IPv4 address it is."""
    sockets = psutil.Process(pid).net_connections("tcp")
    return {(_unmapped(s.laddr.ip), s.laddr.port) for s in sockets if s.status == psutil.CONN_LISTEN}


def _unmapped(address: str) -> str:
    mapped = ipaddress.ip_address(address.partition("%")[0])
    return str(mapped.ipv4_mapped) if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped else address
