"""`ovms [api|worker] --flags`: every layer's declared settings composed, and the parser built from them.

A flag is declared once, as an `inference.options.option` field of the settings class of the layer
that reads it (inference.model_config, tasks.settings, api.settings, or here for the process's own);
this module only composes those classes, so adding a flag never touches it.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, replace
from typing import Any

from api.settings import ApiSettings
from inference.model_config import (
    DEFAULT_DEVICE,
    PER_MODEL_KEYS,
    ConfigError,
    ModelConfig,
    load_config_file,
    model_from_dict,
)
from inference.options import Declared, declared_options, option, port_number
from tasks.settings import WorkerSettings

log = logging.getLogger("serving")

ROLES = ("all", "api", "worker")


class UsageError(Exception):
    """A command-line mistake: reported on stderr with exit code 64, like the seed."""


@dataclass(frozen=True)
class ServerSettings(ApiSettings, WorkerSettings):
    """Everything `ovms` was told: the api's and the worker's settings, and the all-in-one's own."""

    role: str = "all"
    flower_port: int = option(
        0, "with no role: also run Celery Flower on this port (implies --task_events)", type=int, check=port_number
    )


SERVER_OPTIONS = tuple(declared_options(ServerSettings))
MODEL_OPTIONS = tuple(declared_options(ModelConfig))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2; the seed exits 64
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ovms",
        description="OpenVINO Model Server on Celery/Redis. Roles: none (everything), 'api', 'worker'.",
        allow_abbrev=False,
    )
    groups = [(owner, SERVER_OPTIONS) for owner in ServerSettings.__mro__] + [(ModelConfig, MODEL_OPTIONS)]
    for owner, options in groups:
        own = [declared for declared in options if declared.field in vars(owner).get("__annotations__", {})]
        if own:
            group = parser.add_argument_group(f"declared in {owner.__module__}.{owner.__name__}")
            for declared in own:
                name, details = _argument(declared)
                group.add_argument(name, **details)
    return parser


def _argument(declared: Declared) -> tuple[str, dict[str, Any]]:
    """`add_argument`'s name and keywords for a declared option. Every flag defaults to None, meaning
    "not given": the checks (like the seed's) look only at what was given, and the declared default
    comes after them."""
    option_ = declared.option
    shown = declared.shown_default()
    notes = [f"env {option_.env}"] if option_.env else []
    notes += [] if shown == "—" else [f"default: {shown}"]
    help_text = option_.help + (f" ({'; '.join(notes)})" if notes else "")
    if option_.type is None:
        return f"--{declared.flag}", {"action": "store_true", "default": None, "help": help_text}
    return f"--{declared.flag}", {"type": option_.type, "help": help_text}


def parse_command_line(argv: list[str]) -> ServerSettings:
    """Parse `ovms [api|worker] --flags...` into settings; raises UsageError like the seed."""
    role = "all"
    if argv and argv[0] in ROLES:
        role, argv = argv[0], argv[1:]
    args = vars(build_parser().parse_args(argv))
    try:
        given = _given(args, SERVER_OPTIONS)
        _check_across(given)
        models = _models(args, given["config_path"])
    except (ValueError, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    values = {name: value for name, value in given.items() if value is not None}  # else the declared default
    if values.get("flower_port"):
        values["task_events"] = True
    settings = ServerSettings(role=role, models=tuple(models), **values)
    if role == "worker" and settings.device is None:
        devices = settings.devices()
        if len(devices) > 1:
            raise UsageError(f"--device is required: the models use several devices ({', '.join(devices)})")
        settings = replace(settings, device=devices[0] if devices else DEFAULT_DEVICE)
    return settings


def _given(args: dict[str, Any], options: tuple[Declared, ...]) -> dict[str, Any]:
    """The value of each option given, by flag or environment variable (None if neither), checked and
    converted; raises ValueError with the seed's message."""
    given = {}
    for declared in options:
        value = args[declared.flag]
        if declared.option.env and not value:
            value = os.environ.get(declared.option.env) or None
        if value is not None:
            if declared.option.check is not None:
                declared.option.check(declared.flag, value)
            if declared.option.convert is not None:
                value = declared.option.convert(declared.flag, value)
        given[declared.field] = value
    return given


def _check_across(given: dict[str, Any]) -> None:
    """Each settings class's checks across its flags (a static `check_given`), most derived first."""
    for settings_class in ServerSettings.__mro__:
        check = vars(settings_class).get("check_given")
        if check is not None:
            check(given)


def _models(args: dict[str, Any], config_path: str | None) -> list[ModelConfig]:
    single = args["model_name"] is not None or args["model_path"] is not None
    if config_path and single:
        raise ValueError("Use either config_path or model_path with model_name")
    if config_path:
        if any(args[key] is not None for key in PER_MODEL_KEYS):
            raise ValueError("Model parameters in CLI are exclusive with the config file")
        return load_config_file(config_path)
    if not (args["model_name"] and args["model_path"]):
        raise ValueError("Use config_path or model_path with model_name")
    if args["shape"] is not None and args["batch_size"] is not None:
        log.warning("Both shape and batch size have been defined. Batch size parameter will be ignored.")
    given = _given(args, MODEL_OPTIONS)
    return [model_from_dict({key: value for key, value in given.items() if value is not None})]
