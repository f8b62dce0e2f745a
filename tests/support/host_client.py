"""A client program for a test network's client host: digits predicts over gRPC and REST, one JSON line each.

Run inside the client's namespace (`python -m tests.support.host_client --target grpc:10.x.y.z:9000 ...`): it
sends predicts back to back on `--threads` threads, request k carrying row k of the digits test images and
going to target k (round robin), until `--count` are answered or SIGTERM. Each outcome is one line of `--out`
(written as it ends, so the test can read the file while the load runs): the row, the target, monotonic start
and end (one clock for every process of the machine), the status (`OK` or the gRPC code / HTTP status), the
worker that answered and its probabilities, so the test can check every answer against the model run locally.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import requests
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.support.load import float_request

IMAGES = Path(__file__).resolve().parents[2] / "models" / "data" / "imgs.npy"


def _grpc_call(address: str, timeout_s: float) -> callable:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))

    def call(row: np.ndarray) -> tuple[str, str, list[float]]:
        try:
            reply, call = stub.Predict.with_call(float_request("digits", "x", row[None]), timeout=timeout_s)
        except grpc.RpcError as error:
            return error.code().name, "", []
        worker = dict(call.trailing_metadata() or ()).get("ovms-worker", "")
        return "OK", worker, np.frombuffer(reply.outputs["probabilities"].tensor_content, np.float32).tolist()

    return call


def _rest_call(url: str, timeout_s: float) -> callable:
    session = requests.Session()

    def call(row: np.ndarray) -> tuple[str, str, list[float]]:
        try:
            reply = session.post(
                f"{url}/v1/models/digits:predict",
                json={"instances": [row.tolist()]},
                headers={"X-Request-Timeout": str(timeout_s)},
                timeout=timeout_s + 5,
            )
        except requests.RequestException as error:
            return type(error).__name__, "", []
        if reply.status_code != 200:
            return str(reply.status_code), "", []
        return "OK", reply.headers.get("X-Ovms-Worker", ""), reply.json()["predictions"][0]

    return call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", action="append", required=True, help="grpc:host:port or rest:http://host:port")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--count", type=int, default=0, help="stop after this many requests (0: until SIGTERM)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    images = np.load(IMAGES)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    counter = itertools.count()
    lock = threading.Lock()
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 - one line per outcome, closed at the end

    def run() -> None:
        calls = {}  # a channel / session per thread and target
        while not stop.is_set():
            k = next(counter)
            if args.count and k >= args.count:
                return
            target = args.target[k % len(args.target)]
            if target not in calls:
                kind, where = target.split(":", 1)
                calls[target] = (_grpc_call if kind == "grpc" else _rest_call)(where, args.timeout)
            row = k % len(images)
            started = time.monotonic()
            code, worker, probabilities = calls[target](images[row])
            line = {"k": k, "row": row, "target": target, "started": started, "finished": time.monotonic()}
            line.update(code=code, worker=worker, probabilities=probabilities)
            with lock:
                out.write(json.dumps(line) + "\n")
            if code != "OK":
                time.sleep(0.01)  # a failing server answers at once: do not spin

    threads = [threading.Thread(target=run) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.close()


if __name__ == "__main__":
    main()
