"""One model version compiled with OpenVINO, run with a queue of asynchronous infer requests."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from inference import dtypes
from inference.errors import RESHAPE_FAILED, FailedPrecondition, InvalidArgument, plain_message
from inference.layouts import image_layout
from inference.mapping import TensorMapping, load_mapping
from inference.model_config import REST_B64_RAW, ConfigError, ModelConfig
from inference.repository import find_model_file
from inference.request import Tensors
from inference.shapes import AUTO
from inference.signature import DYNAMIC, ModelSignature, TensorSpec

log = logging.getLogger("serving")

# A request with more rows than fit in this many input bytes runs as several inferences of that size (on a
# batchable model): OpenVINO's intermediate buffers grow with the rows of one inference and are kept after it.
MAX_INFERENCE_INPUT_BYTES = 16 << 20
# After an inference this large, its infer request is given small inputs again: it holds its last inputs
# (shared, not copied), which would keep a large request's tensors alive until its next inference.
RELEASE_INPUTS_BYTES = 1 << 20


@dataclass(frozen=True)
class _Port:
    alias: str
    precision: dtypes.Precision


class CompiledVersion:
    """A loaded model version: its client-facing signature and `nireq` infer requests.

    Each infer request has a thread of its own that takes the next job and runs it synchronously
    (OpenVINO releases the GIL meanwhile). OpenVINO's asynchronous API does not call back when an
    inference fails — the error only surfaces in `wait()` — so a failed request would hang its caller
    and keep its infer request busy for good; a synchronous call raises where it can be reported.
    """

    def __init__(self, core: ov.Core, config: ModelConfig, version: int, version_dir: Path) -> None:
        self.name = config.name
        self.version = version
        mapping = load_mapping(version_dir)
        model = core.read_model(str(find_model_file(version_dir)))
        # Shapes the model was exported with: warm-up samples that run even once `auto` made them dynamic.
        original = {mapping.input_alias(_tensor_name(p)): _dims(p.get_partial_shape()) for p in model.inputs}
        _apply_shape_settings(model, config, mapping)
        self._inputs = [_port(p, mapping.input_alias(_tensor_name(p))) for p in model.inputs]
        self._outputs = [_port(p, mapping.output_alias(_tensor_name(p))) for p in model.outputs]
        self.signature = _signature(model, config, self._inputs, self._outputs, original)
        self.batchable = config.max_batch_size > 1 and self.signature.shared_batch and _make_batch_dynamic(model)
        self._compiled = core.compile_model(model, config.target_device, _plugin_properties(config))
        self.nireq = config.nireq or self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self._input_index = {port.alias: index for index, port in enumerate(self._inputs)}
        self._sample_shapes = {
            name: [_sample_dim(now, before) for now, before in zip(spec.shape, original[name], strict=False)]
            for name, spec in self.signature.inputs.items()
        }
        self._min_rows_per_inference = max(config.max_batch_size, 1)
        self._jobs: queue.SimpleQueue[tuple[dict, Future[Tensors]] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=self._serve,
                args=(self._compiled.create_infer_request(),),
                daemon=True,
                name=f"infer-{self.name}-{version}-{index}",
            )
            for index in range(self.nireq)
        ]
        for thread in self._threads:
            thread.start()
        if self.batchable and not self._rows_are_independent():
            self.batchable = False

    def infer_async(self, inputs: Tensors) -> Future[Tensors]:
        """Queue one inference; the future holds the outputs or the error."""
        future: Future[Tensors] = Future()
        tensors = {self._input_index[name]: self._to_ov(name, array) for name, array in inputs.items()}
        self._jobs.put((tensors, future))
        return future

    def infer(self, inputs: Tensors) -> Tensors:
        return self.infer_async(inputs).result()

    def warm_up(self) -> None:
        """One inference on zeros shaped as the model was exported, so no client pays for first-run costs."""
        self.infer(self._samples())

    def _samples(self) -> Tensors:
        return {
            name: np.zeros(self._sample_shapes[name], dtype=dtypes.by_name(spec.precision).numpy)
            for name, spec in self.signature.inputs.items()
        }

    def _rows_are_independent(self) -> bool:
        """Whether two random rows run together give each the answer it gets alone: then requests may share
        an inference. A first dimension that is not a batch dimension (a vector [3] normalized as a whole,
        a per-request scale [1] beside data [1,10]) fails this, and the model runs requests one by one."""
        rng = np.random.default_rng(0)
        rows = [
            {
                name: _random_sample(rng, spec.precision, [1, *self._sample_shapes[name][1:]])
                for name, spec in self.signature.inputs.items()
            }
            for _ in range(2)
        ]
        try:
            alone = [self.infer(sample) for sample in rows]
            together = self.infer({name: np.concatenate([row[name] for row in rows]) for name in rows[0]})
        except Exception as exc:  # any failure means: do not batch this model
            log.info("Model %s version %d runs requests one by one: %s", self.name, self.version, plain_message(exc))
            return False
        independent = all(
            array.ndim > 0
            and array.shape[0] == 2
            and all(_same_values(array[i : i + 1], alone[i][name]) for i in range(2))
            for name, array in together.items()
        )
        if not independent:
            log.info(
                "Model %s version %d runs requests one by one: its rows are not independent", self.name, self.version
            )
        return independent

    def close(self) -> None:
        """Finish the queued inferences, then stop the infer threads."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def _to_ov(self, name: str, array: np.ndarray) -> ov.Tensor | np.ndarray:
        precision = self._inputs[self._input_index[name]].precision
        if precision.name == "BF16":
            return ov.Tensor(np.ascontiguousarray(array), array.shape, ov.Type.bf16)
        return array

    def _serve(self, request: ov.InferRequest) -> None:
        while (job := self._jobs.get()) is not None:
            tensors, future = job
            try:
                outputs = self._run(request, tensors)
            except RuntimeError as exc:
                future.set_exception(_inference_error(self.signature, exc))
            except Exception as exc:  # whatever goes wrong fails this job, never the thread
                future.set_exception(exc)
            else:
                future.set_result(outputs)
            job = tensors = future = outputs = None  # not kept alive until the next job: they may be large

    def _run(self, request: ov.InferRequest, tensors: dict[int, ov.Tensor | np.ndarray]) -> Tensors:
        """The outputs for `tensors`: one inference, or several of bounded size whose rows are joined."""
        nbytes = sum(t.nbytes for t in tensors.values() if isinstance(t, np.ndarray))
        step = self._rows_per_inference(tensors, nbytes)
        if step is None:
            outputs = self._infer_once(request, tensors)
        else:
            rows = next(iter(tensors.values())).shape[0]
            parts = [
                self._infer_once(request, {index: array[start : start + step] for index, array in tensors.items()})
                for start in range(0, rows, step)
            ]
            outputs = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        if nbytes >= RELEASE_INPUTS_BYTES:
            self._infer_once(request, {self._input_index[n]: a for n, a in self._samples().items()})
        return outputs

    def _rows_per_inference(self, tensors: dict[int, ov.Tensor | np.ndarray], nbytes: int) -> int | None:
        """Rows per inference when a request must be split, else None (it runs whole)."""
        if not self.batchable or nbytes <= MAX_INFERENCE_INPUT_BYTES:
            return None
        arrays = list(tensors.values())
        if not all(isinstance(a, np.ndarray) and a.ndim for a in arrays) or len({a.shape[0] for a in arrays}) != 1:
            return None  # bf16 tensors, or inputs disagreeing on rows: OpenVINO judges the request whole
        rows = arrays[0].shape[0]
        step = max(self._min_rows_per_inference, rows * MAX_INFERENCE_INPUT_BYTES // nbytes)
        return step if step < rows else None

    def _infer_once(self, request: ov.InferRequest, tensors: dict[int, ov.Tensor | np.ndarray]) -> Tensors:
        request.infer(tensors, share_inputs=True)  # OpenVINO reads the arrays in place
        return {
            port.alias: _copy_output(request.get_output_tensor(index), port.precision)
            for index, port in enumerate(self._outputs)
        }


def _sample_dim(now: int, exported: int) -> int:
    """A dimension for a warm-up sample: the configured one if fixed, else the exported one, else 1."""
    if now != DYNAMIC:
        return now
    return exported if exported != DYNAMIC else 1


def _random_sample(rng: np.random.Generator, precision: str, shape: list[int]) -> np.ndarray:
    """Small values of any type: 0-2 for integers, so that index inputs stay in range."""
    info = dtypes.by_name(precision)
    if precision == "BF16":
        return dtypes.float_to_bf16_bits(rng.standard_normal(shape))
    if info.numpy.kind == "f":
        return rng.standard_normal(shape).astype(info.numpy)
    return rng.integers(0, 3, shape).astype(info.numpy)


def _same_values(batched: np.ndarray, alone: np.ndarray) -> bool:
    """Equal, up to the rounding a different batch size may bring to floating-point kernels."""
    if batched.shape != alone.shape:
        return False
    if batched.dtype.kind == "f":
        return bool(np.allclose(batched, alone, rtol=1e-3, atol=1e-5, equal_nan=True))
    return bool(np.array_equal(batched, alone))


def _tensor_name(port: ov.Output) -> str:
    names = port.get_names()
    return port.get_any_name() if names else port.get_node().get_friendly_name()


def _port(port: ov.Output, alias: str) -> _Port:
    type_name = port.get_element_type().get_type_name()
    precision = dtypes.BY_OV_TYPE.get(type_name)
    if precision is None:
        raise ConfigError(f"tensor {alias} has unsupported element type {type_name}")
    return _Port(alias, precision)


def _dims(partial_shape: ov.PartialShape) -> tuple[int, ...]:
    return tuple(dim.get_length() if dim.is_static else DYNAMIC for dim in partial_shape)


def _apply_shape_settings(model: ov.Model, config: ModelConfig, mapping: TensorMapping) -> None:
    """Reshape for `shape` / `batch_size`: fixed values become static dims, `auto` becomes dynamic."""
    new_shapes = {}
    for port in model.inputs:
        current = port.get_partial_shape()
        name = _tensor_name(port)
        if config.shape is not None:
            setting = next(
                (config.shape[key] for key in (mapping.input_alias(name), name, None) if key in config.shape), None
            )
            if setting is None:
                continue
            dims = [DYNAMIC] * current.rank.get_length() if setting == AUTO else list(setting)
        elif config.batch_size is not None and current.rank.is_static and current.rank.get_length() > 0:
            dims = _dims(current)
            dims = [DYNAMIC if config.batch_size == AUTO else config.batch_size, *dims[1:]]
        else:
            continue
        new_shapes[port] = ov.PartialShape(dims)
    if new_shapes:
        try:
            model.reshape(new_shapes)
        except RuntimeError as exc:
            raise FailedPrecondition(f"{RESHAPE_FAILED}: {plain_message(exc)}") from None


def _make_batch_dynamic(model: ov.Model) -> bool:
    """Let the compiled model take any number of rows, so requests can share an inference.

    Clients still see the configured shape: validation checks their batch size against it.
    """
    if any(
        port.get_partial_shape().rank.is_dynamic or port.get_partial_shape().rank.get_length() == 0
        for port in model.inputs
    ):
        return False
    shapes = {}
    for port in model.inputs:
        dims = list(_dims(port.get_partial_shape()))
        shapes[port] = ov.PartialShape([DYNAMIC, *dims[1:]])
    try:
        model.reshape(shapes)
    except RuntimeError as exc:
        log.info(
            "Model %s keeps a static batch dimension, requests run unbatched: %s",
            model.get_friendly_name(),
            plain_message(exc),
        )
        return False
    outputs_follow = all(
        port.get_partial_shape().rank.is_static
        and port.get_partial_shape().rank.get_length() > 0
        and port.get_partial_shape()[0].is_dynamic
        for port in model.outputs
    )
    return outputs_follow


def _signature(
    model: ov.Model,
    config: ModelConfig,
    inputs: list[_Port],
    outputs: list[_Port],
    exported: dict[str, tuple[int, ...]],
) -> ModelSignature:
    def auto_shape(alias: str) -> bool:
        shape = config.shape or {}
        return shape.get(alias, shape.get(None)) == AUTO

    def layout(alias: str, port: ov.Output) -> str:
        setting = config.layout or {}
        configured = next((setting[key] for key in (alias, _tensor_name(port), None) if key in setting), None)
        from_model = "".join(c for c in ov.layout_helpers.get_layout(port).to_string() if c.isalpha())
        return image_layout(configured, from_model, exported[alias])

    input_specs = {
        port.alias: TensorSpec(
            port.alias, port.precision.name, _dims(p.get_partial_shape()), auto_shape(port.alias), layout(port.alias, p)
        )
        for port, p in zip(inputs, model.inputs, strict=False)
    }
    return ModelSignature(
        inputs=input_specs,
        outputs={
            port.alias: TensorSpec(port.alias, port.precision.name, _dims(p.get_partial_shape()))
            for port, p in zip(outputs, model.outputs, strict=False)
        },
        auto_batch=config.batch_size == AUTO,
        shared_batch=_shares_batch_dimension(input_specs, exported),
        raw_b64=config.rest_b64 == REST_B64_RAW,
    )


def _shares_batch_dimension(inputs: dict[str, TensorSpec], exported: dict[str, tuple[int, ...]]) -> bool:
    """Whether every input's first dimension is one batch dimension: each input has one, and they are all
    dynamic or all the same size. A `shape: auto` input (all dynamic now) counts with its exported size,
    so that e.g. a per-channel scale [3] beside images [N,3,H,W] stays a separate input."""
    firsts = set()
    for name, spec in inputs.items():
        dims = exported[name] if spec.auto_shape else spec.shape
        if not dims:
            return False
        firsts.add(dims[0])
    return len(firsts) == 1


def _plugin_properties(config: ModelConfig) -> dict[str, Any]:
    return {key: value if isinstance(value, str) else str(value) for key, value in config.plugin_config.items()}


def _copy_output(tensor: ov.Tensor, precision: dtypes.Precision) -> np.ndarray:
    data = tensor.data
    if precision.name == "BF16":
        return np.frombuffer(bytes(tensor.bytes_data), dtype=np.uint16).reshape(tuple(tensor.shape))
    return np.array(data, dtype=precision.numpy, copy=True)


def _inference_error(signature: ModelSignature, exc: Exception) -> Exception:
    """OpenVINO rejects shapes a dynamic model cannot take; that is the seed's reshape failure."""
    if any(spec.auto_shape for spec in signature.inputs.values()):
        return FailedPrecondition(RESHAPE_FAILED)
    return InvalidArgument(f"Inference failed: {plain_message(exc)}")
