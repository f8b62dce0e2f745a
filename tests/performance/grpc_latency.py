#!/usr/bin/env python3
"""The seed's latency client: sequential gRPC Predict calls over a numpy data set, reporting latency and accuracy.

    python tests/performance/grpc_latency.py --images_numpy_path imgs.npy --labels_numpy_path labels.npy \\
        --model_name digits --input_name x --output_name probabilities --iterations 1000 --report_every 100

Prints, like the seed:

    [--] Starting iterations
    [--] Iteration   100/ 1000; Current latency: 10.52ms; Average latency: 11.35ms
    [--] Iterations:  1000; Final average latency: 10.86ms; Classification accuracy: 100.0%

Images are sent as they are stored (float32), so they must already be what the model expects.
When there are more iterations than batches in the file, it starts over from the first batch.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import grpc
import numpy as np
from ovmsclient import make_tensor_proto
from ovmsclient.tfs_compat.grpc.tensors import make_ndarray
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

PREFIX = "[--]"
TIMEOUT_S = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images_numpy_path", required=True, help="input data: a batch of images in numpy format")
    parser.add_argument("--labels_numpy_path", help="expected classes in numpy format, to measure accuracy")
    parser.add_argument("--grpc_address", default="localhost", help="gRPC server address. default: localhost")
    parser.add_argument("--grpc_port", type=int, default=9178, help="gRPC server port. default: 9178")
    parser.add_argument("--input_name", default="input", help="model input name. default: input")
    parser.add_argument("--output_name", default="output", help="model output name. default: output")
    parser.add_argument("--model_name", default="resnet", help="model name. default: resnet")
    parser.add_argument("--model_version", type=int, default=0, help="model version. default: 0 (the default one)")
    parser.add_argument(
        "--iterations", type=int, default=0, help="number of requests. default: 0 (one pass over the images)"
    )
    parser.add_argument("--batchsize", type=int, default=1, help="images per request. default: 1")
    parser.add_argument("--report_every", type=int, default=0, help="report latency every N iterations. default: 0")
    return parser.parse_args(argv)


def batches(count: int, batch_size: int, iterations: int) -> Iterator[slice]:
    """`iterations` consecutive batches, wrapping around to the first one at the end of the data."""
    starts = range(0, count - batch_size + 1, batch_size)
    for iteration in range(iterations):
        start = starts[iteration % len(starts)]
        yield slice(start, start + batch_size)


def predict_request(args: argparse.Namespace, images: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = args.model_name
    if args.model_version:
        request.model_spec.version.value = args.model_version
    request.inputs[args.input_name].CopyFrom(make_tensor_proto(images))
    return request


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images = np.load(args.images_numpy_path, allow_pickle=False).astype(np.float32)
    labels = np.load(args.labels_numpy_path, allow_pickle=False) if args.labels_numpy_path else None
    if not 0 < args.batchsize <= len(images):
        print(f"batchsize must be between 1 and the number of images ({len(images)})", file=sys.stderr)
        return 2
    iterations = args.iterations or len(images) // args.batchsize
    channel = grpc.insecure_channel(f"{args.grpc_address}:{args.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    latencies_ms: list[float] = []
    matches = total = 0
    print(f"{PREFIX} Starting iterations", flush=True)
    for iteration, window in enumerate(batches(len(images), args.batchsize, iterations), start=1):
        request = predict_request(args, images[window])
        started = time.perf_counter()
        try:
            response = stub.Predict(request, timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            print(f"{PREFIX} Iteration {iteration} failed: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
        latencies_ms.append((time.perf_counter() - started) * 1000)
        if args.output_name not in response.outputs:
            print(f"{PREFIX} No output {args.output_name!r} in {list(response.outputs)}", file=sys.stderr)
            return 1
        if labels is not None:
            classes = make_ndarray(response.outputs[args.output_name]).reshape(args.batchsize, -1).argmax(axis=1)
            matches += int(np.sum(classes == labels[window].reshape(-1)))
            total += args.batchsize
        if args.report_every > 0 and iteration < iterations and iteration % args.report_every == 0:
            print(
                f"{PREFIX} Iteration {iteration:5}/{iterations:5}; Current latency: {latencies_ms[-1]:.2f}ms; "
                f"Average latency: {np.mean(latencies_ms):.2f}ms",
                flush=True,
            )
    channel.close()

    final = f"{PREFIX} Iterations: {iterations:5}; Final average latency: {np.mean(latencies_ms):.2f}ms"
    if labels is not None:
        final += f"; Classification accuracy: {round(matches / total * 100, 2)}%"
    print(final, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
