"""What a newcomer meets first (issue 15): each role's --help lists the flags that role reads, the usage line
names the roles and the client commands, --version, bare `ovms`, and the flags a supervisor passes each
child (only its role's). The real `ovms` in a child process, or its real parser."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import version

import pytest

from ovms.settings import child_arguments, parse_command_line, role_flags
from tests.unit.test_settings import SINGLE, run_ovms

API_ONLY = {"port", "rest_port", "grpc_workers", "rest_workers", "ssl_certificate", "max_inflight_mb"}
WORKER_ONLY = {"device", "worker_concurrency", "task_events", "worker_max_inflight_mb", "file_system_poll_wait_seconds"}
BOTH = {"config_path", "model_name", "broker_url", "result_backend_url", "log_level", "max_request_mb", "job_ttl_s"}


def help_flags(*role: str) -> set[str]:
    result = run_ovms(*role, "--help")
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"^  --(\w+)", result.stdout, re.MULTILINE))


def test_each_role_help_lists_the_flags_it_reads_and_no_other() -> None:
    everything, api, worker = help_flags(), help_flags("api"), help_flags("worker")
    assert API_ONLY | WORKER_ONLY | BOTH | {"flower_port", "version"} <= everything
    assert api >= API_ONLY | BOTH
    assert not (WORKER_ONLY | {"flower_port"}) & api
    assert worker >= WORKER_ONLY | BOTH
    assert not (API_ONLY | {"flower_port"}) & worker
    assert api - {"help", "version"} == role_flags("api") and worker - {"help", "version"} == role_flags("worker")


def test_a_role_still_accepts_the_flags_its_help_hides() -> None:
    """Command lines that worked before keep working: `ovms worker --port 9000 --rest_port 8000`, `ovms api
    --device CPU --flower_port 5555`."""
    worker = parse_command_line(["worker", *SINGLE, "--port", "9000", "--rest_port", "8000", "--grpc_workers", "1"])
    assert (worker.role, worker.port, worker.rest_port) == ("worker", 9000, 8000)
    api = parse_command_line(["api", *SINGLE, "--device", "CPU", "--worker_concurrency", "4", "--flower_port", "1"])
    assert (api.role, api.device, api.worker_concurrency) == ("api", "CPU", 4)


def test_usage_line_names_the_roles_and_the_client_commands() -> None:
    usage = run_ovms("--help").stdout.split("\n\n")[0]
    assert "ovms [api|worker] [flags]" in usage
    assert "ovms submit|jobs|result|cancel|retry|status" in usage
    assert run_ovms("worker", "--help").stdout.startswith("usage: ovms worker [flags]")


def test_grpc_workers_help_says_api_processes_sharing_the_ports() -> None:
    text = " ".join(run_ovms("--help").stdout.split())
    assert "--grpc_workers GRPC_WORKERS api processes sharing the gRPC and REST ports" in text
    assert "gRPC server processes" not in text


def test_version_prints_the_package_version_and_exits_0() -> None:
    result = run_ovms("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ovms {version('ovms-celery')}"


@pytest.mark.parametrize("role", [[], ["api"], ["worker"]])
def test_bare_command_prints_a_usage_line_and_the_seeds_message_and_exits_64(role: list[str]) -> None:
    result = run_ovms(*role)
    assert result.returncode == 64
    lines = result.stderr.splitlines()
    assert lines[0] == f"usage: ovms {role[0]} [flags]" if role else lines[0] == "usage: ovms [api|worker] [flags]"
    assert lines[-1] == "Use config_path or model_path with model_name"


def test_a_usage_error_with_flags_prints_no_usage_line() -> None:
    result = run_ovms("--model_name", "m")
    assert result.returncode == 64
    assert result.stderr.strip() == "Use config_path or model_path with model_name"


ALL_IN_ONE = [
    "--config_path=models/config.json",
    "--port",
    "9000",
    "--rest_port=8000",
    "--grpc_workers",
    "2",
    "--rest_workers",
    "8",
    "--flower_port",
    "5555",
    "--log_level",
    "DEBUG",
    "--worker_concurrency",
    "16",
    "--request_timeout_s",
    "2.5",
    "--max_request_mb",
    "64",
    "--grpc_channel_arguments",
    "grpc.max_concurrent_streams=-1",
]


def test_a_worker_child_gets_the_worker_flags_only_with_its_device_and_task_events() -> None:
    flags = child_arguments(ALL_IN_ONE, "worker", device="GPU", task_events=True)
    given = {flag.split("=")[0].lstrip("-") for flag in flags}
    assert given == {"config_path", "log_level", "worker_concurrency", "max_request_mb", "device", "task_events"}
    worker = parse_command_line(["worker", *flags])
    read = (worker.device, worker.task_events, worker.worker_concurrency, worker.max_request_mb)
    assert read == ("GPU", True, 16, 64)
    assert worker.log_level == "DEBUG" and len(worker.models) == len(parse_command_line(ALL_IN_ONE).models)


def test_an_api_child_gets_the_api_flags_only_and_reads_them_as_its_supervisor_did() -> None:
    flags = child_arguments(["all", *ALL_IN_ONE], "api", grpc_workers=None)
    assert not any(flag.startswith(("--grpc_workers", "--flower_port", "--worker_concurrency")) for flag in flags)
    child, parent = parse_command_line(["api", *flags]), parse_command_line(ALL_IN_ONE)
    for field in ("port", "rest_port", "rest_workers", "request_timeout_s", "max_request_mb", "log_level"):
        assert getattr(child, field) == getattr(parent, field), field
    assert child.grpc_channel_arguments == {"grpc.max_concurrent_streams": -1}


def test_make_run_takes_the_flower_port_from_flower_port() -> None:
    def dry_run(*variables: str) -> str:
        return subprocess.run(["make", "-n", "run", *variables], capture_output=True, text=True, timeout=60).stdout

    assert "--flower_port 5601" in dry_run("FLOWER=1", "FLOWER_PORT=5601")
    assert "--flower_port 5555" in dry_run("FLOWER=1")
    assert "--flower_port" not in dry_run()
