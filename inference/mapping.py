"""mapping_config.json: client-facing aliases for a model's tensor names."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from inference.model_config import ConfigError


@dataclass(frozen=True)
class TensorMapping:
    inputs: dict[str, str] = field(default_factory=dict)  # model tensor name -> alias
    outputs: dict[str, str] = field(default_factory=dict)

    def input_alias(self, name: str) -> str:
        return self.inputs.get(name, name)

    def output_alias(self, name: str) -> str:
        return self.outputs.get(name, name)


def load_mapping(version_dir: Path) -> TensorMapping:
    path = version_dir / "mapping_config.json"
    if not path.is_file():
        return TensorMapping()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"invalid {path}: {exc}") from None
    if not isinstance(document, dict) or set(document) - {"inputs", "outputs"}:
        raise ConfigError(f"invalid {path}: expected an object with inputs and/or outputs")
    sections = {key: document.get(key, {}) for key in ("inputs", "outputs")}
    for key, section in sections.items():
        if not isinstance(section, dict) or not all(isinstance(v, str) and v for v in section.values()):
            raise ConfigError(f"invalid {path}: {key} must map tensor names to non-empty alias strings")
        if len(set(section.values())) != len(section):  # two tensors behind one name: one would be unreachable
            raise ConfigError(f"invalid {path}: {key} gives several tensors the same alias")
    return TensorMapping(sections["inputs"], sections["outputs"])
