"""A model's versioned directory layout and the version policy that picks what to serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference.model_config import ConfigError


def select_versions(available: list[int], policy: dict[str, Any]) -> list[int]:
    """Apply a model_version_policy (all / latest N / specific) to the versions on disk."""
    kind, body = next(iter(policy.items()))
    if kind == "all":
        return sorted(available)
    if kind == "latest":
        return sorted(available)[-body["num_versions"] :]
    return sorted(set(available) & set(body["versions"]))


def find_model_file(version_dir: Path) -> Path:
    """The model inside a version directory: an OpenVINO IR (.xml with its .bin) or an ONNX file."""
    for xml in sorted(version_dir.glob("*.xml")):
        if xml.with_suffix(".bin").is_file():
            return xml
    onnx = sorted(version_dir.glob("*.onnx"))
    if onnx:
        return onnx[0]
    raise ConfigError(f"no model (*.xml + *.bin or *.onnx) in {version_dir}")
