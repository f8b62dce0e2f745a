#!/usr/bin/env python3
"""Build the example models served by this project, locally and deterministically.

Nothing is downloaded: every model is either trained on data bundled with
scikit-learn or constructed directly with the OpenVINO opset API / onnx.helper.

Layout written to the output directory (default: ``models/`` at the repo root)::

    digits/1/model.{xml,bin}      MLP classifier for sklearn's load_digits()
    data/{imgs,labels}.npy        held-out digits split (raw 0..16 pixels, int64 labels)
    resnet/1/model.{xml,bin}      ResNet-50-shaped network, random weights, INT8 (NNCF PTQ)
    versioned/{1,2}/model.*       y = x + 1 (v1) and y = x * 2 (v2)
    mapped/1/model.* + mapping_config.json
    multi/1/model.*               sum = a + b, product = a * b
    onnx_add/1/model.onnx         y = x + 10 (ONNX opset 13)
    types/1/model.*               identity pass-through for several element types
    image_u8/1/model.*            identity of U8 NHWC images [-1,32,48,3] (image inputs: layout, colour order)
    image_mean/1/model.*          per-channel mean of FP32 NCHW images of any size [-1,3,-1,-1]
    image_gray/1/model.*          identity of FP32 one-channel NCHW images [-1,1,24,32]
    config.json                   OVMS multi-model config with absolute base paths
    .complete                     builder version; written last, used as the cache key

Usage::

    .venv/bin/python ops/build_models.py [--output DIR] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import openvino as ov

try:
    import openvino.opset13 as ops
except ImportError:  # older OpenVINO releases only ship the runtime namespace
    from openvino.runtime import opset13 as ops

# Bump whenever the produced models change, so cached outputs get rebuilt.
BUILDER_VERSION = "build_models-2"

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "models"
COMPLETE_MARKER = ".complete"

# Exact f32 execution on CPU (the plugin may otherwise pick bf16/f16 internally).
F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}

DIGITS_SEED = 0
DIGITS_MIN_ACCURACY = 0.95
DIGITS_PROBA_TOLERANCE = 1e-4

RESNET_SEED = 0
RESNET_CALIBRATION_SEED = 1
RESNET_CALIBRATION_SAMPLES = 16
RESNET_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (width, blocks)
RESNET_EXPANSION = 4
# Scales the last conv of each residual branch; keeps activations bounded
# through 16 un-normalised residual additions.
RESNET_RESIDUAL_SCALE = 0.2

# Element types passed through by the `types` model.
PASSTHROUGH_TYPES = {
    "f16": ov.Type.f16,
    "i8": ov.Type.i8,
    "u8": ov.Type.u8,
    "i16": ov.Type.i16,
    "i32": ov.Type.i32,
    "i64": ov.Type.i64,
    "boolean": ov.Type.boolean,
}

MODEL_NAMES = (
    "digits",
    "resnet",
    "versioned",
    "mapped",
    "multi",
    "onnx_add",
    "types",
    "image_u8",
    "image_mean",
    "image_gray",
)


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    """Print a progress line immediately (the build is long enough to want feedback)."""
    print(message, flush=True)


@contextmanager
def timed(label: str) -> Iterator[None]:
    """Log the wall time spent inside the block."""
    start = time.perf_counter()
    yield
    log(f"[{label}] done in {time.perf_counter() - start:.1f}s")


def parameter(name: str, element_type: ov.Type, shape: list[int]) -> ov.Node:
    """Create a Parameter whose friendly name and tensor name are both `name`."""
    node = ops.parameter(ov.PartialShape(shape), element_type, name=name)
    node.output(0).get_tensor().set_names({name})
    return node


def named(node: ov.Node, name: str) -> ov.Node:
    """Give the first output tensor of `node` the public name `name`."""
    node.set_friendly_name(name)
    node.output(0).get_tensor().set_names({name})
    return node


def constant(value: np.ndarray | float, dtype: type = np.float32) -> ov.Node:
    return ops.constant(np.asarray(value, dtype=dtype))


def make_model(outputs: list[ov.Node], inputs: list[ov.Node], name: str) -> ov.Model:
    return ov.Model([ops.result(out) for out in outputs], inputs, name)


def save_ir(model: ov.Model, version_dir: Path) -> Path:
    """Save `model` as version_dir/model.xml + model.bin with f32 weights kept as-is."""
    version_dir.mkdir(parents=True, exist_ok=True)
    xml_path = version_dir / "model.xml"
    ov.save_model(model, xml_path, compress_to_fp16=False)
    return xml_path


def compile_saved(core: ov.Core, path: Path, config: dict | None = None) -> ov.CompiledModel:
    """Compile a model read back from disk, so checks cover the saved artifact."""
    return core.compile_model(core.read_model(path), "CPU", config or {})


def infer(compiled: ov.CompiledModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one inference and key the results by output tensor name."""
    results = compiled(inputs)
    return {out.get_any_name(): results[out] for out in compiled.outputs}


def reset_dir(path: Path) -> Path:
    """Remove a model directory owned by this builder and recreate it empty."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------- digits


def train_digits() -> tuple[object, np.ndarray, np.ndarray]:
    """Train an MLP on load_digits(); return (classifier, held-out X, held-out y)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.25, random_state=DIGITS_SEED, stratify=labels
    )
    classifier = MLPClassifier(
        hidden_layer_sizes=(128, 64),
        activation="relu",
        max_iter=500,
        random_state=DIGITS_SEED,
    )
    classifier.fit(x_train / 16.0, y_train)
    return classifier, x_test, y_test


def digits_graph(classifier: object) -> ov.Model:
    """Export MLPClassifier weights as MatMul+Add(+Relu) layers ending in Softmax.

    The graph scales by 1/16 itself so it accepts raw load_digits() pixels.
    """
    if classifier.activation != "relu" or classifier.out_activation_ != "softmax":
        raise ValueError("digits export expects relu hidden layers and a softmax output")
    x = parameter("x", ov.Type.f32, [-1, 64])
    node = ops.multiply(x, constant(1.0 / 16.0))
    last = len(classifier.coefs_) - 1
    for index, (weights, bias) in enumerate(zip(classifier.coefs_, classifier.intercepts_, strict=False)):
        node = ops.matmul(node, constant(weights), False, False)
        node = ops.add(node, constant(bias[np.newaxis, :]))
        if index < last:
            node = ops.relu(node)
    probabilities = named(ops.softmax(node, 1), "probabilities")
    return make_model([probabilities], [x], "digits")


def verify_digits(
    core: ov.Core,
    xml_path: Path,
    classifier: object,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> float:
    """Check held-out accuracy and agreement with sklearn; return the accuracy."""
    compiled = compile_saved(core, xml_path, F32_CONFIG)
    probabilities = infer(compiled, {"x": x_test.astype(np.float32)})["probabilities"]
    accuracy = float(np.mean(probabilities.argmax(axis=1) == y_test))
    max_diff = float(np.max(np.abs(probabilities - classifier.predict_proba(x_test / 16.0))))
    log(
        f"digits: held-out accuracy {accuracy:.4f} on {len(y_test)} samples, "
        f"max |OV - sklearn| proba diff {max_diff:.2e}"
    )
    assert accuracy >= DIGITS_MIN_ACCURACY, f"digits accuracy {accuracy:.4f} too low"
    assert max_diff <= DIGITS_PROBA_TOLERANCE, f"digits proba mismatch {max_diff:.2e}"
    return accuracy


def save_digits_data(data_dir: Path, x_test: np.ndarray, y_test: np.ndarray) -> None:
    np.save(data_dir / "imgs.npy", x_test.astype(np.float32))
    np.save(data_dir / "labels.npy", y_test.astype(np.int64))


def build_digits(core: ov.Core, output: Path) -> None:
    classifier, x_test, y_test = train_digits()
    xml_path = save_ir(digits_graph(classifier), reset_dir(output / "digits") / "1")
    verify_digits(core, xml_path, classifier, x_test, y_test)
    save_digits_data(reset_dir(output / "data"), x_test, y_test)


# --------------------------------------------------------------------------- resnet


class ResNetBuilder:
    """Builds a ResNet-50-shaped graph with batch-norm folded into conv biases."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def conv(
        self,
        data: ov.Node,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        scale: float = 1.0,
    ) -> ov.Node:
        """Conv (He-normal weights, times `scale`) plus a small bias; no activation."""
        std = np.sqrt(2.0 / (in_ch * kernel * kernel)) * scale
        weights = self.rng.standard_normal((out_ch, in_ch, kernel, kernel), dtype=np.float32) * std
        bias = self.rng.normal(0.0, 0.01, size=(1, out_ch, 1, 1)).astype(np.float32)
        pad = kernel // 2
        node = ops.convolution(data, constant(weights), [stride] * 2, [pad] * 2, [pad] * 2, [1, 1])
        return ops.add(node, constant(bias))

    def bottleneck(self, data: ov.Node, in_ch: int, width: int, stride: int) -> ov.Node:
        """1x1 -> 3x3 (strided) -> 1x1 branch plus identity or projection shortcut."""
        out_ch = width * RESNET_EXPANSION
        branch = ops.relu(self.conv(data, in_ch, width, 1))
        branch = ops.relu(self.conv(branch, width, width, 3, stride))
        branch = self.conv(branch, width, out_ch, 1, scale=RESNET_RESIDUAL_SCALE)
        shortcut = data
        if stride != 1 or in_ch != out_ch:
            shortcut = self.conv(data, in_ch, out_ch, 1, stride)
        return ops.relu(ops.add(branch, shortcut))

    def build(self) -> ov.Model:
        data = parameter("data", ov.Type.f32, [1, 3, 224, 224])
        node = ops.relu(self.conv(data, 3, 64, 7, 2))
        node = ops.max_pool(node, [2, 2], [1, 1], [1, 1], [1, 1], [3, 3]).output(0)
        channels = 64
        for stage, (width, blocks) in enumerate(RESNET_STAGES):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                node = self.bottleneck(node, channels, width, stride)
                channels = width * RESNET_EXPANSION
        pooled = ops.reduce_mean(node, constant([2, 3], np.int64), False)
        fc_weights = self.rng.standard_normal((channels, 1000), dtype=np.float32) / np.sqrt(channels)
        logits = ops.add(
            ops.matmul(pooled, constant(fc_weights), False, False),
            constant(np.zeros((1, 1000))),
        )
        prob = named(ops.softmax(logits, 1), "prob")
        return make_model([prob], [data], "resnet50")


def calibration_samples(count: int, seed: int) -> list[np.ndarray]:
    """Seeded random images in roughly normalised-image range."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 224, 224), dtype=np.float32) for _ in range(count)]


def quantize_int8(model: ov.Model) -> ov.Model:
    """NNCF post-training INT8 quantization on a small seeded calibration set."""
    import nncf

    samples = calibration_samples(RESNET_CALIBRATION_SAMPLES, RESNET_CALIBRATION_SEED)
    return nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))


def measure_throughput(compiled: ov.CompiledModel, sample: np.ndarray, seconds: float = 3.0) -> float:
    """Sequential single-request images/second; a rough sanity figure only."""
    request = compiled.create_infer_request()
    request.infer({"data": sample})  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        request.infer({"data": sample})
        done += 1
    return done / (time.perf_counter() - start)


def verify_resnet(core: ov.Core, fp32_model: ov.Model, int8_path: Path) -> None:
    """Check the saved INT8 model compiles, is finite and roughly tracks FP32."""
    int8 = compile_saved(core, int8_path)
    fp32 = core.compile_model(fp32_model, "CPU", F32_CONFIG)
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in core.read_model(int8_path).get_ops())
    samples = calibration_samples(4, seed=2)
    int8_out = np.concatenate([infer(int8, {"data": s})["prob"] for s in samples])
    fp32_out = np.concatenate([infer(fp32, {"data": s})["prob"] for s in samples])
    assert int8_out.shape == (4, 1000) and np.all(np.isfinite(int8_out)), "INT8 output not finite"
    top1_agree = float(np.mean(int8_out.argmax(axis=1) == fp32_out.argmax(axis=1)))
    log(
        f"resnet: {fake_quantize} FakeQuantize ops; INT8 prob sums "
        f"{np.round(int8_out.sum(axis=1), 4).tolist()}; max prob {int8_out.max():.4g}; "
        f"max |INT8 - FP32| {np.abs(int8_out - fp32_out).max():.2e}; top-1 agreement {top1_agree:.2f}"
    )
    log(
        f"resnet: INT8 throughput ~{measure_throughput(int8, samples[0]):.1f} img/s "
        f"(1 sync request, {os.cpu_count()} cores)"
    )


def build_resnet(core: ov.Core, output: Path) -> None:
    fp32_model = ResNetBuilder(RESNET_SEED).build()
    int8_model = quantize_int8(fp32_model.clone())
    xml_path = save_ir(int8_model, reset_dir(output / "resnet") / "1")
    verify_resnet(core, fp32_model, xml_path)


# --------------------------------------------------------------------------- small models


def elementwise_model(input_name: str, output_name: str, width: int, op: Callable[[ov.Node], ov.Node]) -> ov.Model:
    """Single f32 [-1, width] input mapped through `op` to one named output."""
    x = parameter(input_name, ov.Type.f32, [-1, width])
    return make_model([named(op(x), output_name)], [x], output_name)


def check_outputs(
    core: ov.Core,
    path: Path,
    inputs: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
) -> None:
    """Run the saved model and require exact equality (dtype and value) per output."""
    actual = infer(compile_saved(core, path, F32_CONFIG), inputs)
    assert set(actual) == set(expected), f"{path}: outputs {sorted(actual)} != {sorted(expected)}"
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype, f"{path}: {name} dtype {got.dtype} != {want.dtype}"
        assert np.array_equal(got, want), f"{path}: {name} = {got} != {want}"


def build_versioned(core: ov.Core, output: Path) -> None:
    root = reset_dir(output / "versioned")
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3.0
    versions = {
        1: (lambda node: ops.add(node, constant(1.0)), x + 1.0),
        2: (lambda node: ops.multiply(node, constant(2.0)), x * 2.0),
    }
    for version, (op, expected) in versions.items():
        path = save_ir(elementwise_model("x", "y", 4, op), root / str(version))
        check_outputs(core, path, {"x": x}, {"y": expected})


def build_mapped(core: ov.Core, output: Path) -> None:
    version_dir = reset_dir(output / "mapped") / "1"
    model = elementwise_model(
        "input_tensor",
        "output_tensor",
        3,
        lambda node: ops.multiply(node, constant(3.0)),
    )
    path = save_ir(model, version_dir)
    mapping = {"inputs": {"input_tensor": "in"}, "outputs": {"output_tensor": "out"}}
    (version_dir / "mapping_config.json").write_text(json.dumps(mapping, indent=2) + "\n")
    x = np.array([[1.0, -2.0, 0.5]], dtype=np.float32)
    check_outputs(core, path, {"input_tensor": x}, {"output_tensor": x * 3.0})


def build_multi(core: ov.Core, output: Path) -> None:
    a = parameter("a", ov.Type.f32, [-1, 2])
    b = parameter("b", ov.Type.f32, [-1, 2])
    outputs = [named(ops.add(a, b), "sum"), named(ops.multiply(a, b), "product")]
    path = save_ir(make_model(outputs, [a, b], "multi"), reset_dir(output / "multi") / "1")
    a_val = np.array([[1.0, 2.0], [3.0, -4.0]], dtype=np.float32)
    b_val = np.array([[5.0, 6.0], [0.5, 2.0]], dtype=np.float32)
    check_outputs(
        core,
        path,
        {"a": a_val, "b": b_val},
        {"sum": a_val + b_val, "product": a_val * b_val},
    )


def build_onnx_add(core: ov.Core, output: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "ten"], ["y"])],
        "onnx_add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0])],
    )
    model = helper.make_model(graph, producer_name="build_models", opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # conservative IR version so older ONNX readers accept it
    onnx.checker.check_model(model)
    version_dir = reset_dir(output / "onnx_add") / "1"
    version_dir.mkdir()
    path = version_dir / "model.onnx"
    onnx.save(model, path)
    x = np.array([[1.0, 2.0, 3.0], [-10.0, 0.0, 0.25]], dtype=np.float32)
    check_outputs(core, path, {"x": x}, {"y": x + 10.0})


def passthrough(node: ov.Node, element_type: ov.Type) -> ov.Node:
    """A value- and type-preserving op (Parameter->Result directly would share one tensor)."""
    if element_type == ov.Type.boolean:
        return ops.logical_and(node, node)
    return ops.multiply(node, constant(1, element_type.to_dtype()))


def passthrough_values(element_type: ov.Type) -> np.ndarray:
    """Two rows covering each type's extremes.

    i64 stays within int32 range: the CPU plugin executes i64 ops in i32.
    """
    if element_type == ov.Type.boolean:
        return np.array([[True, False], [False, True]])
    dtype = element_type.to_dtype()
    if element_type == ov.Type.i64:
        dtype = np.int32
    info = np.finfo(dtype) if np.issubdtype(dtype, np.floating) else np.iinfo(dtype)
    values = [[info.min, info.max], [0, 1]]
    return np.array(values, dtype=element_type.to_dtype())


def build_types(core: ov.Core, output: Path) -> None:
    params, outputs = [], []
    for name, element_type in PASSTHROUGH_TYPES.items():
        param = parameter(name, element_type, [-1, 2])
        params.append(param)
        outputs.append(named(passthrough(param, element_type), f"{name}_out"))
    path = save_ir(make_model(outputs, params, "types"), reset_dir(output / "types") / "1")
    inputs = {name: passthrough_values(t) for name, t in PASSTHROUGH_TYPES.items()}
    check_outputs(core, path, inputs, {f"{name}_out": value for name, value in inputs.items()})


def build_image_models(core: ov.Core, output: Path) -> None:
    """Small models that show exactly what an encoded image input was decoded into (tests of image inputs):
    U8 NHWC pixels as they are, the per-channel mean of FP32 NCHW images of any size, one-channel FP32."""
    rng = np.random.default_rng(0)
    pixels = parameter("image", ov.Type.u8, [-1, 32, 48, 3])
    path = save_ir(
        make_model([named(passthrough(pixels, ov.Type.u8), "pixels")], [pixels], "image_u8"),
        reset_dir(output / "image_u8") / "1",
    )
    sample = rng.integers(0, 256, (2, 32, 48, 3)).astype(np.uint8)
    check_outputs(core, path, {"image": sample}, {"pixels": sample})

    image = parameter("image", ov.Type.f32, [-1, 3, -1, -1])
    mean = named(ops.reduce_mean(image, constant([2, 3], np.int64), keep_dims=False), "mean")
    path = save_ir(make_model([mean], [image], "image_mean"), reset_dir(output / "image_mean") / "1")
    sample = rng.integers(0, 256, (2, 3, 5, 7)).astype(np.float32)
    actual = infer(compile_saved(core, path, F32_CONFIG), {"image": sample})["mean"]
    assert np.allclose(actual, sample.mean(axis=(2, 3)), rtol=1e-6), f"{path}: {actual}"

    gray = parameter("image", ov.Type.f32, [-1, 1, 24, 32])
    path = save_ir(
        make_model([named(passthrough(gray, ov.Type.f32), "pixels")], [gray], "image_gray"),
        reset_dir(output / "image_gray") / "1",
    )
    sample = rng.integers(0, 256, (2, 1, 24, 32)).astype(np.float32)
    check_outputs(core, path, {"image": sample}, {"pixels": sample})


# --------------------------------------------------------------------------- config / cache


def write_config(output: Path) -> None:
    """OVMS multi-model config with absolute base paths."""
    entries = []
    for name in MODEL_NAMES:
        config: dict = {"name": name, "base_path": str((output / name).resolve())}
        if name == "versioned":
            config["model_version_policy"] = {"all": {}}
        entries.append({"config": config})
    text = json.dumps({"model_config_list": entries}, indent=2) + "\n"
    (output / "config.json").write_text(text)


def is_up_to_date(output: Path) -> bool:
    marker = output / COMPLETE_MARKER
    return marker.is_file() and marker.read_text().strip() == BUILDER_VERSION


def mark_complete(output: Path) -> None:
    """Write the cache marker atomically; must be the very last step of a build."""
    tmp = output / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(BUILDER_VERSION + "\n")
    os.replace(tmp, output / COMPLETE_MARKER)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"output directory (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    return parser.parse_args(argv)


BUILD_STEPS: tuple[tuple[str, Callable[[ov.Core, Path], None]], ...] = (
    ("digits", build_digits),
    ("versioned", build_versioned),
    ("mapped", build_mapped),
    ("multi", build_multi),
    ("onnx_add", build_onnx_add),
    ("types", build_types),
    ("image models", build_image_models),
    ("resnet", build_resnet),
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output: Path = args.output.resolve()
    if not args.force and is_up_to_date(output):
        log(f"models up to date ({output}, {BUILDER_VERSION})")
        return 0
    output.mkdir(parents=True, exist_ok=True)
    (output / COMPLETE_MARKER).unlink(missing_ok=True)
    core = ov.Core()
    log(f"building models into {output} (OpenVINO {ov.__version__})")
    with timed("total"):
        for name, step in BUILD_STEPS:
            with timed(name):
                step(core, output)
        write_config(output)
        mark_complete(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
