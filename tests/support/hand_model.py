"""A stand-in for a compiled model version whose inferences the test ends by hand, and DynamicBatchers over it
(tests of inference.batcher's scheduling): nothing depends on a device's timing."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from inference.batcher import DynamicBatcher

WAIT_S = 5.0  # the longest any step may take; a correct batcher takes milliseconds
Tensors = dict[str, np.ndarray]


@dataclass
class Inference:
    """One inference the batcher handed to the model, waiting for the test to end it."""

    inputs: Tensors
    future: Future[Tensors]

    @property
    def rows(self) -> int:
        return int(self.inputs["x"].shape[0])

    def complete(self) -> None:
        """Answer with y = 10 x, row by row: each request's rows can be told apart in the answer."""
        self.future.set_result({"y": self.inputs["x"] * 10})

    def fail(self, message: str = "the device failed") -> None:
        self.future.set_exception(RuntimeError(message))


class HandRunModel:
    """Stands in for a compiled model version (inference.model.CompiledVersion): records each inference
    and leaves it running until the test ends it."""

    name = "hand"
    version = 1

    def __init__(self, nireq: int = 1, batchable: bool = True) -> None:
        self.nireq = nireq
        self.batchable = batchable
        self.closed = threading.Event()
        self.every: list[Inference] = []  # every inference started, ended or not
        self._started: queue.Queue[Inference] = queue.Queue()  # those the test has not taken yet

    def infer_async(self, inputs: Tensors) -> Future[Tensors]:
        inference = Inference(inputs, Future())
        self.every.append(inference)
        self._started.put(inference)
        return inference.future

    def close(self) -> None:
        self.closed.set()

    def next_inference(self, wait_s: float = WAIT_S) -> Inference:
        """The next inference started, waiting up to `wait_s` (queue.Empty if none)."""
        return self._started.get(timeout=wait_s)

    def complete_started(self, wait_s: float = 0.05) -> None:
        """Complete the inferences started and not taken yet, waiting up to `wait_s` for one."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._started.get(timeout=wait_s).complete()

    def complete_left(self) -> None:
        """Complete every inference not ended yet, taken by the test or not."""
        for inference in list(self.every):
            if not inference.future.done():
                inference.complete()

    def nothing_started(self) -> bool:
        return self._started.empty()

    def run_to_the_end(self, futures: list[Future]) -> None:
        """Complete every inference, those the batcher starts meanwhile included, until every future is done."""
        deadline = time.monotonic() + WAIT_S
        while not all(future.done() for future in futures):
            assert time.monotonic() < deadline, "requests left unanswered"
            self.complete_left()
            time.sleep(0.01)


Build = Callable[..., tuple[DynamicBatcher, HandRunModel]]


@contextlib.contextmanager
def hand_batchers(max_batch_size: int, nireq: int) -> Iterator[Build]:
    """Yields build(max_batch_size, nireq, delay_s=30, reserved=1) -> a batcher over a new HandRunModel (the
    arguments default to these); at exit every batcher built is closed, its inferences ended."""
    built: list[tuple[DynamicBatcher, HandRunModel]] = []

    def build(
        max_batch_size: int = max_batch_size, nireq: int = nireq, delay_s: float = 30.0, reserved: int = 1
    ) -> tuple[DynamicBatcher, HandRunModel]:
        model = HandRunModel(nireq)
        batcher = DynamicBatcher(model, max_batch_size, delay_s, reserved=reserved)  # type: ignore[arg-type]
        built.append((batcher, model))
        return batcher, model

    try:
        yield build
    finally:
        for batcher, model in built:
            closer = threading.Thread(target=batcher.close)
            closer.start()
            while closer.is_alive():
                model.complete_left()
                closer.join(0.02)
