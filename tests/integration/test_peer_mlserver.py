"""The pieces of `make bench-peer` without the benchmark: MLServer 1.7.1 (.venv-mlserver) serving our IR files
through our OpenVINO runtime (ops/mlserver_openvino/runtime.py), started and stopped by ops/peer_mlserver.py,
driven by the benchmarks' v2 load generator (ops/v2_load.py) and answering what raw OpenVINO answers — also for
several rows in one request, which adaptive batching makes of single ones.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
from bench_cases import ModelCase, digits_case, resnet_case
from bench_stats import measure_cell
from bench_v2 import V2_PYTHON, measure_v2
from peer_mlserver import MLSERVER, MLServer
from proc_cpu import descendants

REPO = Path(__file__).resolve().parents[2]
TRITON_CLIENT = REPO / "tests" / "clients" / "triton_grpc_client.py"

pytestmark = pytest.mark.skipif(not MLSERVER.exists(), reason=f"{MLSERVER} is missing: run `make mlserver`")


@pytest.fixture(scope="module")
def cases() -> dict[str, ModelCase]:
    return {"digits": digits_case(), "resnet": resnet_case()}


@pytest.fixture(scope="module")
def mlserver(cases: dict[str, ModelCase], tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    """MLServer with adaptive batching on, as `make bench-peer` runs it."""
    with MLServer(list(cases.values()), True, tmp_path_factory.mktemp("mlserver")) as server:
        yield server
    assert server.process is not None and server.process.poll() is not None
    assert not descendants(server.process.pid)


def raw_outputs(case: ModelCase, rows: np.ndarray) -> np.ndarray:
    """OpenVINO in this process, one row per inference (resnet's IR has a static batch of 1)."""
    compiled = ov.Core().compile_model(str(case.model_file()), "CPU")
    return np.concatenate([compiled(rows[i : i + 1])[0] for i in range(len(rows))])


def served_outputs(server: MLServer, case: ModelCase, rows: np.ndarray, directory: Path) -> np.ndarray:
    """One request carrying every row, through the official Triton gRPC client."""
    assert V2_PYTHON.exists(), f"{V2_PYTHON} is missing: `make test` installs it (`make triton-client`)"
    inputs = directory / f"{case.name}.npz"
    np.savez(inputs, **{case.input_name: rows})
    command = json.dumps({"op": "infer", "model": case.name, "inputs": str(inputs), "outputs": [case.output_name]})
    run = subprocess.run(
        [str(V2_PYTHON), str(TRITON_CLIENT), server.grpc_address, command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    [answer] = json.loads(run.stdout)
    assert "error" not in answer, answer
    output = answer["outputs"][case.output_name]
    return np.array(output["values"], dtype=np.float32).reshape(output["shape"])


def test_the_v2_load_generator_drives_mlserver(mlserver: MLServer, cases: dict[str, ModelCase], tmp_path: Path) -> None:
    case = cases["digits"]
    measure = functools.partial(measure_v2, mlserver.grpc_address, case, "grpc", case.samples_file(tmp_path))
    stats = measure_cell(measure, 4, 1.0, 2.0, mlserver.roles())
    outcome = f"{stats.requests} requests, errors {dict(stats.errors)}, CPU ms/req {stats.cpu_ms}"
    assert stats.error_count == 0 and stats.requests > 0, outcome
    assert stats.cpu_ms.keys() == {"server", "client"}, outcome
    assert stats.cpu_ms["server"] > 0 and stats.cpu_ms["client"] > 0, outcome


@pytest.mark.parametrize(("model", "rows"), [("digits", 1), ("digits", 5), ("resnet", 2)])
def test_mlserver_answers_what_raw_openvino_answers(
    mlserver: MLServer, cases: dict[str, ModelCase], model: str, rows: int, tmp_path: Path
) -> None:
    case = cases[model]
    generator = np.random.default_rng(rows)
    if model == "digits":
        inputs = np.concatenate(case.samples[:rows])
    else:
        inputs = generator.uniform(0, 255, size=(rows, 3, 224, 224)).astype(np.float32)
    expected = raw_outputs(case, inputs)
    served = served_outputs(mlserver, case, inputs, tmp_path)
    assert served.shape == expected.shape
    np.testing.assert_allclose(served, expected, rtol=1e-3, atol=1e-4)
