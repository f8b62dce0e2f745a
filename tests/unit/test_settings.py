"""Command line and config.json: the seed's flags, defaults, usage errors (exit 64) and model settings."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inference.model_config import ConfigError, ModelConfig, load_config_file, models_from_document
from inference.shapes import AUTO, ShapeParseError, parse_batch_size, parse_input_shape, parse_shape_setting
from ovms.cli import USAGE_EXIT_CODE
from ovms.settings import ServerSettings, UsageError, parse_command_line

REPO = Path(__file__).resolve().parents[2]
SINGLE = ["--model_name", "resnet", "--model_path", "/models/resnet"]
BATCH_IGNORED = "Both shape and batch size have been defined. Batch size parameter will be ignored."


def write_config(directory: Path, document: Any) -> Path:
    path = directory / "config.json"
    path.write_text(json.dumps(document))
    return path


def config_list(*configs: dict[str, Any]) -> dict[str, Any]:
    return {"model_config_list": [{"config": config} for config in configs]}


def run_ovms(*args: str) -> subprocess.CompletedProcess[str]:
    """`ovms args` in a child process, without a broker in the environment."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OVMS_")}
    return subprocess.run(
        [sys.executable, "-m", "ovms", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


# --------------------------------------------------------------------------- flags and defaults


def test_an_empty_log_level_is_the_default() -> None:
    """`--log_level "$LEVEL"` with the variable unset starts, as the seed does, at INFO."""
    assert parse_command_line([*SINGLE, "--log_level", ""]).log_level == "INFO"


def test_defaults_match_the_seed() -> None:
    settings = parse_command_line(SINGLE)
    assert settings.role == "all"
    assert settings.port == 9178
    assert settings.rest_port == 0
    assert settings.grpc_workers == 1
    assert settings.rest_workers == 24
    assert settings.log_level == "INFO"
    assert settings.log_path is None
    assert settings.grpc_channel_arguments == {}
    assert settings.file_system_poll_wait_seconds == 1
    assert settings.request_timeout_s == 30
    assert (settings.grpc_bind_address, settings.rest_bind_address) == ("0.0.0.0", "0.0.0.0")  # as OVMS
    assert settings.config_path is None
    assert (settings.max_request_mb, settings.max_request_bytes) == (256, 256 << 20)
    assert settings.max_inflight_bytes == settings.worker_max_inflight_bytes == 512 << 20  # 2 x max_request_mb
    assert settings.models == (ModelConfig(name="resnet", base_path="/models/resnet"),)


def test_single_model_defaults() -> None:
    (model,) = parse_command_line(SINGLE).models
    assert model.batch_size is None
    assert model.shape is None
    assert model.model_version_policy == {"latest": {"num_versions": 1}}
    assert model.nireq == 0
    assert model.target_device == "CPU"
    assert model.plugin_config == {}


def test_every_server_flag_is_parsed() -> None:
    settings = parse_command_line(
        [
            *SINGLE,
            "--port", "9001",
            "--rest_port", "8001",
            "--grpc_workers", "2",
            "--rest_workers", "4",
            "--log_level", "debug",
            "--log_path", "/tmp/ovms.log",
            "--grpc_channel_arguments", "grpc.max_connection_age_ms=2000, grpc.lb_policy_name=round_robin",
            "--file_system_poll_wait_seconds", "0",
            "--request_timeout_s", "2.5",
            "--max_request_mb", "16",
            "--max_inflight_mb", "40",
            "--worker_max_inflight_mb", "24",
            "--worker_memory_mb", "300",
        ]
    )  # fmt: skip
    assert (settings.max_inflight_bytes, settings.worker_max_inflight_bytes) == (40 << 20, 24 << 20)
    assert settings.worker_memory_mb == 300
    assert (settings.port, settings.rest_port, settings.grpc_workers, settings.rest_workers) == (9001, 8001, 2, 4)
    assert settings.log_level == "DEBUG"
    assert settings.log_path == "/tmp/ovms.log"
    assert settings.grpc_channel_arguments == {
        "grpc.max_connection_age_ms": 2000,
        "grpc.lb_policy_name": "round_robin",
    }
    assert settings.file_system_poll_wait_seconds == 0
    assert settings.request_timeout_s == 2.5
    assert settings.max_request_bytes == 16 << 20


def test_every_model_flag_is_parsed() -> None:
    (model,) = parse_command_line(
        [
            *SINGLE,
            "--batch_size", "8",
            "--model_version_policy", '{"specific": {"versions": [1, 3]}}',
            "--nireq", "4",
            "--target_device", "GPU",
            "--plugin_config", '{"PERFORMANCE_HINT": "THROUGHPUT"}',
            "--idle_unload_s", "90",
        ]
    ).models  # fmt: skip
    assert model == ModelConfig(
        name="resnet",
        base_path="/models/resnet",
        batch_size=8,
        model_version_policy={"specific": {"versions": [1, 3]}},
        nireq=4,
        target_device="GPU",
        plugin_config={"PERFORMANCE_HINT": "THROUGHPUT"},
        idle_unload_s=90.0,
    )


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("auto", {None: AUTO}),
        ("(1,3,224,224)", {None: (1, 3, 224, 224)}),
        ('{"data": "(1,3,600,600)"}', {"data": (1, 3, 600, 600)}),
        ('{"data": "auto"}', {"data": AUTO}),
    ],
)
def test_shape_flag(flag: str, expected: dict[str | None, Any]) -> None:
    (model,) = parse_command_line([*SINGLE, "--shape", flag]).models
    assert model.shape == expected


@pytest.mark.parametrize(("flag", "expected"), [("auto", AUTO), ("16", 16), ("0", None)])
def test_batch_size_flag(flag: str, expected: int | str | None) -> None:
    (model,) = parse_command_line([*SINGLE, "--batch_size", flag]).models
    assert model.batch_size == expected


@pytest.mark.parametrize(
    ("flags", "layout", "rest_b64"),
    [
        ([], None, "image"),
        (["--layout", "nchw"], {None: "NCHW"}, "image"),
        (["--layout", '{"data": "NHWC"}', "--rest_b64", "raw"], {"data": "NHWC"}, "raw"),
    ],
)
def test_layout_and_rest_b64_flags(flags: list[str], layout: dict | None, rest_b64: str) -> None:
    (model,) = parse_command_line([*SINGLE, *flags]).models
    assert (model.layout, model.rest_b64) == (layout, rest_b64)


def test_shape_and_batch_size_warns_and_ignores_batch_size(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serving"):
        (model,) = parse_command_line([*SINGLE, "--shape", "(1,3,224,224)", "--batch_size", "4"]).models
    assert BATCH_IGNORED in caplog.messages
    assert model.shape == {None: (1, 3, 224, 224)}
    assert model.batch_size is None


def test_no_warning_without_both(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serving"):
        parse_command_line([*SINGLE, "--batch_size", "4"])
    assert BATCH_IGNORED not in caplog.messages


def test_broker_url_from_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVMS_BROKER_URL", "redis://env:6379/0")
    assert parse_command_line(SINGLE).broker_url == "redis://env:6379/0"
    assert parse_command_line([*SINGLE, "--broker_url", "redis://flag:6379/1"]).broker_url == "redis://flag:6379/1"
    monkeypatch.delenv("OVMS_BROKER_URL")
    assert parse_command_line(SINGLE).broker_url is None


def test_log_level_from_flag_or_the_seeds_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's containers take `-e LOG_LEVEL=DEBUG`; the flag wins over it."""
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert parse_command_line(SINGLE).log_level == "DEBUG"
    assert parse_command_line([*SINGLE, "--log_level", "ERROR"]).log_level == "ERROR"
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(UsageError, match="log_level should be one of"):
        parse_command_line(SINGLE)
    monkeypatch.delenv("LOG_LEVEL")
    assert parse_command_line(SINGLE).log_level == "INFO"


# --------------------------------------------------------------------------- roles


def test_api_role() -> None:
    settings = parse_command_line(["api", *SINGLE, "--broker_url", "redis://localhost:6379/0"])
    assert settings.role == "api"
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.models[0].name == "resnet"


def test_worker_role_serves_the_models_device() -> None:
    settings = parse_command_line(["worker", *SINGLE, "--target_device", "GPU"])
    assert settings.role == "worker"
    assert settings.device == "GPU"


def test_worker_role_defaults_to_cpu_and_takes_an_explicit_device() -> None:
    assert parse_command_line(["worker", *SINGLE]).device == "CPU"
    assert parse_command_line(["worker", *SINGLE, "--device", "NPU"]).device == "NPU"


def test_worker_with_models_on_several_devices_needs_device(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        config_list(
            {"name": "a", "base_path": "/m/a", "target_device": "CPU"},
            {"name": "b", "base_path": "/m/b", "target_device": "GPU"},
        ),
    )
    with pytest.raises(UsageError, match="--device is required"):
        parse_command_line(["worker", "--config_path", str(config)])
    settings = parse_command_line(["worker", "--config_path", str(config), "--device", "GPU"])
    assert settings.device == "GPU"
    assert [model.name for model in settings.models_for("GPU")] == ["b"]
    assert settings.devices() == ["CPU", "GPU"]


def test_role_is_only_recognised_first() -> None:
    with pytest.raises(UsageError):
        parse_command_line([*SINGLE, "worker"])


# --------------------------------------------------------------------------- usage errors in process


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config_path", "c.json", "--model_name", "m"], "Use either config_path or model_path with model_name"),
        (["--config_path", "c.json", "--model_path", "/m"], "Use either config_path or model_path with model_name"),
        ([], "Use config_path or model_path with model_name"),
        (["--model_name", "m"], "Use config_path or model_path with model_name"),
        (["--model_path", "/m"], "Use config_path or model_path with model_name"),
        (["--config_path", "c.json", "--shape", "auto"], "Model parameters in CLI are exclusive with the config file"),
        (["--config_path", "c.json", "--nireq", "2"], "Model parameters in CLI are exclusive with the config file"),
        ([*SINGLE, "--port", "70000"], "port number out of range from 0 to 65535"),
        ([*SINGLE, "--rest_port", "-1"], "rest_port number out of range from 0 to 65535"),
        ([*SINGLE, "--port", "8000", "--rest_port", "8000"], "port and rest_port cannot have the same values"),
        ([*SINGLE, "--rest_workers", "4"], "rest_workers is set but rest_port is not set"),
        ([*SINGLE, "--rest_workers", "4", "--rest_port", "0"], "rest_workers is set but rest_port is not set"),
        ([*SINGLE, "--grpc_workers", "0"], "grpc_workers count should be from 1 to CPU core count : "),
        ([*SINGLE, "--grpc_workers", "10000"], "grpc_workers count should be from 1 to CPU core count : "),
        ([*SINGLE, "--grpc_workers", "2", "--port", "0"], "grpc_workers above 1 needs a port number"),
        ([*SINGLE, "--log_level", "TRACE"], "log_level should be one of: DEBUG, INFO, WARNING, ERROR"),
        ([*SINGLE, "--file_system_poll_wait_seconds", "-1"], "file_system_poll_wait_seconds must not be negative"),
        ([*SINGLE, "--max_request_mb", "0"], "max_request_mb must be from 1 to 2047"),
        ([*SINGLE, "--max_request_mb", "2048"], "max_request_mb must be from 1 to 2047"),
        ([*SINGLE, "--max_inflight_mb", "0"], "max_inflight_mb must be from 1 to 1048576"),
        ([*SINGLE, "--worker_max_inflight_mb", "-5"], "worker_max_inflight_mb must be from 1 to 1048576"),
        ([*SINGLE, "--worker_memory_mb", "-1"], "worker_memory_mb must be from 0 to 1048576"),
        ([*SINGLE, "--idle_unload_s", "-1"], "idle_unload_s must be a number of seconds from 0 (never)"),
        ([*SINGLE, "--idle_unload_s", "nan"], "idle_unload_s must be a number of seconds from 0 (never)"),
        ([*SINGLE, "--grpc_channel_arguments", "novalue"], "grpc_channel_arguments: expected key=value"),
        ([*SINGLE, "--model_version_policy", "{not json"], "model_version_policy is not valid JSON"),
        ([*SINGLE, "--model_version_policy", '{"newest": {}}'], "invalid model_version_policy"),
        ([*SINGLE, "--shape", "(1,3,x)"], "invalid shape"),
        ([*SINGLE, "--batch_size", "many"], "invalid batch_size"),
        ([*SINGLE, "--nireq", "-2"], "nireq must be a non-negative integer"),
        ([*SINGLE, "--plugin_config", "[1]"], "plugin_config must be a JSON object"),
        ([*SINGLE, "--port", "abc"], "invalid int value"),
        (
            [*SINGLE, "--rest_bind_address", "no-such-host.invalid"],
            "rest_bind_address: 'no-such-host.invalid' is neither an IP address nor a resolvable host name",
        ),
        ([*SINGLE, "--grpc_bind_address", "300.1.1.1"], "grpc_bind_address: '300.1.1.1' is neither"),
        ([*SINGLE, "--no_such_flag", "1"], "unrecognized arguments"),
    ],
)
def test_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as error:
        parse_command_line(argv)
    assert message in str(error.value)


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "1e20"])
def test_request_timeout_must_be_a_usable_positive_number(value: str) -> None:
    with pytest.raises(UsageError, match="request_timeout_s must be a positive number"):
        parse_command_line([*SINGLE, "--request_timeout_s", value])


@pytest.mark.parametrize(
    ("given", "bound"), [("127.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"), ("::", "::"), ("0:0::1", "::1")]
)
def test_bind_addresses_become_the_ip_address_the_logs_show(given: str, bound: str) -> None:
    settings = parse_command_line([*SINGLE, "--grpc_bind_address", given, "--rest_bind_address", given])
    assert (settings.grpc_bind_address, settings.rest_bind_address) == (bound, bound)


def test_rest_workers_with_rest_port_is_fine() -> None:
    settings = parse_command_line([*SINGLE, "--rest_workers", "4", "--rest_port", "8000"])
    assert (settings.rest_workers, settings.rest_port) == (4, 8000)


def test_port_zero_and_rest_off_are_not_equal_ports() -> None:
    settings = parse_command_line([*SINGLE, "--port", "0", "--rest_port", "0"])
    assert (settings.port, settings.rest_port) == (0, 0)


# --------------------------------------------------------------------------- usage errors of the command


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config_path", "c.json", "--model_name", "m"], "Use either config_path or model_path with model_name"),
        ([], "Use config_path or model_path with model_name"),
        (["--model_name", "m"], "Use config_path or model_path with model_name"),
        (
            ["--config_path", "c.json", "--batch_size", "2"],
            "Model parameters in CLI are exclusive with the config file",
        ),
        ([*SINGLE, "--rest_workers", "8"], "rest_workers is set but rest_port is not set"),
        ([*SINGLE, "--port", "9000", "--rest_port", "9000"], "port and rest_port cannot have the same values"),
        ([*SINGLE, "--unknown"], "unrecognized arguments: --unknown"),
    ],
)
def test_command_exits_64_with_the_message_on_stderr(argv: list[str], message: str) -> None:
    result = run_ovms(*argv)
    assert result.returncode == USAGE_EXIT_CODE == 64, result
    assert message in result.stderr
    assert message not in result.stdout


def test_command_logs_the_batch_size_warning() -> None:
    # The api role without a broker is a usage error raised after the flags are parsed: a quick, sure exit.
    result = run_ovms("api", *SINGLE, "--shape", "auto", "--batch_size", "4")
    assert result.returncode == 64
    assert "the api role needs --broker_url or OVMS_BROKER_URL" in result.stderr
    warning = next(line for line in result.stdout.splitlines() if BATCH_IGNORED in line)
    assert "[serving] [warning]" in warning


def test_command_with_an_invalid_config_file_exits_64(tmp_path: Path) -> None:
    config = write_config(tmp_path, config_list({"name": "m", "base_path": "/m", "colour": "blue"}))
    result = run_ovms("--config_path", str(config))
    assert result.returncode == 64
    assert "unknown model config keys: colour" in result.stderr


# --------------------------------------------------------------------------- config.json


def test_valid_multi_model_config(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        config_list(
            {
                "name": "resnet",
                "base_path": "/models/resnet",
                "batch_size": "auto",
                "shape": {"data": "(1,3,224,224)"},
                "model_version_policy": {"latest": {"num_versions": 2}},
                "nireq": 4,
                "target_device": "CPU",
                "plugin_config": {"PERFORMANCE_HINT": "LATENCY"},
            },
            {"name": "digits", "base_path": "s3://bucket/digits", "batch_size": 16},
            {"name": "any", "base_path": "gs://bucket/any", "shape": "auto", "model_version_policy": {"all": {}}},
        ),
    )
    settings = parse_command_line(["--config_path", str(config)])
    assert settings.config_path == str(config)
    resnet, digits, anything = settings.models
    assert resnet == ModelConfig(
        name="resnet",
        base_path="/models/resnet",
        batch_size=None,  # the shape wins over the batch size, as in the seed
        shape={"data": (1, 3, 224, 224)},
        model_version_policy={"latest": {"num_versions": 2}},
        nireq=4,
        target_device="CPU",
        plugin_config={"PERFORMANCE_HINT": "LATENCY"},
    )
    assert (digits.name, digits.base_path, digits.batch_size, digits.shape) == (
        "digits",
        "s3://bucket/digits",
        16,
        None,
    )
    assert anything.shape == {None: AUTO}
    assert anything.model_version_policy == {"all": {}}


def test_config_shape_may_be_a_list(tmp_path: Path) -> None:
    config = write_config(tmp_path, config_list({"name": "m", "base_path": "/m", "shape": [1, 3, 8, 8]}))
    assert load_config_file(str(config))[0].shape == {None: (1, 3, 8, 8)}


def test_model_config_to_dict_is_the_config_json_form() -> None:
    (model,) = models_from_document(
        config_list({"name": "m", "base_path": "/m", "shape": {"data": "auto"}, "nireq": 2})
    )
    assert model.to_dict() == {
        "name": "m",
        "base_path": "/m",
        "batch_size": None,
        "shape": {"data": "auto"},
        "model_version_policy": {"latest": {"num_versions": 1}},
        "nireq": 2,
        "target_device": "CPU",
        "plugin_config": {},
        "max_batch_size": 16,
        "max_queue_delay_ms": 1.0,
        "max_queue_size": 1024,
        "default_priority": 2,
        "reserved_infer_requests": 1,
        "layout": None,
        "rest_b64": "image",
        "idle_unload_s": 0.0,
    }


def test_layout_is_one_for_every_input_or_one_per_input_and_rest_b64_image_or_raw() -> None:
    (everywhere, per_input) = models_from_document(
        config_list(
            {"name": "a", "base_path": "/a", "layout": "nhwc", "rest_b64": "raw"},
            {"name": "b", "base_path": "/b", "layout": {"data": "NCHW", "mask": "NHWC"}},
        )
    )
    assert (everywhere.layout, everywhere.rest_b64) == ({None: "NHWC"}, "raw")
    assert (per_input.layout, per_input.rest_b64) == ({"data": "NCHW", "mask": "NHWC"}, "image")
    assert per_input.to_dict()["layout"] == {"data": "NCHW", "mask": "NHWC"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"layout": "NHWC:NCHW"}, "a transposing layout such as NHWC:NCHW is not served"),
        ({"layout": "CHW"}, "invalid layout 'CHW'"),
        ({"layout": {"data": 4}}, "invalid layout 4"),
        ({"layout": "{not json"}, "invalid layout JSON"),
        ({"rest_b64": "bytes"}, 'rest_b64 must be "image" or "raw"'),
        ({"default_priority": 0}, "default_priority must be a priority level from 1 (highest) to 3 (lowest): 0"),
        ({"default_priority": 4}, "default_priority must be a priority level from 1 (highest) to 3 (lowest): 4"),
        ({"default_priority": "1"}, 'default_priority must be a priority level from 1 (highest) to 3 (lowest): "1"'),
        ({"default_priority": True}, "default_priority must be a priority level"),
    ],
)
def test_invalid_layout_rest_b64_or_default_priority_is_refused_naming_it(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        models_from_document(config_list({"name": "m", "base_path": "/m", **settings}))


def test_empty_model_list_is_valid() -> None:
    assert models_from_document({"model_config_list": []}) == []


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"model_config_list": [], "extra": 1}, "only the key model_config_list"),
        ([], "only the key model_config_list"),
        ({"model_config_list": {"config": {}}}, "model_config_list must be a list"),
        ({"model_config_list": [{"name": "m", "base_path": "/m"}]}, 'must be {"config": {...}}'),
        ({"model_config_list": [{"config": {"name": "m", "base_path": "/m"}, "x": 1}]}, 'must be {"config": {...}}'),
        (config_list({"name": "m", "base_path": "/m", "colour": "blue"}), "unknown model config keys: colour"),
        (config_list({"name": "m"}), "needs a non-empty string base_path"),
        (config_list({"name": "", "base_path": "/m"}), "needs a non-empty string name"),
        (config_list({"name": 7, "base_path": "/m"}), "needs a non-empty string name"),
        (config_list({"name": "m", "base_path": "/m", "nireq": -1}), "nireq must be a non-negative integer"),
        (config_list({"name": "m", "base_path": "/m", "nireq": "many"}), "nireq must be a non-negative integer"),
        (config_list({"name": "m", "base_path": "/m", "nireq": 1.5}), "nireq must be a non-negative integer"),
        (
            config_list({"name": "m", "base_path": "/m", "reserved_infer_requests": -1}),
            "reserved_infer_requests must be a non-negative integer",
        ),
        (
            config_list({"name": "m", "base_path": "/m", "reserved_infer_requests": True}),
            "reserved_infer_requests must be a non-negative integer",
        ),
        (
            config_list({"name": "m", "base_path": "/m", "target_device": ""}),
            "target_device must be a non-empty string",
        ),
        (config_list({"name": "m", "base_path": "/m", "plugin_config": "x"}), "plugin_config must be a JSON object"),
        (config_list({"name": "m", "base_path": "/m", "idle_unload_s": -1}), "idle_unload_s must be a number of"),
        (config_list({"name": "m", "base_path": "/m", "idle_unload_s": "60"}), "idle_unload_s must be a number of"),
        (config_list({"name": "m", "base_path": "/m", "idle_unload_s": True}), "idle_unload_s must be a number of"),
        (config_list({"name": "m", "base_path": "/m", "idle_unload_s": 1e12}), "idle_unload_s must be a number of"),
        (config_list({"name": "m", "base_path": "/m", "shape": "(1,x)"}), "model m: invalid shape"),
        (config_list({"name": "m", "base_path": "/m", "batch_size": -2}), "model m: invalid batch_size"),
        (config_list({"name": "m", "base_path": "/models/../etc"}), "must not contain '..' segments"),
        (config_list({"name": "m", "base_path": "../models/m"}), "must not contain '..' segments"),
        (config_list({"name": "m", "base_path": "s3://bucket/../m"}), "must not contain '..' segments"),
        (config_list({"name": "m", "base_path": "C:\\models\\..\\m"}), "must not contain '..' segments"),
        (
            config_list(
                {"name": "m", "base_path": "/a"}, {"name": "n", "base_path": "/b"}, {"name": "m", "base_path": "/c"}
            ),
            "duplicate model names in config: m",
        ),
    ],
)
def test_invalid_config_documents(document: Any, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        models_from_document(document)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "policy",
    [
        {},
        {"all": {"x": 1}},
        {"all": None},
        {"latest": {"num_versions": 0}},
        {"latest": {"num_versions": -1}},
        {"latest": {"num_versions": "2"}},
        {"latest": {"count": 2}},
        {"specific": {"versions": []}},
        {"specific": {"versions": [0]}},
        {"specific": {"versions": ["1"]}},
        {"specific": {}},
        {"all": {}, "latest": {"num_versions": 1}},
        "all",
        [1, 2],
    ],
)
def test_invalid_version_policies_are_rejected(policy: Any) -> None:
    with pytest.raises(ConfigError, match="invalid model_version_policy"):
        models_from_document(config_list({"name": "m", "base_path": "/m", "model_version_policy": policy}))


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"all": {}}, {"all": {}}),
        ({"latest": {}}, {"latest": {"num_versions": 1}}),
        ({"latest": {"num_versions": 3}}, {"latest": {"num_versions": 3}}),
        ({"specific": {"versions": [1, 3]}}, {"specific": {"versions": [1, 3]}}),
    ],
)
def test_valid_version_policies(policy: dict[str, Any], expected: dict[str, Any]) -> None:
    (model,) = models_from_document(config_list({"name": "m", "base_path": "/m", "model_version_policy": policy}))
    assert model.model_version_policy == expected


def test_unreadable_or_invalid_json_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read config file {tmp_path}/missing.json"):
        load_config_file(os.path.relpath(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"model_config_list": [')
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_config_file(str(broken))


def test_relative_base_paths_resolve_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As OVMS: the same config.json means the same models from any working directory; absolute and remote
    base_paths are left as they are."""
    paths = {"a": "digits", "b": "./nested/resnet", "c": "/srv/models/c", "d": "s3://bucket/d", "e": "gs://bucket/e"}
    config = write_config(tmp_path, config_list(*({"name": n, "base_path": p} for n, p in paths.items())))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resolved = {model.name: model.base_path for model in load_config_file(os.path.relpath(config))}
    assert resolved == {
        "a": str(tmp_path / "digits"),
        "b": str(tmp_path / "nested" / "resnet"),
        "c": "/srv/models/c",
        "d": "s3://bucket/d",
        "e": "gs://bucket/e",
    }


def test_config_errors_become_usage_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path, config_list({"name": "m", "base_path": "/m"}, {"name": "m", "base_path": "/n"}))
    with pytest.raises(UsageError, match="duplicate model names in config: m"):
        parse_command_line(["--config_path", str(config)])


# --------------------------------------------------------------------------- shapes and batch sizes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", AUTO),
        (" auto ", AUTO),
        ("(1,3,224,224)", (1, 3, 224, 224)),
        ("( 1, 3, 224, 224 )", (1, 3, 224, 224)),
        ("[1,3,224,224]", (1, 3, 224, 224)),
        ("(-1,64)", (-1, 64)),
        ("()", ()),
        ([2, 4], (2, 4)),
    ],
)
def test_parse_input_shape(value: Any, expected: Any) -> None:
    assert parse_input_shape(value) == expected


@pytest.mark.parametrize("value", ["1,3,224,224", "(1,3,", "(a,b)", "(1.5,2)", "AUTO!", "", [1, "2"], [True], 5, None])
def test_invalid_input_shapes(value: Any) -> None:
    with pytest.raises(ShapeParseError):
        parse_input_shape(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", {None: AUTO}),
        ("(1,3,224,224)", {None: (1, 3, 224, 224)}),
        ('{"data": "(1,3,600,600)", "mask": "auto"}', {"data": (1, 3, 600, 600), "mask": AUTO}),
        ({"data": [1, 3, 8, 8]}, {"data": (1, 3, 8, 8)}),
        ([1, 2], {None: (1, 2)}),
    ],
)
def test_parse_shape_setting(value: Any, expected: dict[str | None, Any]) -> None:
    assert parse_shape_setting(value) == expected


@pytest.mark.parametrize("value", ['{"data": (1,2)}', '{"data": "big"}', {"data": "(x)"}])
def test_invalid_shape_settings(value: Any) -> None:
    with pytest.raises(ShapeParseError):
        parse_shape_setting(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("auto", AUTO), ("8", 8), (8, 8), ("0", None), (0, None)],
)
def test_parse_batch_size(value: Any, expected: int | str | None) -> None:
    assert parse_batch_size(value) == expected


@pytest.mark.parametrize("value", ["-1", -4, "many", "1.5", [1]])
def test_invalid_batch_sizes(value: Any) -> None:
    with pytest.raises(ShapeParseError, match="invalid batch_size"):
        parse_batch_size(value)


def test_settings_type_is_frozen() -> None:
    settings = parse_command_line(SINGLE)
    assert isinstance(settings, ServerSettings)
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("path", ["/models/..resnet", "/models/resnet..", "s3://bucket/a..b", "/models/.hidden"])
def test_dots_inside_a_base_path_name_are_fine(path: str) -> None:
    assert models_from_document(config_list({"name": "m", "base_path": path}))[0].base_path == path


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """Not a UnicodeDecodeError escaping: at start ovms would end with a traceback, and a reload would go
    unanswered."""
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"model_config_list": [{"config": {"name": "caf\xe9", "base_path": "/m"}}]}'.encode("latin-1"))
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_config_file(str(latin1))
