"""What a model version accepts and returns, in a form that travels between processes as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

DYNAMIC = -1
MAX_ELEMENTS = 1 << 28  # 256 Mi elements per tensor: far above any real request, far below exhausting memory
MAX_RANK = 32  # dimensions per tensor: numpy's own limit (32 before numpy 2, 64 since), far above any model's


def format_shape(shape: tuple[int, ...] | list[int]) -> str:
    """The seed's shape notation: (1,3,224,224)."""
    return "(" + ",".join(str(d) for d in shape) + ")"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    precision: str
    shape: tuple[int, ...]  # DYNAMIC for a dimension of any size
    auto_shape: bool = False  # the worker reshapes the model to whatever shape arrives
    layout: str = ""  # an input that takes encoded images: NHWC or NCHW (inference.layouts); "" for none

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "precision": self.precision,
            "shape": list(self.shape),
            "auto_shape": self.auto_shape,
            "layout": self.layout,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TensorSpec:
        return TensorSpec(
            data["name"], data["precision"], tuple(data["shape"]), data.get("auto_shape", False), data.get("layout", "")
        )


@dataclass(frozen=True)
class ModelSignature:
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)
    auto_batch: bool = False  # batch_size "auto": any batch size is served
    # Every input's first dimension is one batch dimension (rows), so a request's inputs must agree on it.
    # False for models whose inputs do not share one (e.g. images [N,3,H,W] beside a scale [3]).
    shared_batch: bool = True
    # TF Serving REST {"b64": ...} on an image input is an encoded image; True: the raw bytes of its element
    # type, as on every other input (the model's `rest_b64` setting "raw")
    raw_b64: bool = False

    def with_any_batch(self) -> ModelSignature:
        """The same signature accepting any number of samples (jobs are split along that dimension)."""
        return replace(self, auto_batch=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_dict() for spec in self.inputs.values()],
            "outputs": [spec.to_dict() for spec in self.outputs.values()],
            "auto_batch": self.auto_batch,
            "shared_batch": self.shared_batch,
            "raw_b64": self.raw_b64,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelSignature:
        def specs(items: list[dict[str, Any]]) -> dict[str, TensorSpec]:
            return {item["name"]: TensorSpec.from_dict(item) for item in items}

        return ModelSignature(
            specs(data["inputs"]),
            specs(data["outputs"]),
            data.get("auto_batch", False),
            data.get("shared_batch", True),
            data.get("raw_b64", False),
        )
