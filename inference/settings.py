"""Server and model settings from the command line (the seed's flags) and config.json."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from inference.shapes import ShapeParseError, ShapeSetting, parse_batch_size, parse_shape_setting

log = logging.getLogger("serving")

ROLES = ("all", "api", "worker")
DEFAULT_DEVICE = "CPU"
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_QUEUE_DELAY_MS = 1.0
DEFAULT_MAX_QUEUE_SIZE = 1024
# Largest request body (REST) or message (gRPC), in MiB. 256 MiB holds a batch of ~400 224x224 float images as
# tensor_content or ~80 as JSON numbers, far beyond any single inference here, yet a few such requests in flight
# fit in memory (a JSON body expands several times when parsed). gRPC caps messages at 2 GiB.
DEFAULT_MAX_REQUEST_MB = 256
# Request bytes an api process (or a worker) holds at once, by default: two maximum-size requests, or many
# smaller ones. A request beyond it is refused with RESOURCE_EXHAUSTED / 429, unless nothing else is held.
INFLIGHT_REQUESTS_BY_DEFAULT = 2
# Async jobs: their tensors wait in Redis until a worker runs them. 128 MiB is 500,000 digits samples or 220
# 224x224 float images per job; the backlog of all jobs keeps Redis well under a gigabyte.
DEFAULT_JOB_TIMEOUT_S = 3600
DEFAULT_JOB_MAX_MB = 128
DEFAULT_JOB_BACKLOG_MB = 512
MAX_REQUEST_MB = 2047
MAX_INFLIGHT_MB = 1 << 20  # 1 TiB: only a bound against typing mistakes


class UsageError(Exception):
    """A command-line mistake: reported on stderr with exit code 64, like the seed."""


class ConfigError(ValueError):
    """An invalid config.json or model setting."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    batch_size: int | str | None = None  # None = the model's own
    shape: ShapeSetting | None = None  # None = the model's own
    model_version_policy: dict[str, Any] = field(default_factory=lambda: {"latest": {"num_versions": 1}})
    nireq: int = 0  # 0 = OpenVINO's optimal number
    target_device: str = DEFAULT_DEVICE
    plugin_config: dict[str, Any] = field(default_factory=dict)
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # rows one inference may hold; 1 = no batching
    max_queue_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_MS  # longest wait for announced batch-mates
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE  # requests an api process lets wait for this model

    def to_dict(self) -> dict[str, Any]:
        """The config.json form; equal dicts mean equal configurations."""
        shape = None
        if self.shape is not None:
            shape = {str(k) if k is not None else "": v for k, v in self.shape.items()}
        return {
            "name": self.name,
            "base_path": self.base_path,
            "batch_size": self.batch_size,
            "shape": shape,
            "model_version_policy": self.model_version_policy,
            "nireq": self.nireq,
            "target_device": self.target_device,
            "plugin_config": self.plugin_config,
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_ms": self.max_queue_delay_ms,
            "max_queue_size": self.max_queue_size,
        }


@dataclass(frozen=True)
class ServerSettings:
    role: str = "all"
    port: int = 9178
    rest_port: int = 0
    grpc_workers: int = 1
    rest_workers: int = 24
    log_level: str = "INFO"
    log_path: str | None = None
    grpc_channel_arguments: dict[str, Any] = field(default_factory=dict)
    file_system_poll_wait_seconds: int = 1
    config_path: str | None = None
    broker_url: str | None = None  # None = start the embedded Redis
    result_backend_url: str | None = None  # None = the broker
    request_timeout_s: float = 30.0
    device: str | None = None  # the device a worker serves (worker role)
    worker_concurrency: int = 64
    task_events: bool = False  # workers send Celery task events (for Flower)
    flower_port: int = 0  # all-in-one: also run Celery Flower on this port; 0 = no Flower
    job_ttl_s: int = 86400  # how long async jobs and their results are kept
    job_timeout_s: int = DEFAULT_JOB_TIMEOUT_S  # a job not finished within this fails
    job_max_mb: int = DEFAULT_JOB_MAX_MB  # tensors of one job
    job_backlog_mb: int = DEFAULT_JOB_BACKLOG_MB  # tensors of all jobs not yet run, server-wide
    ssl_certificate: str | None = None  # PEM: TLS on gRPC and REST when set (with ssl_private_key)
    ssl_private_key: str | None = None
    ssl_client_ca: str | None = None  # PEM: mutual TLS, clients must present a certificate it signed
    auth_token_file: str | None = None  # accepted bearer tokens, one a line; unset = no token needed
    max_request_mb: int = DEFAULT_MAX_REQUEST_MB  # largest REST body / gRPC message an api process accepts
    max_inflight_mb: int | None = None  # request MiB an api process holds at once; None = 2 x max_request_mb
    worker_max_inflight_mb: int | None = None  # tensor MiB a worker holds at once; None = 2 x max_request_mb
    models: tuple[ModelConfig, ...] = ()

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mb << 20

    @property
    def max_inflight_bytes(self) -> int:
        return _or_default_budget(self.max_inflight_mb, self.max_request_mb) << 20

    @property
    def worker_max_inflight_bytes(self) -> int:
        return _or_default_budget(self.worker_max_inflight_mb, self.max_request_mb) << 20

    def devices(self) -> list[str]:
        """Target devices in use, in order of first appearance."""
        return list(dict.fromkeys(model.target_device for model in self.models))

    def models_for(self, device: str) -> list[ModelConfig]:
        return [model for model in self.models if model.target_device == device]


def _or_default_budget(budget_mb: int | None, max_request_mb: int) -> int:
    return budget_mb if budget_mb is not None else INFLIGHT_REQUESTS_BY_DEFAULT * max_request_mb


_MODEL_FLAGS = (
    "batch_size",
    "shape",
    "model_version_policy",
    "nireq",
    "target_device",
    "plugin_config",
    "max_batch_size",
    "max_queue_delay_ms",
    "max_queue_size",
)
_CONFIG_KEYS = {"name", "base_path", *_MODEL_FLAGS}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_MAX_REQUEST_TIMEOUT_S = 1e6


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2; the seed exits 64
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ovms",
        description="OpenVINO Model Server on Celery/Redis. Roles: none (everything), 'api', 'worker'.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--port", type=int, help="gRPC server port (default: 9178)")
    add("--rest_port", type=int, help="REST server port; 0 or unset disables REST (default: 0)")
    add("--grpc_workers", type=int, help="number of gRPC server processes sharing --port (default: 1)")
    add("--rest_workers", type=int, help="threads running the REST app; needs --rest_port (default: 24)")
    add("--log_level", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    add("--log_path", help="also write the log to this file")
    add("--grpc_channel_arguments", help="comma separated k=v gRPC server arguments")
    add("--file_system_poll_wait_seconds", type=int, help="model and config polling period; 0 disables (default: 1)")
    add("--config_path", help="multi-model JSON configuration file")
    add("--model_name", help="name of the model (single model mode)")
    add("--model_path", help="path to the model's versioned directories (single model mode)")
    add("--batch_size", help="model batch size: an integer or 'auto'")
    add("--shape", help="model shape: 'auto', '(1,3,224,224)' or JSON per input")
    add("--model_version_policy", help='e.g. {"latest": {"num_versions": 2}} (default: latest 1)')
    add("--nireq", type=int, help="parallel infer requests per model (default: OpenVINO's optimal)")
    add("--target_device", help="OpenVINO device for the model (default: CPU)")
    add("--plugin_config", help='JSON object of OpenVINO properties, e.g. {"PERFORMANCE_HINT": "THROUGHPUT"}')
    add("--max_batch_size", type=int, help=f"dynamic batching: rows per inference (default: {DEFAULT_MAX_BATCH_SIZE})")
    add(
        "--max_queue_delay_ms",
        type=float,
        help=f"dynamic batching: longest wait for batch-mates (default: {DEFAULT_MAX_QUEUE_DELAY_MS})",
    )
    add(
        "--max_queue_size",
        type=int,
        help=f"requests that may wait per model in an api process before 429 (default: {DEFAULT_MAX_QUEUE_SIZE})",
    )
    add("--broker_url", help="Redis URL of the broker (env OVMS_BROKER_URL); unset = embedded Redis")
    add("--result_backend_url", help="Redis URL of the result backend (env OVMS_RESULT_BACKEND_URL; default: broker)")
    add("--request_timeout_s", type=float, help="deadline of a request without its own (default: 30)")
    add("--device", help="worker role: the device whose models this worker serves")
    add("--worker_concurrency", type=int, help="worker role: messages one worker handles at once (default: 64)")
    add("--task_events", action="store_true", help="workers send Celery task events, for Flower (default: off)")
    add("--job_ttl_s", type=int, help="how long async jobs and their results are kept, seconds (default: 86400)")
    add(
        "--job_timeout_s",
        type=int,
        help=f"an async job not finished within this fails, seconds (default: {DEFAULT_JOB_TIMEOUT_S})",
    )
    add("--job_max_mb", type=int, help=f"tensors of one async job in MiB, else 413 (default: {DEFAULT_JOB_MAX_MB})")
    add(
        "--job_backlog_mb",
        type=int,
        help=f"tensors of all async jobs not yet run in MiB, else 429 (default: {DEFAULT_JOB_BACKLOG_MB})",
    )
    add("--flower_port", type=int, help="with no role: also run Celery Flower on this port (implies --task_events)")
    add("--ssl_certificate", help="PEM certificate (chain): serve gRPC and REST over TLS; needs --ssl_private_key")
    add("--ssl_private_key", help="PEM private key of --ssl_certificate")
    add("--ssl_client_ca", help="PEM CA certificate(s): mutual TLS, clients must present a certificate they signed")
    add("--auth_token_file", help="file of accepted bearer tokens, one a line: gRPC and REST calls need one")
    add(
        "--max_request_mb",
        type=int,
        help=f"largest REST body / gRPC message in MiB, 1 to {MAX_REQUEST_MB} (default: {DEFAULT_MAX_REQUEST_MB})",
    )
    add(
        "--max_inflight_mb",
        type=int,
        help="request MiB an api process holds at once before RESOURCE_EXHAUSTED / 429 (default: 2 x max_request_mb)",
    )
    add(
        "--worker_max_inflight_mb",
        type=int,
        help="tensor MiB a worker holds at once before RESOURCE_EXHAUSTED / 429 (default: 2 x max_request_mb)",
    )
    return parser


def parse_command_line(argv: list[str]) -> ServerSettings:
    """Parse `ovms [api|worker] --flags...` into settings; raises UsageError like the seed."""
    role = "all"
    if argv and argv[0] in ROLES:
        role, argv = argv[0], argv[1:]
    args = _build_parser().parse_args(argv)
    _check_server_flags(args)
    models = _models_from_flags(args)
    settings = ServerSettings(
        role=role,
        port=_default(args.port, 9178),
        rest_port=_default(args.rest_port, 0),
        grpc_workers=_default(args.grpc_workers, 1),
        rest_workers=_default(args.rest_workers, 24),
        log_level=(args.log_level or "INFO").upper(),
        log_path=args.log_path,
        grpc_channel_arguments=_parse_channel_arguments(args.grpc_channel_arguments),
        file_system_poll_wait_seconds=_default(args.file_system_poll_wait_seconds, 1),
        config_path=args.config_path,
        broker_url=args.broker_url or os.environ.get("OVMS_BROKER_URL") or None,
        result_backend_url=args.result_backend_url or os.environ.get("OVMS_RESULT_BACKEND_URL") or None,
        request_timeout_s=_default(args.request_timeout_s, 30.0),
        device=args.device,
        worker_concurrency=_default(args.worker_concurrency, 64),
        task_events=args.task_events or bool(args.flower_port),
        flower_port=_default(args.flower_port, 0),
        job_ttl_s=_default(args.job_ttl_s, 86400),
        job_timeout_s=_default(args.job_timeout_s, DEFAULT_JOB_TIMEOUT_S),
        job_max_mb=_default(args.job_max_mb, DEFAULT_JOB_MAX_MB),
        job_backlog_mb=_default(args.job_backlog_mb, DEFAULT_JOB_BACKLOG_MB),
        ssl_certificate=args.ssl_certificate,
        ssl_private_key=args.ssl_private_key,
        ssl_client_ca=args.ssl_client_ca,
        auth_token_file=args.auth_token_file,
        max_request_mb=_default(args.max_request_mb, DEFAULT_MAX_REQUEST_MB),
        max_inflight_mb=args.max_inflight_mb,
        worker_max_inflight_mb=args.worker_max_inflight_mb,
        models=tuple(models),
    )
    if role == "worker" and settings.device is None:
        devices = settings.devices()
        if len(devices) > 1:
            raise UsageError(f"--device is required: the models use several devices ({', '.join(devices)})")
        settings = _replace(settings, device=devices[0] if devices else DEFAULT_DEVICE)
    return settings


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _replace(settings: ServerSettings, **changes: Any) -> ServerSettings:
    from dataclasses import replace

    return replace(settings, **changes)


def _check_server_flags(args: argparse.Namespace) -> None:
    for flag in ("port", "rest_port"):
        value = getattr(args, flag)
        if value is not None and not 0 <= value <= 65535:
            raise UsageError(f"{flag} number out of range from 0 to 65535")
    if args.rest_port and args.port is not None and args.rest_port == args.port:
        raise UsageError("port and rest_port cannot have the same values")
    if args.rest_workers is not None and not args.rest_port:
        raise UsageError("rest_workers is set but rest_port is not set. rest_port is required to start rest servers")
    for flag in (
        "grpc_workers",
        "rest_workers",
        "worker_concurrency",
        "job_ttl_s",
        "job_timeout_s",
        "job_max_mb",
        "job_backlog_mb",
    ):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive number")
    if args.request_timeout_s is not None and not 0 < args.request_timeout_s <= _MAX_REQUEST_TIMEOUT_S:
        # nan and inf parse as floats; they (and huge values) overflow the Redis expiry of each request's tensors
        raise UsageError(f"request_timeout_s must be a positive number of seconds up to {_MAX_REQUEST_TIMEOUT_S:.0f}")
    if args.max_request_mb is not None and not 1 <= args.max_request_mb <= MAX_REQUEST_MB:
        raise UsageError(f"max_request_mb must be from 1 to {MAX_REQUEST_MB} (gRPC messages are limited to 2 GiB)")
    for flag in ("max_inflight_mb", "worker_max_inflight_mb"):
        value = getattr(args, flag)
        if value is not None and not 1 <= value <= MAX_INFLIGHT_MB:
            raise UsageError(f"{flag} must be from 1 to {MAX_INFLIGHT_MB}")
    if args.file_system_poll_wait_seconds is not None and args.file_system_poll_wait_seconds < 0:
        raise UsageError("file_system_poll_wait_seconds must not be negative")
    if args.log_level and args.log_level.upper() not in _LOG_LEVELS:
        raise UsageError(f"log_level should be one of: {', '.join(_LOG_LEVELS)}")
    _check_security_flags(args)


def _check_security_flags(args: argparse.Namespace) -> None:
    if bool(args.ssl_certificate) != bool(args.ssl_private_key):
        raise UsageError("ssl_certificate and ssl_private_key go together")
    if args.ssl_client_ca and not args.ssl_certificate:
        raise UsageError("ssl_client_ca needs ssl_certificate and ssl_private_key")
    for flag in ("ssl_certificate", "ssl_private_key", "ssl_client_ca", "auth_token_file"):
        path = getattr(args, flag)
        if path is not None and not os.access(path, os.R_OK):
            raise UsageError(f"{flag}: cannot read {path}")


def _parse_channel_arguments(text: str | None) -> dict[str, Any]:
    """`k=v,k=v`; values that look like integers become integers."""
    arguments: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"grpc_channel_arguments: expected key=value, got {item!r}")
        value = value.strip()
        arguments[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
    return arguments


def _models_from_flags(args: argparse.Namespace) -> list[ModelConfig]:
    single = args.model_name is not None or args.model_path is not None
    if args.config_path and single:
        raise UsageError("Use either config_path or model_path with model_name")
    if args.config_path:
        if any(getattr(args, flag) is not None for flag in _MODEL_FLAGS):
            raise UsageError("Model parameters in CLI are exclusive with the config file")
        try:
            return load_config_file(args.config_path)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    if not (args.model_name and args.model_path):
        raise UsageError("Use config_path or model_path with model_name")
    if args.shape is not None and args.batch_size is not None:
        log.warning("Both shape and batch size have been defined. Batch size parameter will be ignored.")
    raw = {"name": args.model_name, "base_path": args.model_path}
    for flag in _MODEL_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            raw[flag] = _json_flag(flag, value) if flag in ("model_version_policy", "plugin_config") else value
    try:
        return [model_from_dict(raw)]
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _json_flag(flag: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON: {exc}") from None


def load_config_file(path: str) -> list[ModelConfig]:
    """Read and validate a multi-model config.json; raises ConfigError with the reason."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    return models_from_document(document)


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
    unknown = set(raw) - _CONFIG_KEYS
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
    except ShapeParseError as exc:
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
    )


def _version_policy(policy: Any) -> dict[str, Any]:
    if policy is None:
        return {"latest": {"num_versions": 1}}
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


def _non_negative_int(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key, 0)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a non-negative integer") from None
    if number < 0 or isinstance(value, bool):
        raise ConfigError(f"{key} must be a non-negative integer")
    return number


def _positive_int(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer")
    return value


def _delay(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10_000:
        raise ConfigError("max_queue_delay_ms must be a number of milliseconds from 0 to 10000")
    return float(value)


def _device(value: Any) -> str:
    if value is None:
        return DEFAULT_DEVICE
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("target_device must be a non-empty string")
    return value.strip()


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

    def __init__(self, settings: ServerSettings) -> None:
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
