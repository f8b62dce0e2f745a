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
from importlib.metadata import PackageNotFoundError, version
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
from tasks.settings import LogSettings, WorkerSettings

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
# The settings each role reads (and the model flags, which every role reads): its --help shows their flags
# only, and a supervisor passes a child only those. A role accepts the others too, as it always has.
ROLE_SETTINGS: dict[str, tuple[type, ...]] = {
    "all": (ServerSettings,),
    "api": (ApiSettings, LogSettings),
    "worker": (WorkerSettings,),
}
USAGE = "ovms [api|worker] [flags]\n       ovms submit|jobs|result|cancel|retry|status … (ovms <command> --help)"
_DESCRIPTIONS = {
    "all": "OpenVINO Model Server on Celery/Redis. With no role: an embedded Redis (unless --broker_url), "
    "one worker per device and the api, supervised. 'ovms api --help', 'ovms worker --help': the flags of a role.",
    "api": "The frontends only (gRPC + REST; --grpc_workers N: N api processes), on the Redis of --broker_url.",
    "worker": "One Celery worker serving the models configured for one device, on the Redis of --broker_url.",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2; the seed exits 64
        raise UsageError(message)


def build_parser(role: str = "all") -> argparse.ArgumentParser:
    """The parser of `role`: every flag is accepted, its --help lists the role's own (role_flags)."""
    shown = role_flags(role)
    usage = USAGE if role == "all" else f"ovms {role} [flags]"
    parser = _Parser(prog="ovms", usage=usage, description=_DESCRIPTIONS[role], allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"ovms {package_version()}")
    groups = [(owner, SERVER_OPTIONS) for owner in ServerSettings.__mro__] + [(ModelConfig, MODEL_OPTIONS)]
    for owner, options in groups:
        own = [declared for declared in options if declared.field in vars(owner).get("__annotations__", {})]
        group = parser.add_argument_group(f"declared in {owner.__module__}.{owner.__name__}")
        for declared in own:
            name, details = _argument(declared)
            if declared.flag not in shown:
                details["help"] = argparse.SUPPRESS
            group.add_argument(name, **details)
    return parser


def role_flags(role: str) -> set[str]:
    """The flags `role` reads."""
    options = [option for settings in ROLE_SETTINGS[role] for option in declared_options(settings)]
    return {declared.flag for declared in [*options, *MODEL_OPTIONS]}


def package_version() -> str:
    """The installed package's version (its metadata, from pyproject.toml)."""
    try:
        return version("ovms-celery")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def child_arguments(argv: list[str], role: str, **overrides: Any) -> list[str]:
    """The flags of `argv` (a command line without its role) that `role` reads, for a child process of that
    role, with `overrides` by field name (None: leave the flag out; True: a switch given). Values given by
    environment variable are not repeated: the child inherits the environment."""
    args = vars(build_parser().parse_args(argv[1:] if argv[:1] == ["all"] else argv))
    wanted = role_flags(role)
    flags = {declared.field: declared.flag for declared in [*SERVER_OPTIONS, *MODEL_OPTIONS]}
    for field, value in overrides.items():
        args[flags[field]] = value
    words = []
    for flag, value in args.items():
        if flag not in wanted or value is None or value is False:
            continue
        words.append(f"--{flag}" if value is True else f"--{flag}={value}")
    return words


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
    args = vars(build_parser(role).parse_args(argv))
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
