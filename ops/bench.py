#!/usr/bin/env python3
"""Benchmark the served models against raw OpenVINO on the same machine, in one run.

    python ops/bench.py [--duration 8] [--warmup 2] [--concurrency 1,8,32] [--models digits,resnet] \\
        [--rest] [--no-v2] [--server-flags "--max_batch_size 8"]

Starts the whole stack (`python -m ovms`: embedded Redis, a worker, the api) on free ports with a
temporary config.json, and for each model and concurrency c measures

- raw: OpenVINO in this process while the server is idle — c requests of batch 1 kept in flight with an
  `AsyncInferQueue` (PERFORMANCE_HINT LATENCY for c = 1, THROUGHPUT otherwise);
- served: gRPC Predict from c coroutines on one `grpc.aio` channel, batch 1, back to back
  (and REST from c threads with `--rest`), and KServe v2 gRPC, REST with binary tensors and REST JSON driven
  by the official Triton client (ops/v2_load.py in .venv-triton; `--no-v2` leaves them out);
- the bytes through Redis per request (what its clients wrote to it and read from it, from INFO stats, over
  the whole cell, divided by the requests completed in it).

`--server-flags` go to ovms as they are, except the per-model ones (`--max_batch_size 8`, `--nireq 2`, ...),
which ovms refuses next to `--config_path`: they become settings of every model in the temporary config.json.

A request counts when it completes inside the measured window (after the warmup); throughput is those
completions over the window. The tables are printed as Markdown on stdout, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import functools
import itertools
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import openvino as ov
import redis
import requests

from api.protos import serving_pb2, serving_pb2_grpc, tensorflow_pb2
from inference.model_config import PER_MODEL_KEYS  # their flags are refused next to --config_path
from tasks.broker import free_port

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
V2_PYTHON = REPO / ".venv-triton" / "bin" / "python"  # `make triton-client`
V2_LOAD = REPO / "ops" / "v2_load.py"
V2_APIS = {"v2 gRPC": "grpc", "v2 REST bin": "rest-binary", "v2 REST JSON": "rest-json"}  # row label -> protocol
GRPC_READY = "Server started on port"
EMBEDDED_REDIS = re.compile(r"Embedded Redis started on ([0-9.]+):([0-9]+)")
REST_READY = "Started REST server at"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0
ERROR_BACKOFF_S = 0.01


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelCase:
    """A model to benchmark: its name in the server, tensor names and the batch-1 inputs to cycle through."""

    name: str
    input_name: str
    output_name: str
    samples: list[np.ndarray]
    label: str = ""  # the table's heading, when it is not the model's name
    encoded: list[bytes] | None = None  # served as these JPEGs instead (raw OpenVINO takes `samples`, decoded)

    @property
    def heading(self) -> str:
        return self.label or self.name

    @property
    def base_path(self) -> Path:
        return MODELS_DIR / self.name

    def samples_file(self, directory: Path) -> Path:
        """The samples as one .npy array (a row per request), or the JPEGs as an .npz, for a client in another
        process (ops/v2_load.py)."""
        if self.encoded is not None:
            path = directory / f"{self.heading}-images.npz"
            np.savez(path, *(np.frombuffer(image, dtype=np.uint8) for image in self.encoded))
        else:
            path = directory / f"{self.heading}-samples.npy"
            np.save(path, np.concatenate(self.samples))
        return path

    def model_file(self) -> Path:
        """The IR of the highest numeric version, the one the server serves by default."""
        versions = sorted((int(p.name), p) for p in self.base_path.iterdir() if p.is_dir() and p.name.isdigit())
        return next(versions[-1][1].glob("*.xml"))


def digits_case() -> ModelCase:
    """The digits MLP on the rows of the held-out images, one row per request."""
    images = np.load(MODELS_DIR / "data" / "imgs.npy", allow_pickle=False).astype(np.float32)
    rows = [np.ascontiguousarray(images[i : i + 1]) for i in range(len(images))]
    return ModelCase("digits", "x", "probabilities", rows)


def resnet_case() -> ModelCase:
    """The INT8 ResNet-50 on one fixed random image."""
    image = np.random.default_rng(0).uniform(0, 255, size=(1, 3, 224, 224)).astype(np.float32)
    return ModelCase("resnet", "data", "prob", [image])


def resnet_jpeg_case() -> ModelCase:
    """The INT8 ResNet-50 fed 224x224 JPEGs of scikit-learn's two sample photographs, decoded on the worker;
    raw OpenVINO gets the same images decoded (BGR, NCHW, as the server decodes them)."""
    import cv2
    from sklearn.datasets import load_sample_images

    encoded, samples = [], []
    for photo in load_sample_images().images:  # RGB
        square = photo[:, : photo.shape[0]] if photo.shape[1] > photo.shape[0] else photo[: photo.shape[1]]
        image = cv2.resize(cv2.cvtColor(square, cv2.COLOR_RGB2BGR), (224, 224), interpolation=cv2.INTER_AREA)
        jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        encoded.append(jpeg)
        samples.append(np.ascontiguousarray(decoded.transpose(2, 0, 1)[np.newaxis], dtype=np.float32))
    return ModelCase("resnet", "data", "prob", samples, label="resnet-jpeg", encoded=encoded)


CASES = {"digits": digits_case, "resnet": resnet_case, "resnet-jpeg": resnet_jpeg_case}


# ------------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class Window:
    """The measured interval in perf_counter seconds; requests are issued from before `start` (warmup) to `end`."""

    start: float
    end: float

    @classmethod
    def after_warmup(cls, warmup_s: float, duration_s: float) -> Window:
        start = time.perf_counter() + warmup_s
        return cls(start, start + duration_s)

    def open(self) -> bool:
        """Whether new requests should still be issued."""
        return time.perf_counter() < self.end

    def counts(self, ended: float) -> bool:
        return self.start <= ended <= self.end


@dataclass
class Recorder:
    """Collects the requests that complete inside a window (thread-safe enough: appends under the GIL)."""

    window: Window
    latencies_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    completed: int = 0  # successes in and out of the window (Redis traffic is counted over both)

    def success(self, started: float, ended: float, batch_size: int | None = None) -> None:
        self.completed += 1
        if self.window.counts(ended):
            self.latencies_s.append(ended - started)
            if batch_size is not None:
                self.batch_sizes.append(batch_size)

    def failure(self, ended: float, kind: str) -> None:
        if self.window.counts(ended):
            self.errors[kind] += 1

    def stats(self) -> Stats:
        return Stats(
            requests=len(self.latencies_s),
            seconds=self.window.end - self.window.start,
            latencies_ms=np.array(self.latencies_s) * 1000.0,
            batch_sizes=list(self.batch_sizes),
            errors=Counter(self.errors),
            completed=self.completed,
        )


@dataclass
class Stats:
    """The outcome of one measurement."""

    requests: int
    seconds: float
    latencies_ms: np.ndarray
    batch_sizes: list[int]
    errors: Counter
    completed: int = 0
    redis_bytes: int = 0  # written to and read from Redis during the whole cell

    @property
    def redis_kb_per_request(self) -> float:
        return self.redis_bytes / self.completed / 1000 if self.completed and self.redis_bytes else float("nan")

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    @property
    def mean_batch(self) -> float:
        return float(np.mean(self.batch_sizes)) if self.batch_sizes else float("nan")

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


# ----------------------------------------------------------------------------------------------- raw


def compile_raw(core: ov.Core, case: ModelCase, concurrency: int) -> ov.CompiledModel:
    hint = "LATENCY" if concurrency == 1 else "THROUGHPUT"
    return core.compile_model(str(case.model_file()), "CPU", {"PERFORMANCE_HINT": hint})


def measure_raw(core: ov.Core, case: ModelCase, concurrency: int, warmup_s: float, duration_s: float) -> Stats:
    """Keep `concurrency` batch-1 requests in flight on an in-process compiled model."""
    compiled = compile_raw(core, case, concurrency)
    queue = ov.AsyncInferQueue(compiled, concurrency)
    recorder = Recorder(Window.after_warmup(warmup_s, duration_s))
    queue.set_callback(lambda _request, started: recorder.success(started, time.perf_counter()))
    samples = itertools.cycle(case.samples)
    while recorder.window.open():
        queue.get_idle_request_id()  # block until a request is free, so the start time excludes the wait
        queue.start_async({case.input_name: next(samples)}, time.perf_counter())
    queue.wait_all()
    return recorder.stats()


# ---------------------------------------------------------------------------------------------- gRPC


def predict_request(case: ModelCase, sample: np.ndarray | bytes) -> serving_pb2.PredictRequest:
    """A Predict request carrying `sample` as float32 `tensor_content`, or a JPEG as a DT_STRING element."""
    request = serving_pb2.PredictRequest()
    request.model_spec.name = case.name
    tensor = request.inputs[case.input_name]
    if isinstance(sample, bytes):
        tensor.dtype = tensorflow_pb2.DataType.DT_STRING
        tensor.tensor_shape.dim.add(size=1)
        tensor.string_val.append(sample)
        return request
    tensor.dtype = tensorflow_pb2.DataType.DT_FLOAT
    tensor.tensor_shape.dim.extend(tensorflow_pb2.TensorShapeProto.Dim(size=size) for size in sample.shape)
    tensor.tensor_content = sample.astype(np.float32).tobytes()
    return request


def metadata_batch_size(metadata: grpc.aio.Metadata | None) -> int | None:
    value = dict(metadata or ()).get("ovms-batch-size")
    return int(value) if value else None


async def grpc_stream(
    stub: serving_pb2_grpc.PredictionServiceStub,
    case: ModelCase,
    requests_: list[serving_pb2.PredictRequest],
    counter: Iterator[int],
    recorder: Recorder,
) -> None:
    """One client: Predict calls back to back until the window closes."""
    while recorder.window.open():
        request = requests_[next(counter) % len(requests_)]
        started = time.perf_counter()
        call = stub.Predict(request, timeout=REQUEST_TIMEOUT_S)
        try:
            response = await call
            batch_size = metadata_batch_size(await call.trailing_metadata())
        except grpc.aio.AioRpcError as error:
            recorder.failure(time.perf_counter(), error.code().name)
            await asyncio.sleep(ERROR_BACKOFF_S)
            continue
        ended = time.perf_counter()
        if case.output_name in response.outputs:
            recorder.success(started, ended, batch_size)
        else:
            recorder.failure(ended, "missing output")


async def measure_grpc_async(
    address: str, case: ModelCase, concurrency: int, warmup_s: float, duration_s: float
) -> Stats:
    requests_ = [predict_request(case, sample) for sample in case.encoded or case.samples]
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        recorder = Recorder(Window.after_warmup(warmup_s, duration_s))
        counter = itertools.count()
        await asyncio.gather(*(grpc_stream(stub, case, requests_, counter, recorder) for _ in range(concurrency)))
    return recorder.stats()


def measure_grpc(address: str, case: ModelCase, concurrency: int, warmup_s: float, duration_s: float) -> Stats:
    """`concurrency` coroutines on one grpc.aio channel, each sending batch-1 Predict calls back to back."""
    return asyncio.run(measure_grpc_async(address, case, concurrency, warmup_s, duration_s))


# ---------------------------------------------------------------------------------------------- REST


def rest_stream(url: str, bodies: list[bytes], counter: Iterator[int], recorder: Recorder) -> None:
    """One client thread with its own session: predict calls back to back until the window closes."""
    headers = {"Content-Type": "application/json"}
    with requests.Session() as session:
        while recorder.window.open():
            body = bodies[next(counter) % len(bodies)]
            started = time.perf_counter()
            try:
                reply = session.post(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT_S)
            except requests.RequestException as error:
                recorder.failure(time.perf_counter(), type(error).__name__)
                time.sleep(ERROR_BACKOFF_S)
                continue
            ended = time.perf_counter()
            if reply.status_code == 200:
                batch = reply.headers.get("X-Ovms-Batch-Size")
                recorder.success(started, ended, int(batch) if batch else None)
            else:
                recorder.failure(ended, f"HTTP {reply.status_code}")


def measure_rest(base_url: str, case: ModelCase, concurrency: int, warmup_s: float, duration_s: float) -> Stats:
    """`concurrency` threads posting row-format (`instances`) batch-1 predict requests."""
    url = f"{base_url}/v1/models/{case.name}:predict"
    if case.encoded is not None:
        instances = [[{"b64": base64.b64encode(image).decode()}] for image in case.encoded]
    else:
        instances = [sample.tolist() for sample in case.samples]
    bodies = [json.dumps({"instances": rows}).encode() for rows in instances]
    counter = itertools.count()
    recorder = Recorder(Window.after_warmup(warmup_s, duration_s))
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(rest_stream, url, bodies, counter, recorder) for _ in range(concurrency)]
        for future in futures:
            future.result()
    return recorder.stats()


# ---------------------------------------------------------------------------------------- KServe v2


def measure_v2(
    server: Server, case: ModelCase, protocol: str, concurrency: int, warmup_s: float, duration_s: float
) -> Stats:
    """The official Triton client (ops/v2_load.py in .venv-triton) sending batch-1 requests over `protocol`."""
    if not V2_PYTHON.exists():
        raise RuntimeError(f"{V2_PYTHON} is missing: run `make triton-client`, or leave v2 out with --no-v2")
    url = server.grpc_address if protocol == "grpc" else server.rest_url.removeprefix("http://")
    command = [
        str(V2_PYTHON), str(V2_LOAD), "--protocol", protocol, "--url", url, "--model", case.name,
        "--input", case.input_name, "--output", case.output_name,
        "--datatype", "FP32" if case.encoded is None else "BYTES",
        "--samples", str(case.samples_file(server.directory)), "--concurrency", str(concurrency),
        "--warmup", str(warmup_s), "--duration", str(duration_s),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=warmup_s + duration_s + 120, check=False)
    if run.returncode:
        raise RuntimeError(f"ops/v2_load.py failed ({run.returncode}):\n{run.stderr[-4000:]}")
    report = json.loads(run.stdout)
    return Stats(
        requests=len(report["latencies_s"]),
        seconds=report["seconds"],
        latencies_ms=np.array(report["latencies_s"]) * 1000.0,
        batch_sizes=[],
        errors=Counter(report["errors"]),
        completed=report["completed"],
    )


# -------------------------------------------------------------------------------------------- server


def config_value(text: str) -> Any:
    """A flag's value as config.json holds it: JSON where it parses (8, {"...": ...}), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def split_server_flags(flags: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Per-model flags (e.g. --max_batch_size 8) become config.json settings for every model; the rest pass on."""
    settings: dict[str, Any] = {}
    passed: list[str] = []
    tokens = iter(flags)
    for token in tokens:
        name, equals, value = token.removeprefix("--").partition("=")
        if token.startswith("--") and name in PER_MODEL_KEYS:
            settings[name] = config_value(value if equals else next(tokens, ""))
        else:
            passed.append(token)
    return settings, passed


def write_config(cases: list[ModelCase], settings: dict[str, Any], directory: Path) -> Path:
    """A config.json listing the benchmarked models with absolute base paths and `settings` each."""
    paths = {case.name: case.base_path for case in cases}  # resnet and resnet-jpeg: one model
    entries = [{"config": {"name": name, "base_path": str(path), **settings}} for name, path in paths.items()]
    config = {"model_config_list": entries}
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


class Server:
    """`python -m ovms` (embedded Redis, a worker, the api) in its own session, stopped on exit."""

    def __init__(self, cases: list[ModelCase], server_flags: list[str], directory: Path) -> None:
        self.cases = cases
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.directory = directory
        self.log_path = directory / "ovms.log"
        self.model_settings, passed_flags = split_server_flags(server_flags)
        config = write_config(cases, self.model_settings, directory)
        self.command = [
            sys.executable, "-m", "ovms", "--config_path", str(config),
            "--port", str(self.grpc_port), "--rest_port", str(self.rest_port), *passed_flags,
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    @property
    def grpc_address(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://localhost:{self.rest_port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> Server:
        with open(self.log_path, "w") as log:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def redis_traffic(self) -> int:
        """Bytes the embedded Redis has received from and sent to its clients so far."""
        found = EMBEDDED_REDIS.search(self.log_tail(10**7))
        if found is None:
            return 0
        info = redis.Redis(host=found[1], port=int(found[2]), socket_timeout=5).info("stats")
        return int(info["total_net_input_bytes"]) + int(info["total_net_output_bytes"])

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"ovms exited with {self.process.returncode}")

    def wait_ready(self) -> None:
        """Wait for both readiness log lines, then until every model has an AVAILABLE version."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(line in self.log_tail(10**7) for line in (GRPC_READY, REST_READY)):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"ovms was not ready within {READY_TIMEOUT_S} s")
            time.sleep(0.1)
        for case in self.cases:
            while not self.model_available(case.name):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"model {case.name} not AVAILABLE within {READY_TIMEOUT_S} s")
                time.sleep(0.2)

    def model_available(self, name: str) -> bool:
        try:
            reply = requests.get(f"{self.rest_url}/v1/models/{name}", timeout=5)
        except requests.RequestException:
            return False
        states = [v.get("state") for v in reply.json().get("model_version_status", [])] if reply.ok else []
        return "AVAILABLE" in states

    def stop(self) -> None:
        """SIGTERM, then SIGKILL the process group and any descendant left (the embedded Redis has its own session)."""
        if self.process is None:
            return
        children = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                progress("ovms did not stop on SIGTERM; killing its process group")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """The pids of all live processes below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        kids = children.get(pending.pop(), [])
        found += kids
        pending += kids
    return found


# ------------------------------------------------------------------------------------------- reports


@dataclass
class Row:
    """One table row: a served measurement next to the raw one at the same concurrency."""

    concurrency: int
    api: str
    raw: Stats
    served: Stats


def fmt(value: float, digits: int = 1) -> str:
    return "-" if np.isnan(value) else f"{value:,.{digits}f}"


def row_cells(row: Row) -> list[str]:
    raw, served = row.raw, row.served
    ratio = served.throughput / raw.throughput if raw.throughput else float("nan")
    return [
        str(row.concurrency),
        row.api,
        fmt(raw.throughput, 0),
        fmt(raw.percentile(50), 2),
        fmt(raw.percentile(99), 2),
        fmt(served.throughput, 0),
        fmt(served.percentile(50), 2),
        fmt(served.percentile(99), 2),
        fmt(ratio, 3),
        fmt(served.percentile(50) - raw.percentile(50), 2),
        fmt(served.mean_batch, 2),
        fmt(served.redis_kb_per_request, 1),
        str(served.error_count),
    ]


HEADERS = [
    "concurrency", "api", "raw req/s", "raw p50 ms", "raw p99 ms", "served req/s", "served p50 ms",
    "served p99 ms", "served/raw", "overhead p50 ms", "mean batch", "Redis KB/req", "errors",
]  # fmt: skip


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table padded so it also reads well in a terminal (numbers right-aligned)."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (width + 1) + ":" for width in widths) + "|"
    return "\n".join([line(headers), separator, *(line(cells) for cells in rows)])


def print_model_table(case: ModelCase, rows: list[Row]) -> None:
    print(f"\n### {case.heading}\n")
    print(markdown_table(HEADERS, [row_cells(row) for row in rows]))
    errors = Counter()
    for row in rows:
        errors.update(row.served.errors)
    if errors:
        print("\nerrors: " + ", ".join(f"{kind}: {count}" for kind, count in errors.most_common()))


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def print_header(args: argparse.Namespace, server: Server, started: datetime.datetime) -> None:
    print("## Benchmark: served vs raw OpenVINO\n")
    print(f"- date: {started:%Y-%m-%d %H:%M:%S %Z}")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}")
    print(f"- software: Python {platform.python_version()}, OpenVINO {ov.get_version()}, grpcio {grpc.__version__}")
    print(f"- command: `{shlex.join(sys.orig_argv)}`")
    print(f"- server: `{shlex.join(['python', *server.command[1:]])}`")
    if server.model_settings:
        print(f"- config.json settings of every model (from --server-flags): `{json.dumps(server.model_settings)}`")
    print(
        f"- each cell: {args.warmup:g} s warmup + {args.duration:g} s measured; batch 1 per request; "
        "raw = OpenVINO AsyncInferQueue in the benchmark process (LATENCY hint at c=1, THROUGHPUT above), "
        "served = c concurrent clients in the benchmark process (gRPC: grpc.aio coroutines on one channel; "
        "REST: threads, one requests.Session each; v2: the Triton client in another process, ops/v2_load.py); "
        "overhead = served p50 - raw p50; Redis KB/req = bytes written to and read from Redis per request"
    )


# ----------------------------------------------------------------------------------------------- main


def progress(message: str) -> None:
    print(f"[{Path(sys.argv[0]).stem}] {message}", file=sys.stderr, flush=True)


def describe(stats: Stats) -> str:
    return (
        f"{stats.throughput:,.0f} req/s, p50 {stats.percentile(50):.2f} ms, p99 {stats.percentile(99):.2f} ms, "
        f"batch {stats.mean_batch:.2f}, errors {stats.error_count}"
    )


def served_measurements(args: argparse.Namespace, server: Server, case: ModelCase) -> dict[str, Callable[..., Stats]]:
    """Row label -> a measurement taking (concurrency, warmup_s, duration_s), for the APIs asked for."""
    apis: dict[str, Callable[..., Stats]] = {"gRPC": functools.partial(measure_grpc, server.grpc_address, case)}
    if args.rest:
        apis["REST"] = functools.partial(measure_rest, server.rest_url, case)
    if args.v2:
        # tritonclient sends JSON BYTES as UTF-8 text, which encoded images are not
        for label, protocol in V2_APIS.items():
            if not case.encoded or protocol != "rest-json":
                apis[label] = functools.partial(measure_v2, server, case, protocol)
    return apis


def bench_model(args: argparse.Namespace, core: ov.Core, server: Server, case: ModelCase) -> list[Row]:
    """Raw and served measurements of one model at every concurrency, each served one with its Redis traffic."""
    rows: list[Row] = []
    for concurrency in args.concurrency:
        timing = (args.warmup, args.duration)
        progress(f"{case.heading} c={concurrency}: raw OpenVINO ...")
        raw = measure_raw(core, case, concurrency, *timing)
        progress(f"  raw:  {describe(raw)}")
        for label, measure in served_measurements(args, server, case).items():
            server.check_alive()
            progress(f"{case.heading} c={concurrency}: served {label} ...")
            before = server.redis_traffic()
            served = measure(concurrency, *timing)
            served.redis_bytes = server.redis_traffic() - before
            progress(f"  {label}: {describe(served)}")
            rows.append(Row(concurrency, label, raw, served))
        server.check_alive()
    return rows


def int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers separated by commas, e.g. 1,8,32")
    return values


def model_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(CASES))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {', '.join(CASES)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warmup seconds before each cell (default 2)")
    parser.add_argument("--concurrency", type=int_list, default=[1, 8, 32], help="e.g. 1,8,32 (default)")
    parser.add_argument("--models", type=model_list, default=list(CASES), help=f"default: {','.join(CASES)}")
    parser.add_argument(
        "--server-flags", default="", help='extra ovms flags, e.g. "--max_batch_size 8" (per-model ones: config.json)'
    )
    parser.add_argument("--rest", action="store_true", help="also measure the REST API")
    parser.add_argument(
        "--v2",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure KServe v2 too (gRPC, REST binary, REST JSON; default on, --no-v2 leaves it out)",
    )
    return parser.parse_args(argv)


def raise_keyboard_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now().astimezone()
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)  # stop the server on SIGTERM as on Ctrl-C
    cases = [CASES[name]() for name in args.models]
    core = ov.Core()
    with tempfile.TemporaryDirectory(prefix="ovms-bench-") as directory:
        server = Server(cases, shlex.split(args.server_flags), Path(directory))
        try:
            progress(f"starting {shlex.join(server.command)}")
            with server:
                progress(f"server ready: gRPC {server.grpc_address}, REST {server.rest_url}")
                results = [(case, bench_model(args, core, server, case)) for case in cases]
        except KeyboardInterrupt:
            progress("interrupted; the server was stopped")
            return 130
        except Exception:
            progress(f"failed; last lines of the server log:\n{server.log_tail()}")
            raise
        print_header(args, server, started)
        for case, rows in results:
            print_model_table(case, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
