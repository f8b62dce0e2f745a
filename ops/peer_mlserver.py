"""MLServer 1.7.1 (`make mlserver`, .venv-mlserver) serving our IR files with ops/mlserver_openvino/runtime.py, for
the peer benchmark: a model repository in a temporary directory, free ports, ready when every model is.

Its fastest setup for one box: `parallel_workers: 0` (inference in the server process, no inter-process hop),
metrics off; adaptive batching on (`max_batch_size` 16, `max_batch_time` 2 ms) or off, per run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests
from bench_cases import REPO, ModelCase
from bench_stack import ServerProcess
from proc_cpu import tree_roles

from tasks.broker import free_port

MLSERVER = REPO / ".venv-mlserver" / "bin" / "mlserver"
RUNTIME = "mlserver_openvino.runtime.OpenVINORuntime"  # ops/ goes on MLServer's PYTHONPATH
BATCHING = {"max_batch_size": 16, "max_batch_time": 0.002}
NO_BATCHING = {"max_batch_size": 0, "max_batch_time": 0.0}
READY_TIMEOUT_S = 120.0


def write_repository(cases: list[ModelCase], batching: bool, http_port: int, grpc_port: int, root: Path) -> Path:
    """settings.json and a model-settings.json per model under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "parallel_workers": 0,
        "metrics_endpoint": None,
        "load_models_at_startup": True,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, model_file in {case.name: case.model_file() for case in cases}.items():
        model_settings = {
            "name": name,
            "implementation": RUNTIME,
            "parameters": {"uri": str(model_file)},
            **(BATCHING if batching else NO_BATCHING),
        }
        (root / name).mkdir(exist_ok=True)
        (root / name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return root


class MLServer(ServerProcess):
    """`mlserver start` on a repository of `cases`, in its own session, stopped with its process tree on exit."""

    name = "mlserver"

    def __init__(self, cases: list[ModelCase], batching: bool, directory: Path) -> None:
        if not MLSERVER.exists():
            raise RuntimeError(f"{MLSERVER} is missing: run `make mlserver`")
        self.cases = cases
        self.batching = batching
        self.http_port = free_port()
        self.grpc_port = free_port()
        label = "batching" if batching else "no-batching"
        self.repository = write_repository(cases, batching, self.http_port, self.grpc_port, directory / label)
        self.log_path = directory / f"mlserver-{label}.log"
        self.env = {"PYTHONPATH": str(REPO / "ops")}
        self.command = [str(MLSERVER), "start", str(self.repository)]

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self) -> None:
        """v2 readiness of the server, then of every model."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        paths = ["/v2/health/ready", *(f"/v2/models/{case.name}/ready" for case in self.cases)]
        for path in paths:
            while not self.answers(path):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mlserver: {path} not ready within {READY_TIMEOUT_S} s\n{self.log_tail()}")
                time.sleep(0.2)

    def answers(self, path: str) -> bool:
        try:
            return requests.get(self.rest_url + path, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def roles(self) -> dict[int, str]:
        """Every process of the server counts as "server"."""
        assert self.process is not None
        return tree_roles(self.process.pid, "server")
