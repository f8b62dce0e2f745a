"""`make test` stops at once, with one message, on a machine where its deployment tests cannot run
(ops/test_prerequisites.sh), instead of failing them one by one."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.stack import REPO

SCRIPT = REPO / "ops" / "test_prerequisites.sh"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to run as another user")
def test_a_user_without_docker_gets_one_message_and_exit_code_1() -> None:
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": "/tmp"},
    )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Docker engine" in lines[0] and "root" in lines[0], result.stderr
    assert result.stdout == ""

