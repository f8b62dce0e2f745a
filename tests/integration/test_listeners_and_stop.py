"""Where `ovms` says it listens, and how it stops (issue 15: a newcomer's first hour).

The start-up lines name the address each listener really binds (not "localhost" while it binds every
interface), `--grpc_bind_address` / `--rest_bind_address` restrict the listeners (Flower's too, with
credentials), and one WARNING says when something listens on every interface without credentials.
A stop signal sent to the whole process group (a terminal's Ctrl-C, `kill -- -pgid`) or to every process
(systemd's control-group kill) stops each child once and restarts none.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tasks.broker import free_port
from tests.support.stack import OvmsProcess, child_named, children_named, listening_addresses, start_ovms

EXPOSED = "[warning] Listening on all interfaces without credentials"
STOP_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def quick_config(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick-loading model: these tests start many stacks."""
    config = {"model_config_list": [{"config": {"name": "versioned", "base_path": str(models_dir / "versioned")}}]}
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def stack_args(quick_config: Path, redis_url: str) -> list[str]:
    return ["--config_path", str(quick_config), "--broker_url", redis_url]


@pytest.fixture
def started() -> Iterator[list[OvmsProcess]]:
    """Stacks a test started, stopped after it whatever happened."""
    stacks: list[OvmsProcess] = []
    yield stacks
    for stack in stacks:
        stack.stop()


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_default_listeners_are_said_to_be_on_every_interface_and_warned_of_once(stack_args, started):
    stack = start_ovms(stack_args)
    started.append(stack)
    grpc_port, rest_port = stack.grpc_port, stack.rest_port
    stack.wait_for_log(EXPOSED)
    log = stack.log()
    assert f"Server started on port {grpc_port} (gRPC on 0.0.0.0:{grpc_port} and [::]:{grpc_port})\n" in log
    assert f"Started REST server at 0.0.0.0:{rest_port}\n" in log
    assert log.count(EXPOSED) == 1
    assert f"gRPC 0.0.0.0:{grpc_port}, REST 0.0.0.0:{rest_port};" in log
    assert {("::", grpc_port), ("0.0.0.0", rest_port)} <= listening_addresses(stack.process.pid)


def test_bind_addresses_restrict_the_listeners_and_flower_follows_the_rest_one(stack_args, started):
    flower_port = free_port()
    stack = start_ovms(
        [*stack_args, "--grpc_bind_address", "127.0.0.1", "--rest_bind_address", "localhost",
         "--flower_port", str(flower_port)],
        env={"FLOWER_USER": "ops", "FLOWER_PASSWORD": "s3cret"},
    )  # fmt: skip
    started.append(stack)
    grpc_port, rest_port = stack.grpc_port, stack.rest_port
    stack.wait_for_log(f"Visit me at http://127.0.0.1:{flower_port}")  # Flower's own line, now true
    log = stack.log()
    assert f"Server started on port {grpc_port} (gRPC on 127.0.0.1:{grpc_port})\n" in log
    assert f"Started REST server at 127.0.0.1:{rest_port}\n" in log
    assert f"Starting Flower on 127.0.0.1:{flower_port} (basic auth)" in log
    assert EXPOSED not in log
    flower = child_named(stack, "flower")
    ours = {grpc_port, rest_port, flower_port}
    bound = listening_addresses(stack.process.pid) | listening_addresses(flower.pid)
    assert {pair for pair in bound if pair[1] in ours} == {("127.0.0.1", port) for port in ours}
    for port in ours:
        assert _refused("127.0.0.2", port), f"port {port} answers on another loopback address"
    assert requests.get(f"http://127.0.0.1:{rest_port}/v1/config", timeout=10).status_code == 200


def test_api_processes_share_the_ports_on_the_bind_addresses(stack_args, started):
    """`--grpc_workers 2`: the supervisor reserves each port on the address the api processes bind."""
    stack = start_ovms([*stack_args, "--grpc_workers", "2", "--grpc_bind_address", "127.0.0.1",
                        "--rest_bind_address", "127.0.0.1"])  # fmt: skip
    started.append(stack)
    grpc_port, rest_port = stack.grpc_port, stack.rest_port
    assert f"Server started on port {grpc_port} (gRPC on 127.0.0.1:{grpc_port})\n" in stack.log()
    apis = children_named(stack, "api")
    assert len(apis) == 2
    for api in apis:
        ours = {pair for pair in listening_addresses(api.pid) if pair[1] in (grpc_port, rest_port)}
        assert ours == {("127.0.0.1", grpc_port), ("127.0.0.1", rest_port)}
    assert requests.get(f"http://127.0.0.1:{rest_port}/v1/config", timeout=10).status_code == 200


def _signal_every_process(stack: OvmsProcess, signum: int) -> None:
    """As systemd's KillMode=control-group: every process at once, the children first, the supervisor
    last (the embedded Redis, quick to exit, was then restarted in 3 runs of 4 while the server stopped)."""
    supervisor = psutil.Process(stack.process.pid)
    for process in [*supervisor.children(recursive=True), supervisor]:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            continue


@pytest.mark.parametrize(
    ("signum", "to", "run"),
    [(signal.SIGTERM, "group", run) for run in range(2)]
    + [(signal.SIGTERM, "every process", run) for run in range(5)]
    + [(signal.SIGINT, "group", 0)],
)
def test_a_stop_signal_stops_every_child_once_and_restarts_none(quick_config, started, signum, to, run):
    """Each child is stopped by the supervisor, once: no "restarting" (the watcher used to restart a
    child the same signal had stopped, which then found its broker gone), Celery's Ctrl-C lines not at
    all, and its "Warm shutdown" once when the signal went to the group (the children used to get it
    from the terminal and again from the supervisor)."""
    stack = start_ovms(["--config_path", str(quick_config)])  # with its embedded Redis, a child too
    started.append(stack)
    children = psutil.Process(stack.process.pid).children(recursive=True)
    assert children, "the all-in-one has its worker"
    if to == "group":
        stack.signal(signum)
    else:
        _signal_every_process(stack, signum)
    assert stack.process.wait(timeout=STOP_TIMEOUT_S) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"children outlived the server: {alive}"
    log = stack.log()
    assert "restarting" not in log and "not usable" not in log, log[-3000:]
    assert "Hitting Ctrl+C" not in log
    if to == "group":
        assert log.count("Warm shutdown") == 1, log[-3000:]
    assert "SecurityWarning" not in log  # Celery's 7 lines when a worker starts as root (this suite's case)
