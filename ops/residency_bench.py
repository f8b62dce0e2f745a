#!/usr/bin/env python3
"""Models resident on demand, timed: what a request pays when its version must first be loaded.

    python ops/residency_bench.py [--rounds 10] [--memory-mb 160] [--idle-unload-s 2]

Starts the whole stack (as ops/bench.py: embedded Redis, a worker, the api) serving `resnet` under three names
with `--worker_memory_mb` fitting two of them, and `digits` with `idle_unload_s`. Each round sends gRPC
Predicts (batch 1, deadline 60 s): to a resnet in memory, to the resnet out of memory (its load, after the
least recently used one is unloaded), to digits once it was unloaded for idleness, then to digits in memory.
Prints as Markdown the median and highest latency of each, their ratio to the request in memory of the same
model, and the mean load time the workers counted (ovms_model_load_seconds). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import grpc
import requests
from bench_cases import MODELS_DIR, ModelCase, digits_case, resnet_case
from bench_report import markdown_table, progress
from bench_stack import Server, stop_on_sigterm
from tfs_load import predict_request

from api.protos import serving_pb2_grpc

RESNETS = ("ra", "rb", "rc")
NOT_RESIDENT = "Not resident: the next request loads it"
LOAD_SECONDS = re.compile(r'^ovms_model_load_seconds_(sum|count)\{name="(\w+)",version="1"\} (\S+)$', re.MULTILINE)


class ResidencyServer(Server):
    """The stack with its own config.json: three names for resnet (listed first: the worker primes its device
    with the first version it loads) under a memory budget, and digits unloaded when idle."""

    def __init__(self, directory: Path, memory_mb: int, idle_unload_s: float) -> None:
        super().__init__([], ["--worker_memory_mb", str(memory_mb)], directory)
        self.cases = [ModelCase(name, "", "", []) for name in (*RESNETS, "digits")]
        entries = [{"config": {"name": name, "base_path": str(MODELS_DIR / "resnet")}} for name in RESNETS]
        digits = {"name": "digits", "base_path": str(MODELS_DIR / "digits"), "idle_unload_s": idle_unload_s}
        (directory / "config.json").write_text(json.dumps({"model_config_list": [*entries, {"config": digits}]}))


def message_of(model: str) -> object:
    case = replace(resnet_case() if model in RESNETS else digits_case(), name=model)
    return predict_request(case, case.samples[0])


def timed_predict(stub: serving_pb2_grpc.PredictionServiceStub, model: str) -> float:
    started = time.perf_counter()
    stub.Predict(message_of(model), timeout=60)
    return (time.perf_counter() - started) * 1000


def resident(server: Server, model: str) -> bool:
    (version,) = requests.get(f"{server.rest_url}/v1/models/{model}", timeout=10).json()["model_version_status"]
    return version["status"]["error_message"] != NOT_RESIDENT


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s} s")
        time.sleep(0.05)


def load_seconds(server: Server) -> dict[str, float]:
    """Each model's mean load time so far (s), as /metrics reports it."""
    text = requests.get(f"{server.rest_url}/metrics", timeout=10).text
    found = {(kind, model): float(value) for kind, model, value in LOAD_SECONDS.findall(text)}
    return {model: found["sum", model] / found["count", model] for _, model in found if found["count", model]}


def run(server: Server, rounds: int) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {"resnet in memory": [], "resnet loaded first": [], "digits in memory": []}
    latencies["digits loaded first"] = []
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        for model in RESNETS:  # every one measured once, the first one included
            timed_predict(stub, model)
        for round_ in range(rounds):
            wait_for(lambda: sum(resident(server, m) for m in RESNETS) == 2, "two resnets in memory")
            (cold,) = [model for model in RESNETS if not resident(server, model)]
            warm = next(model for model in RESNETS if model != cold)
            latencies["resnet in memory"].append(timed_predict(stub, warm))
            latencies["resnet loaded first"].append(timed_predict(stub, cold))
            wait_for(lambda: not resident(server, "digits"), "digits unloaded when idle")
            latencies["digits loaded first"].append(timed_predict(stub, "digits"))
            latencies["digits in memory"].append(timed_predict(stub, "digits"))
            progress(f"round {round_ + 1}/{rounds}")
    return latencies


def report(latencies: dict[str, list[float]], loads: dict[str, float]) -> str:
    baseline = {name: statistics.median(latencies[f"{name} in memory"]) for name in ("resnet", "digits")}
    rows = [
        [
            case,
            f"{statistics.median(values):,.1f}",
            f"{max(values):,.1f}",
            f"{statistics.median(values) / baseline[case.split()[0]]:.1f}",
        ]
        for case, values in latencies.items()
    ]
    means = ", ".join(f"{model} {seconds * 1000:,.0f} ms" for model, seconds in sorted(loads.items()))
    table = markdown_table(["request", "p50 ms", "max ms", "p50 / in memory"], rows)
    return f"{table}\n\nMean load time (fetch, compile, warm-up) as counted by the workers: {means}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--memory-mb", type=int, default=160, help="--worker_memory_mb: two resnets, not three")
    parser.add_argument("--idle-unload-s", type=float, default=2.0)
    args = parser.parse_args()
    stop_on_sigterm()
    with (
        tempfile.TemporaryDirectory(prefix="ovms-residency-bench-") as directory,
        ResidencyServer(Path(directory), args.memory_mb, args.idle_unload_s) as server,
    ):
        progress("stack ready")
        latencies = run(server, args.rounds)
        print(report(latencies, load_seconds(server)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
