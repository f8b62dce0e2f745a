"""Model configuration: config.json and the single-model flags, each key declared once with its default."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from typing import Any

from inference.layouts import LayoutParseError, LayoutSetting, parse_layout_setting
from inference.options import declared_options, json_value, option
from inference.priorities import DEFAULT_PRIORITY, HIGHEST_PRIORITY, PRIORITY_LEVELS
from inference.shapes import ShapeParseError, ShapeSetting, parse_batch_size, parse_shape_setting

DEFAULT_DEVICE = "CPU"
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_QUEUE_DELAY_MS = 1.0
DEFAULT_MAX_QUEUE_SIZE = 1024
MAX_IDLE_UNLOAD_S = 31_536_000  # a year: only a bound against typing mistakes
REST_B64_IMAGE, REST_B64_RAW = "image", "raw"
STORAGE_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)  # s3://bucket/prefix: (scheme, rest)


def _latest_version() -> dict[str, Any]:
    return {"latest": {"num_versions": 1}}


class ConfigError(ValueError):
    """An invalid config.json or model setting."""


@dataclass(frozen=True)
class ModelConfig:
    """One model's settings: a config.json `config` object, or the single-model flags (same names)."""

    name: str = option(help="name of the model (single model mode)", flag="model_name")
    base_path: str = option(
        help="path to the model's versioned directories (their parent, not a version directory; single model mode)",
        flag="model_path",
    )
    batch_size: int | str | None = option(None, "model batch size: an integer or 'auto'", default_text="model's own")
    shape: ShapeSetting | None = option(
        None, "model shape: 'auto', '(1,3,224,224)' or JSON per input", default_text="model's own"
    )
    model_version_policy: dict[str, Any] = option(
        help='e.g. {"all": {}} or {"specific": {"versions": [1, 3]}}',
        default_factory=_latest_version,
        convert=json_value,
    )
    nireq: int = option(0, "parallel infer requests per model version", type=int, default_text="OpenVINO's optimal")
    target_device: str = option(DEFAULT_DEVICE, "OpenVINO device for the model")
    plugin_config: dict[str, Any] = option(
        help='JSON object of OpenVINO properties, e.g. {"PERFORMANCE_HINT": "THROUGHPUT"}',
        default_factory=dict,
        convert=json_value,
    )
    max_batch_size: int = option(DEFAULT_MAX_BATCH_SIZE, "dynamic batching: rows per inference; 1 = none", type=int)
    max_queue_delay_ms: float = option(
        DEFAULT_MAX_QUEUE_DELAY_MS, "dynamic batching: longest wait for batch-mates", type=float
    )
    max_queue_size: int = option(
        DEFAULT_MAX_QUEUE_SIZE, "requests that may wait per model in an api process before 429", type=int
    )
    default_priority: int = option(
        DEFAULT_PRIORITY,
        f"priority level of a request that asks for none: {HIGHEST_PRIORITY} (highest) to {PRIORITY_LEVELS}",
        type=int,
    )
    reserved_infer_requests: int = option(
        1,
        "while levels or tenants share a version: infer requests one of them already running an inference leaves "
        "free for the others (of its level or higher); 0 = none",
        type=int,
    )
    layout: LayoutSetting | None = option(
        None,
        "layout of the model's image inputs: NHWC, NCHW, or JSON per input",
        default_text="model's own, else guessed from the shape",
    )
    rest_b64: str = option(
        REST_B64_IMAGE, 'REST {"b64": ...} on an image input: "image" (JPEG/PNG) or "raw" (the bytes of its type)'
    )
    idle_unload_s: float = option(
        0.0,
        "unload a version no request used for this many seconds (the next request loads it again); 0 = never",
        type=float,
    )

    def to_dict(self) -> dict[str, Any]:
        """The config.json form; equal dicts mean equal configurations."""
        document = {key: getattr(self, key) for key in CONFIG_KEYS}
        for key in ("shape", "layout"):
            setting = getattr(self, key)
            if setting is not None:
                document[key] = {str(k) if k is not None else "": v for k, v in setting.items()}
        return document


CONFIG_KEYS = tuple(declared.field for declared in declared_options(ModelConfig))
# the keys of one model besides its name and path: their flags are refused next to --config_path
PER_MODEL_KEYS = tuple(key for key in CONFIG_KEYS if key not in ("name", "base_path"))


@dataclass(frozen=True)
class ModelSettings:
    """The models a server is configured with: a config.json, or one model from the flags."""

    config_path: str | None = option(
        None, "multi-model JSON configuration file (a relative base_path in it is relative to its directory)"
    )
    models: tuple[ModelConfig, ...] = ()

    def devices(self) -> list[str]:
        """Target devices in use, in order of first appearance."""
        return list(dict.fromkeys(model.target_device for model in self.models))

    def models_for(self, device: str) -> list[ModelConfig]:
        return [model for model in self.models if model.target_device == device]


def load_config_file(path: str) -> list[ModelConfig]:
    """Read and validate a multi-model config.json; raises ConfigError with the reason.

    A relative local base_path is resolved against the file's directory, as OVMS does: the same file means
    the same models whatever the working directory of the process that reads it (an api, each worker).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.path.abspath(path)}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {os.path.abspath(path)} is not valid JSON: {exc}") from None
    directory = os.path.dirname(os.path.abspath(path))
    return [replace(model, base_path=_beside(directory, model.base_path)) for model in models_from_document(document)]


def _beside(directory: str, base_path: str) -> str:
    """A local base_path relative to `directory` made absolute; an absolute or remote one as it is."""
    if STORAGE_SCHEME.fullmatch(base_path) or os.path.isabs(base_path):
        return base_path
    return os.path.normpath(os.path.join(directory, base_path))


def models_from_document(document: Any) -> list[ModelConfig]:
    if not isinstance(document, dict) or set(document) - {"model_config_list"}:
        raise ConfigError("config must be an object with only the key model_config_list")
    entries = document.get("model_config_list", [])
    if not isinstance(entries, list):
        raise ConfigError("model_config_list must be a list")
    models = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"config"}:
            raise ConfigError('each model_config_list entry must be {"config": {...}}')
        models.append(model_from_dict(entry["config"]))
    names = [model.name for model in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"duplicate model names in config: {', '.join(duplicates)}")
    return models


def model_from_dict(raw: Any) -> ModelConfig:
    """Validate one model's settings (a config.json `config` object or the single-model flags)."""
    if not isinstance(raw, dict):
        raise ConfigError("model config must be an object")
    unknown = set(raw).difference(CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"unknown model config keys: {', '.join(sorted(unknown))}")
    for key in ("name", "base_path"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"model config needs a non-empty string {key}")
    if ".." in raw["base_path"].replace("\\", "/").split("/"):  # as OVMS: "Path escape with .. is forbidden"
        raise ConfigError(f"model {raw['name']}: base_path {raw['base_path']} must not contain '..' segments")
    try:
        shape = parse_shape_setting(raw["shape"]) if raw.get("shape") is not None else None
        batch_size = None if shape is not None else parse_batch_size(raw.get("batch_size"))
        layout = parse_layout_setting(raw["layout"]) if raw.get("layout") is not None else None
    except (ShapeParseError, LayoutParseError) as exc:
        raise ConfigError(f"model {raw['name']}: {exc}") from None
    return ModelConfig(
        name=raw["name"],
        base_path=raw["base_path"],
        batch_size=batch_size,
        shape=shape,
        model_version_policy=_version_policy(raw.get("model_version_policy")),
        nireq=_non_negative_int(raw, "nireq"),
        target_device=_device(raw.get("target_device")),
        plugin_config=_plugin_config(raw.get("plugin_config")),
        max_batch_size=_positive_int(raw, "max_batch_size", DEFAULT_MAX_BATCH_SIZE),
        max_queue_delay_ms=_delay(raw.get("max_queue_delay_ms", DEFAULT_MAX_QUEUE_DELAY_MS)),
        max_queue_size=_positive_int(raw, "max_queue_size", DEFAULT_MAX_QUEUE_SIZE),
        default_priority=_priority(raw.get("default_priority", DEFAULT_PRIORITY)),
        reserved_infer_requests=_non_negative_int(raw, "reserved_infer_requests", 1),
        layout=layout,
        rest_b64=_rest_b64(raw.get("rest_b64", REST_B64_IMAGE)),
        idle_unload_s=_idle_unload_s(raw.get("idle_unload_s", 0)),
    )


def _version_policy(policy: Any) -> dict[str, Any]:
    if policy is None:
        return _latest_version()
    valid = isinstance(policy, dict) and len(policy) == 1
    kind, body = next(iter(policy.items())) if valid else (None, None)
    if kind == "all" and body == {}:
        return policy
    if kind == "latest" and isinstance(body, dict) and set(body) <= {"num_versions"}:
        count = body.get("num_versions", 1)
        if isinstance(count, int) and count > 0:
            return {"latest": {"num_versions": count}}
    if kind == "specific" and isinstance(body, dict) and set(body) == {"versions"}:
        versions = body["versions"]
        if isinstance(versions, list) and versions and all(isinstance(v, int) and v > 0 for v in versions):
            return policy
    raise ConfigError(f"invalid model_version_policy: {json.dumps(policy)}")


def _non_negative_int(raw: dict[str, Any], key: str, default: int = 0) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key} must be a non-negative integer")
    return value


def _positive_int(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer")
    return value


def _priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not HIGHEST_PRIORITY <= value <= PRIORITY_LEVELS:
        raise ConfigError(
            f"default_priority must be a priority level from {HIGHEST_PRIORITY} (highest) to {PRIORITY_LEVELS} "
            f"(lowest): {json.dumps(value)[:40]}"
        )
    return value


def _delay(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10_000:
        raise ConfigError("max_queue_delay_ms must be a number of milliseconds from 0 to 10000")
    return float(value)


def _idle_unload_s(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_IDLE_UNLOAD_S:
        raise ConfigError(f"idle_unload_s must be a number of seconds from 0 (never) to {MAX_IDLE_UNLOAD_S}")
    return float(value)


def _device(value: Any) -> str:
    if value is None:
        return DEFAULT_DEVICE
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("target_device must be a non-empty string")
    return value.strip()


def _rest_b64(value: Any) -> str:
    if value not in (REST_B64_IMAGE, REST_B64_RAW):
        raise ConfigError(f'rest_b64 must be "{REST_B64_IMAGE}" or "{REST_B64_RAW}"')
    return value


def _plugin_config(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("plugin_config must be a JSON object")
    return value


class ConfiguredModels:
    """The model names a server is configured with, following config.json as it changes.

    None when the server has no model configuration (an `ovms api` started without one).
    """

    def __init__(self, settings: ModelSettings) -> None:
        self._path = settings.config_path
        self._names: list[str] | None = [m.name for m in settings.models] if settings.models else None
        self._stamp: tuple[int, int] | None = None

    def __call__(self) -> list[str] | None:
        if self._path:
            try:
                stat = os.stat(self._path)
                stamp = (stat.st_mtime_ns, stat.st_size)
                if stamp != self._stamp:
                    self._names = [model.name for model in load_config_file(self._path)]
                    self._stamp = stamp
            except (OSError, ConfigError):
                pass  # an unreadable or invalid file changes nothing, as for the workers
        return self._names
