"""The protocol-neutral inference request and result that both frontends translate to and from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Tensors = dict[str, np.ndarray]


@dataclass
class InferenceRequest:
    model: str
    version: int
    inputs: Tensors  # validated: the model's types and accepted shapes
    output_filter: list[str] | None = None  # None = every output
    deadline: float = 0.0  # time.time() by which the answer is due
    request_id: str = ""
    pinned: bool = True  # the client named this version; False: any current default will do
    any_batch: bool = False  # a job chunk: any number of samples, whatever the model's batch size
    queued_at: float = 0.0  # time.time() when the api queued it for its model version; 0: not known
    priority: int = 0  # 1 is the highest level; 0: the model's default level
    tenant: str = ""  # who sent it (the tenant of its bearer token); "": no tenant


@dataclass
class InferenceResult:
    version: int
    outputs: Tensors
    worker: str = ""  # which worker served it
    batch_size: int = 0  # rows of the OpenVINO inference that computed it (dynamic batching)
    queue_s: float = 0.0  # from publishing to the start of its inference
    infer_s: float = 0.0  # the inference itself
    precisions: dict[str, str] = field(default_factory=dict)  # output name -> precision name
    priority: int = 0  # the level it ran at (inference.priorities)
