"""The one place both frontends call: resolve the model version, validate, dispatch, await."""

from __future__ import annotations

import time
from dataclasses import dataclass

from inference.errors import VERSION_NOT_FOUND, InvalidArgument, NotFound
from inference.request import InferenceRequest, InferenceResult
from inference.signature import ModelSignature
from inference.validation import RequestTensor, validate_inputs
from tasks.dispatcher import Dispatcher
from tasks.registry import RegistryView, VersionView


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error_code: str
    error_message: str


class DataPlane:
    def __init__(self, registry: RegistryView, dispatcher: Dispatcher, default_timeout_s: float) -> None:
        self._registry = registry
        self._dispatcher = dispatcher
        self._default_timeout_s = default_timeout_s

    def model_status(self, name: str, version: int | None) -> list[VersionStatus]:
        """Every version's status, or just the requested one (NOT_FOUND if it is unknown)."""
        versions = self._registry.versions(name)
        if version:
            view = versions.get(version)
            if view is None:
                raise NotFound(VERSION_NOT_FOUND)
            return [_status(version, view)]
        return [_status(v, view) for v, view in sorted(versions.items())]

    def model_metadata(self, name: str, version: int | None) -> tuple[int, ModelSignature]:
        target = self._registry.resolve(name, version)
        return target.version, target.signature

    def predict(
        self,
        name: str,
        version: int | None,
        inputs: dict[str, RequestTensor],
        output_filter: list[str] | None = None,
        timeout_s: float | None = None,
    ) -> InferenceResult:
        target = self._registry.resolve(name, version)
        arrays = validate_inputs(target.signature, inputs)
        if output_filter:
            unknown = [o for o in output_filter if o not in target.signature.outputs]
            if unknown:
                raise InvalidArgument(f"Invalid output name - not found in model outputs: {', '.join(unknown)}")
        deadline = time.time() + (timeout_s if timeout_s is not None else self._default_timeout_s)
        request = InferenceRequest(name, target.version, arrays, list(output_filter or []) or None, deadline)
        result = self._dispatcher.infer(target, request)
        result.precisions = {name: target.signature.outputs[name].precision for name in result.outputs}
        return result


def _status(version: int, view: VersionView) -> VersionStatus:
    return VersionStatus(version, view.state, view.error_code, view.error_message)
