"""What a model version accepts and returns, in a form that travels between processes as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

DYNAMIC = -1


def format_shape(shape: tuple[int, ...] | list[int]) -> str:
    """The seed's shape notation: (1,3,224,224)."""
    return "(" + ",".join(str(d) for d in shape) + ")"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    precision: str
    shape: tuple[int, ...]  # DYNAMIC for a dimension of any size
    auto_shape: bool = False  # the worker reshapes the model to whatever shape arrives

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "precision": self.precision,
            "shape": list(self.shape),
            "auto_shape": self.auto_shape,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TensorSpec:
        return TensorSpec(data["name"], data["precision"], tuple(data["shape"]), data.get("auto_shape", False))


@dataclass(frozen=True)
class ModelSignature:
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)
    auto_batch: bool = False  # batch_size "auto": any batch size is served
    # Every input's first dimension is one batch dimension (rows), so a request's inputs must agree on it.
    # False for models whose inputs do not share one (e.g. images [N,3,H,W] beside a scale [3]).
    shared_batch: bool = True

    def with_any_batch(self) -> ModelSignature:
        """The same signature accepting any number of samples (jobs are split along that dimension)."""
        return replace(self, auto_batch=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_dict() for spec in self.inputs.values()],
            "outputs": [spec.to_dict() for spec in self.outputs.values()],
            "auto_batch": self.auto_batch,
            "shared_batch": self.shared_batch,
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
        )
