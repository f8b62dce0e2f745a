"""DynamicBatcher on real compiled OpenVINO models: each request gets exactly its own answer, by
construction — whatever its batch-mates send, and even when validation was skipped (the batcher is
fed directly here)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from inference.batcher import BatchResult, DynamicBatcher
from inference.errors import InvalidArgument
from inference.model import CompiledVersion
from inference.model_config import ModelConfig
from inference.request import Tensors

try:
    import openvino.opset13 as ops
except ImportError:  # older OpenVINO releases only ship the runtime namespace
    from openvino.runtime import opset13 as ops


def _save(model: ov.Model, base: Path) -> Path:
    ov.save_model(model, str(base / "1" / "model.xml"))
    return base


def _batcher(base_path: Path, name: str, **settings: object) -> DynamicBatcher:
    config = ModelConfig(name, str(base_path), nireq=1, max_batch_size=64, max_queue_delay_ms=5000, **settings)
    return DynamicBatcher(CompiledVersion(ov.Core(), config, 1, base_path / "1"), 64, 5.0)


@pytest.fixture
def open_batchers() -> Iterator[list[DynamicBatcher]]:
    started: list[DynamicBatcher] = []
    yield started
    for batcher in started:
        batcher.close()


@pytest.fixture
def batcher_for(models_dir: Path, tmp_path: Path, open_batchers: list[DynamicBatcher]):
    """A batcher (one infer request, so that announced requests meet in one inference) for an example
    model by name, or for a small model built here."""

    def build(name: str, **settings: object) -> DynamicBatcher:
        base = models_dir / name if (models_dir / name).is_dir() else _save(SMALL_MODELS[name](), tmp_path / name)
        batcher = _batcher(base, name, **settings)
        open_batchers.append(batcher)
        return batcher

    return build


def _doubled_rows() -> ov.Model:
    """y = concat(x, x) along the rows: twice as many output rows as input rows (not per row)."""
    x = ops.parameter([-1, 2], ov.Type.f32, name="x")
    y = ops.concat([x, x], 0)
    y.output(0).get_tensor().set_names({"y"})
    return ov.Model([y], [x], "doubled")


def _first_two_rows() -> ov.Model:
    """y = x[:2]: per row for one or two rows (what the load-time check tries), not beyond."""
    x = ops.parameter([-1, 2], ov.Type.f32, name="x")
    y = ops.slice(x, np.array([0]), np.array([2]), np.array([1]), np.array([0]))
    y.output(0).get_tensor().set_names({"y"})
    return ov.Model([y], [x], "first_two")


def _scaled() -> ov.Model:
    """x [-1,2] times scale [2]: the inputs share no batch dimension."""
    x = ops.parameter([-1, 2], ov.Type.f32, name="x")
    scale = ops.parameter([2], ov.Type.f32, name="scale")
    y = ops.multiply(x, scale)
    y.output(0).get_tensor().set_names({"y"})
    return ov.Model([y], [x, scale], "scaled")


def _normalized() -> ov.Model:
    """A vector [3] divided by its sum: the first dimension is not a batch dimension."""
    x = ops.parameter([3], ov.Type.f32, name="x")
    y = ops.divide(x, ops.reduce_sum(x, ops.constant(np.array([0])), keep_dims=True))
    y.output(0).get_tensor().set_names({"y"})
    return ov.Model([y], [x], "normalized")


def _tempered() -> ov.Model:
    """data [1,4] times a per-request temperature [1]: both have a first dimension of 1, but batched the
    temperatures would broadcast across every row."""
    data = ops.parameter([1, 4], ov.Type.f32, name="data")
    temperature = ops.parameter([1], ov.Type.f32, name="temperature")
    y = ops.multiply(data, temperature)
    y.output(0).get_tensor().set_names({"y"})
    return ov.Model([y], [data, temperature], "tempered")


SMALL_MODELS = {
    "doubled": _doubled_rows,
    "first_two": _first_two_rows,
    "scaled": _scaled,
    "normalized": _normalized,
    "tempered": _tempered,
}


def _together(batcher: DynamicBatcher, requests: list[Tensors]) -> list[Future[BatchResult]]:
    """Submit the requests as one announced group: the batcher runs what it can of them in one inference."""
    with batcher.incoming(len(requests)) as arrivals:
        return [batcher.submit(inputs, arrivals) for inputs in requests]


def _pair(rows_a: int, rows_b: int, seed: int) -> Tensors:
    rng = np.random.default_rng(seed)
    return {"a": rng.random((rows_a, 2), np.float32), "b": rng.random((rows_b, 2), np.float32) + 1000}


def test_inputs_disagreeing_on_rows_fail_alone_and_leak_nothing(batcher_for) -> None:
    """The attack of issue 10: `a` with 1 row, `b` with 0 rows, beside honest requests of 1 row each."""
    multi = batcher_for("multi")
    honest = [_pair(1, 1, seed) for seed in range(12)]
    attacker = _pair(1, 0, 99)
    futures = _together(multi, [*honest[:6], attacker, *honest[6:]])
    with pytest.raises(InvalidArgument, match="same batch size"):
        futures[6].result(timeout=30)
    for inputs, future in zip(honest, futures[:6] + futures[7:], strict=True):
        result = future.result(timeout=30)
        np.testing.assert_array_equal(result.outputs["sum"], inputs["a"] + inputs["b"])
        np.testing.assert_array_equal(result.outputs["product"], inputs["a"] * inputs["b"])
    assert result.batch_rows == 12


def test_shape_auto_models_refuse_disagreeing_rows_too(batcher_for) -> None:
    """With `shape: auto` OpenVINO broadcasts `a` [1,2] with `b` [0,2]; batched, `b` would be other
    clients' rows."""
    multi = batcher_for("multi", shape={None: "auto"})
    assert multi.compiled.batchable and multi.compiled.signature.shared_batch
    honest = [_pair(1, 1, seed) for seed in range(4)]
    futures = _together(multi, [*honest, _pair(1, 0, 99)])
    with pytest.raises(InvalidArgument, match="same batch size"):
        futures[-1].result(timeout=30)
    for inputs, future in zip(honest, futures, strict=False):
        np.testing.assert_array_equal(future.result(timeout=30).outputs["sum"], inputs["a"] + inputs["b"])


def test_zero_and_several_row_requests_get_their_own_rows(batcher_for) -> None:
    multi = batcher_for("multi")
    requests = [_pair(rows, rows, seed) for seed, rows in enumerate([2, 0, 1, 3, 0, 1])]
    for inputs, future in zip(requests, _together(multi, requests), strict=True):
        result = future.result(timeout=30)
        assert result.outputs["sum"].shape == inputs["a"].shape
        np.testing.assert_array_equal(result.outputs["sum"], inputs["a"] + inputs["b"])
        np.testing.assert_array_equal(result.outputs["product"], inputs["a"] * inputs["b"])
    assert result.batch_rows == 7


def test_mapped_names_batch_and_split_by_their_aliases(batcher_for) -> None:
    mapped = batcher_for("mapped")
    requests = [{"in": np.full((rows, 3), seed, np.float32)} for seed, rows in enumerate([1, 2, 1])]
    for inputs, future in zip(requests, _together(mapped, requests), strict=True):
        np.testing.assert_array_equal(future.result(timeout=30).outputs["out"], inputs["in"] * 3)


def test_outputs_that_are_not_per_row_are_computed_alone(batcher_for) -> None:
    """A 5-row batch gives 2 output rows: splitting them would hand out other requests' rows. The
    requests run again one by one, and the version stops batching."""
    first_two = batcher_for("first_two")
    assert first_two.compiled.batchable, "one and two rows look per row to the load-time check"
    requests = [{"x": np.full((rows, 2), seed, np.float32)} for seed, rows in enumerate([1, 2, 1, 1])]
    for inputs, future in zip(requests, _together(first_two, requests), strict=True):
        result = future.result(timeout=30)
        np.testing.assert_array_equal(result.outputs["y"], inputs["x"][:2])
        assert result.batch_rows == inputs["x"].shape[0]
    assert first_two.max_rows == 1, "a model whose outputs are not per row must stop batching"


def test_a_model_whose_inputs_share_no_batch_dimension_runs_requests_alone(batcher_for) -> None:
    scaled = batcher_for("scaled")
    assert not scaled.compiled.batchable
    requests = [
        {"x": np.full((rows, 2), 1 + seed, np.float32), "scale": np.array([2, 3], np.float32)}
        for seed, rows in enumerate([1, 2, 1])
    ]
    for inputs, future in zip(requests, _together(scaled, requests), strict=True):
        np.testing.assert_array_equal(future.result(timeout=30).outputs["y"], inputs["x"] * inputs["scale"])


def test_a_model_whose_rows_are_not_independent_runs_requests_alone(batcher_for) -> None:
    """Its first dimension looks like a batch dimension, but rows computed together differ from rows
    computed alone: the load-time check keeps it from batching."""
    normalized = batcher_for("normalized")
    assert not normalized.compiled.batchable
    requests = [{"x": np.array([1, 2, 1 + seed], np.float32)} for seed in range(4)]
    for inputs, future in zip(requests, _together(normalized, requests), strict=True):
        np.testing.assert_allclose(future.result(timeout=30).outputs["y"], inputs["x"] / inputs["x"].sum(), rtol=1e-6)


def test_outputs_with_more_rows_than_inputs_are_seen_at_load(batcher_for) -> None:
    doubled = batcher_for("doubled")
    assert not doubled.compiled.batchable
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(_together(doubled, [{"x": x}])[0].result(timeout=30).outputs["y"], np.vstack([x, x]))


def test_per_request_parameters_beside_data_are_never_batched(batcher_for) -> None:
    tempered = batcher_for("tempered")
    assert not tempered.compiled.batchable
    requests = [
        {"data": np.full((1, 4), 1 + seed, np.float32), "temperature": np.array([seed], np.float32)}
        for seed in range(4)
    ]
    for inputs, future in zip(requests, _together(tempered, requests), strict=True):
        np.testing.assert_array_equal(future.result(timeout=30).outputs["y"], inputs["data"] * inputs["temperature"])
