"""The functional tests' settings: the environment wins over a user_config.py, which wins over the defaults."""

from __future__ import annotations

from pathlib import Path

from tests.functional.settings import DEFAULTS, load


def test_environment_over_user_config_over_defaults(tmp_path: Path) -> None:
    config = tmp_path / "user_config.py"
    config.write_text('IMAGE = "ovms:mine"\nLOG_LEVEL = "DEBUG"\nBUILD_LOGS = "/srv/logs"\n')
    settings = load({"LOG_LEVEL": "WARNING", "TEST_DIR": "/srv/test"}, config)
    assert settings.image == "ovms:mine"
    assert settings.log_level == "WARNING"
    assert settings.test_dir == "/srv/test"
    assert settings.build_logs == Path("/srv/logs")
    assert settings.container_log_line == DEFAULTS["CONTAINER_LOG_LINE"]


def test_without_user_config_the_defaults_start_a_container_of_a_built_image(tmp_path: Path) -> None:
    settings = load({}, tmp_path / "user_config.py")
    assert settings.image == ""  # built by `make docker_build_offline` as ovms:test
    assert settings.start_container_command.startswith("docker run -d --name {name} ")
    assert "{image} --config_path /opt/ml/config.json" in settings.start_container_command
