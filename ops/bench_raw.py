"""OpenVINO alone, in this process: the ceiling a served model is compared with."""

from __future__ import annotations

import itertools
import time

import openvino as ov
from bench_cases import ModelCase
from bench_stats import Recorder, Stats, Window


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
