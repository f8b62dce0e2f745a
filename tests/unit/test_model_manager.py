"""ModelManager over a local repository in a temp dir, made of the example model `versioned`
(y = x + 1 in version 1, y = 2 x in version 2, built by ops/build_models.py): loading, version policies,
versions that come, go or break, configuration changes, and what it publishes (its snapshot)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inference.batcher import DynamicBatcher
from inference.errors import VERSION_RETIRED, NotFound
from inference.manager import ModelManager
from inference.model_config import ModelConfig
from inference.shapes import parse_shape_setting
from inference.storage import NO_VERSIONS
from tests.support.broken_model import MATMUL_MISMATCH, break_model_xml

WAIT_S = 10.0
X = np.arange(8, dtype=np.float32).reshape(2, 4)
ANSWERS = {1: X + 1, 2: X * 2}  # what each example version computes


@pytest.fixture
def repository(models_dir: Path, tmp_path: Path) -> Path:
    """A copy of `versioned` (versions 1 and 2) that the test may change."""
    base = tmp_path / "versioned"
    shutil.copytree(models_dir / "versioned", base)
    return base


@pytest.fixture
def managers() -> Iterator[list[ModelManager]]:
    started: list[ModelManager] = []
    yield started
    for manager in started:
        manager.close()


@pytest.fixture
def manager_for(managers: list[ModelManager]):
    def build(*configs: ModelConfig) -> ModelManager:
        manager = ModelManager(list(configs))
        managers.append(manager)
        manager.reconcile(initial=True)
        return manager

    return build


def config(base: Path, policy: dict | None = None, **settings: object) -> ModelConfig:
    return ModelConfig(
        "versioned", str(base), model_version_policy=policy or {"latest": {"num_versions": 1}}, **settings
    )


def states(manager: ModelManager, name: str = "versioned") -> dict[int, str]:
    return {v: report.status.state for v, report in manager.snapshot()[name].versions.items()}


def answer(batcher: DynamicBatcher | None) -> np.ndarray:
    assert batcher is not None
    return batcher.submit({"x": X}).result(timeout=WAIT_S).outputs["y"]


def add_version(base: Path, version: int, like: int) -> None:
    shutil.copytree(base / str(like), base / str(version))


def test_the_latest_version_is_loaded_and_serves(manager_for, repository: Path) -> None:
    manager = manager_for(config(repository))
    assert states(manager) == {2: "AVAILABLE"}
    np.testing.assert_array_equal(answer(manager.get("versioned", 2)), ANSWERS[2])
    assert manager.get("versioned", 1) is None
    assert manager.default("versioned") is manager.get("versioned", 2)
    snapshot = manager.snapshot()["versioned"]
    assert snapshot.error == "" and snapshot.active
    assert list(snapshot.versions[2].signature.inputs) == ["x"]


POLICIES = {
    "latest 1": ({"latest": {"num_versions": 1}}, {2}),
    "latest 2": ({"latest": {"num_versions": 2}}, {1, 2}),
    "all": ({"all": {}}, {1, 2}),
    "specific 1": ({"specific": {"versions": [1]}}, {1}),
    "specific, one missing": ({"specific": {"versions": [1, 5]}}, {1}),
}


@pytest.mark.parametrize("policy, served", POLICIES.values(), ids=POLICIES.keys())
def test_version_policy(manager_for, repository: Path, policy: dict, served: set[int]) -> None:
    manager = manager_for(config(repository, policy))
    assert states(manager) == {version: "AVAILABLE" for version in served}
    for version in served:
        np.testing.assert_array_equal(answer(manager.get("versioned", version)), ANSWERS[version])
    assert manager.default("versioned") is manager.get("versioned", max(served))


def test_a_new_version_loads_once_its_files_settle_then_replaces_the_old_one(manager_for, repository: Path) -> None:
    manager = manager_for(config(repository))
    old = manager.get("versioned", 2)
    add_version(repository, 3, like=1)
    assert manager.reconcile()
    assert states(manager) == {2: "AVAILABLE", 3: "START"}, "waits one poll: its files may still be arriving"
    assert manager.reconcile()
    assert states(manager) == {2: "END", 3: "AVAILABLE"}
    np.testing.assert_array_equal(answer(manager.default("versioned")), ANSWERS[1])
    with pytest.raises(NotFound, match=VERSION_RETIRED):
        answer(old)
    assert not manager.reconcile(), "nothing changed since"


def test_a_version_whose_files_go_away_is_unloaded(manager_for, repository: Path) -> None:
    manager = manager_for(config(repository, {"all": {}}))
    shutil.rmtree(repository / "2")
    assert manager.reconcile()
    assert states(manager) == {1: "AVAILABLE", 2: "END"}
    assert manager.default("versioned") is manager.get("versioned", 1)


def test_the_only_version_is_kept_until_its_successor_serves(manager_for, repository: Path) -> None:
    """Availability first: version 2 leaves the policy once 3 appears, but stays while 3 is still START."""
    manager = manager_for(config(repository))
    add_version(repository, 3, like=1)
    manager.reconcile()
    assert manager.get("versioned", 2) is not None


def test_a_broken_version_ends_with_its_error_and_loads_once_repaired(manager_for, repository: Path) -> None:
    manager = manager_for(config(repository, {"all": {}}))
    (repository / "3").mkdir()
    (repository / "3" / "model.xml").write_text("<net>not a model")
    (repository / "3" / "model.bin").write_bytes(b"")
    manager.reconcile()
    manager.reconcile()
    status = manager.snapshot()["versioned"].versions[3].status
    assert status.state == "END" and status.error_code == "UNKNOWN" and status.error_message != "OK"
    assert manager.default("versioned") is manager.get("versioned", 2), "the others keep serving"
    assert not manager.reconcile(), "not retried while its files stay the same"
    shutil.rmtree(repository / "3")
    add_version(repository, 3, like=1)
    manager.reconcile()
    manager.reconcile()
    assert states(manager) == {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"}
    np.testing.assert_array_equal(answer(manager.get("versioned", 3)), ANSWERS[1])


def test_openvinos_whole_reason_is_kept_on_one_line(manager_for, models_dir: Path, tmp_path: Path) -> None:
    """OpenVINO says why over several lines (a model whose MatMul cannot take its widened input: "While
    validating node …:", then "Incompatible MatMul matrix dimension …"): the status keeps every one but its
    C++ source locations."""
    base = tmp_path / "digits"
    shutil.copytree(models_dir / "digits", base)
    break_model_xml(base / "1")
    manager = manager_for(ModelConfig("digits", str(base)))
    status = manager.snapshot()["digits"].versions[1].status
    assert status.failed and status.error_message.startswith("While validating node"), status
    assert MATMUL_MISMATCH in status.error_message
    assert ".cpp" not in status.error_message and "\n" not in status.error_message
    assert manager.unserved() == {"digits": f"version 1 failed to load: {status.error_message}"}


def test_an_unreadable_repository_is_reported_not_raised(manager_for, tmp_path: Path) -> None:
    manager = manager_for(config(tmp_path / "missing"))
    assert manager.snapshot()["versioned"].error
    assert states(manager) == {}
    assert manager.default("versioned") is None
    assert manager.unserved() == {"versioned": manager.snapshot()["versioned"].error}


def test_an_empty_repository_is_reported_and_logged_once(
    manager_for, repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="serving"):
        manager = manager_for(config(empty))
        manager.reconcile()
    reason = f"{empty}: {NO_VERSIONS}"
    assert manager.snapshot()["versioned"].empty == reason
    assert [record.message for record in caplog.records] == [f"Model versioned: {reason}"]
    assert manager.unserved() == {"versioned": reason}
    shutil.copytree(repository / "1", empty / "1")
    manager.reconcile()
    manager.reconcile()
    assert states(manager) == {1: "AVAILABLE"} and manager.snapshot()["versioned"].empty == ""
    assert manager.unserved() == {}


def test_a_policy_that_selects_no_version_says_so(manager_for, repository: Path) -> None:
    manager = manager_for(config(repository, {"specific": {"versions": [7]}}))
    assert manager.snapshot()["versioned"].empty == (
        f'{repository}: the version policy {{"specific": {{"versions": [7]}}}} selects none of its versions 1, 2'
    )


def test_changed_settings_rebuild_each_version_while_the_old_build_serves(manager_for, repository: Path) -> None:
    manager = manager_for(config(repository, max_batch_size=1))
    old = manager.get("versioned", 2)
    assert old is not None and old.max_rows == 1
    assert manager.apply_config([config(repository, max_batch_size=8)])
    new = manager.get("versioned", 2)
    assert new is not None and new is not old and new.max_rows == 8
    assert states(manager) == {2: "AVAILABLE"}
    np.testing.assert_array_equal(answer(new), ANSWERS[2])
    with pytest.raises(NotFound, match=VERSION_RETIRED):
        answer(old)
    assert manager.configs()["versioned"].max_batch_size == 8


def test_settings_that_do_not_load_keep_the_old_build(manager_for, repository: Path) -> None:
    manager = manager_for(config(repository))
    old = manager.get("versioned", 2)
    manager.apply_config([config(repository, shape=parse_shape_setting("(1,2,3)"))])  # not the model's rank
    assert manager.get("versioned", 2) is old
    np.testing.assert_array_equal(answer(old), ANSWERS[2])


def test_an_unchanged_configuration_changes_nothing(manager_for, repository: Path) -> None:
    manager = manager_for(config(repository))
    served = manager.get("versioned", 2)
    assert not manager.apply_config([config(repository)])
    assert manager.get("versioned", 2) is served


def test_a_new_base_path_retires_the_old_repository(manager_for, repository: Path, tmp_path: Path) -> None:
    manager = manager_for(config(repository))
    old = manager.get("versioned", 2)
    moved = tmp_path / "elsewhere"
    shutil.copytree(repository, moved)
    shutil.rmtree(moved / "2")
    manager.apply_config([config(moved)])
    assert states(manager) == {1: "AVAILABLE"}
    np.testing.assert_array_equal(answer(manager.default("versioned")), ANSWERS[1])
    with pytest.raises(NotFound, match=VERSION_RETIRED):
        answer(old)


def test_models_added_and_removed_by_a_new_configuration(manager_for, repository: Path, models_dir: Path) -> None:
    manager = manager_for(config(repository))
    digits = ModelConfig("digits", str(models_dir / "digits"))
    assert manager.apply_config([digits])
    assert set(manager.configs()) == {"digits"}
    assert states(manager, "digits") == {1: "AVAILABLE"}
    removed = manager.snapshot()["versioned"]
    assert not removed.active and {v: r.status.state for v, r in removed.versions.items()} == {2: "END"}
    assert manager.default("versioned") is None
    assert not manager.reconcile(), "a removed model's repository is no longer followed"


def test_close_stops_every_served_version(manager_for, repository: Path) -> None:
    manager = manager_for(config(repository, {"all": {}}))
    served = [manager.get("versioned", version) for version in (1, 2)]
    manager.close()
    for batcher in served:
        with pytest.raises(NotFound, match=VERSION_RETIRED):
            answer(batcher)
