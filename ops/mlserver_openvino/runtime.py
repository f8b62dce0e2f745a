"""An OpenVINO inference runtime for MLServer, for the peer benchmark (ops/peer_bench.py): it serves the same IR
files as our server, the way our worker runs them.

model-settings.json: `"implementation": "mlserver_openvino.runtime.OpenVINORuntime"` (ops/ on PYTHONPATH) and
`"parameters": {"uri": "/abs/path/model.xml"}`. The model is compiled for CPU with OpenVINO's default properties
and `OPTIMAL_NUMBER_OF_INFER_REQUESTS` infer requests (as our worker does), and predict() awaits one of them
through an `AsyncInferQueue`, so concurrent predicts overlap on MLServer's event loop. Under adaptive batching
(`max_batch_size` > 1) the first dimension of every input is made dynamic, as our worker does when it batches,
so a request of several merged rows runs as one inference.
"""

from __future__ import annotations

import asyncio

import numpy as np
import openvino as ov
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OpenVINORuntime(MLModel):
    async def load(self) -> bool:
        core = ov.Core()
        model = core.read_model(self.settings.parameters.uri)
        if self.settings.max_batch_size > 1:
            model.reshape({port: batch_dynamic(port.get_partial_shape()) for port in model.inputs})
        self._compiled = core.compile_model(model, "CPU")
        self._output_names = [port.get_any_name() for port in self._compiled.outputs]
        jobs = self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self._queue = ov.AsyncInferQueue(self._compiled, jobs)
        self._queue.set_callback(self._done)
        self._idle = asyncio.Semaphore(jobs)  # start_async would block the event loop when every request is busy
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {request_input.name: NumpyCodec.decode_input(request_input) for request_input in payload.inputs}
        loop = asyncio.get_running_loop()
        outputs: asyncio.Future[list[np.ndarray]] = loop.create_future()
        async with self._idle:
            self._queue.start_async(inputs, (loop, outputs))
            arrays = await outputs
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, array) for name, array in zip(self._output_names, arrays, strict=True)
            ],
        )

    @staticmethod
    def _done(request: ov.InferRequest, target: tuple[asyncio.AbstractEventLoop, asyncio.Future]) -> None:
        """On an OpenVINO thread: copy the outputs out of the reusable infer request, hand them to the loop."""
        loop, future = target
        arrays = [request.get_output_tensor(index).data.copy() for index in range(len(request.model_outputs))]
        loop.call_soon_threadsafe(future.set_result, arrays)


def batch_dynamic(shape: ov.PartialShape) -> ov.PartialShape:
    dims = list(shape)
    return ov.PartialShape([ov.Dimension(-1), *dims[1:]]) if dims else shape
