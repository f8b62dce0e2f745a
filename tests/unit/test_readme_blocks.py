"""Every ```bash and ```python block of README.md says how it is tested (see tests.support.readme), and what
it says holds: the tests a block is "covered by" exist, the interpreters named are the clone's venvs, and
every output shown with `# ->` can be checked. The "run" blocks themselves run in
tests/integration/test_make_run.py, against `make run`."""

from __future__ import annotations

import re

import pytest

from tests.support.readme import OUTPUT, README, Block, blocks, checker, is_elided, json_values
from tests.support.stack import REPO

BLOCKS = blocks()
VENVS = {".venv/bin/python", ".venv-tfs/bin/python", ".venv-triton/bin/python"}


def block_id(block: Block) -> str:
    return f"{block.language}@L{block.line}"


def test_the_readme_has_blocks_that_run_and_blocks_that_are_covered() -> None:
    assert len(BLOCKS) >= 15
    assert sum(block.runs for block in BLOCKS) >= 10
    assert any(block.covering_tests for block in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=block_id)
def test_every_block_has_a_marker_naming_how_it_is_tested(block: Block) -> None:
    assert block.marker is not None, (
        f"README.md:{block.line}: put `<!-- readme-test: run -->` or `<!-- readme-test: covered by "
        "tests/...py::test_name -->` on the line before the fence (tests/support/readme.py)"
    )
    assert block.runs or block.covering_tests, block.marker


@pytest.mark.parametrize("block", [block for block in BLOCKS if block.covering_tests], ids=block_id)
def test_the_covering_tests_exist(block: Block) -> None:
    for name in block.covering_tests:
        path, _, test = name.partition("::")
        assert (REPO / path).is_file(), f"README.md:{block.line}: no file {path}"
        assert re.search(rf"^(async )?def {re.escape(test)}\(", (REPO / path).read_text(), re.M), (
            f"README.md:{block.line}: {path} has no {test}"
        )


@pytest.mark.parametrize("block", [block for block in BLOCKS if block.runs], ids=block_id)
def test_run_blocks_name_a_venv_of_the_clone_and_show_checkable_outputs(block: Block) -> None:
    assert block.python in VENVS
    assert block.language == "python" or block.python == ".venv/bin/python", "a bash block runs in .venv"
    before = "\n".join(README.read_text(encoding="utf-8").splitlines()[: block.line - 2])
    says = "`source .venv/bin/activate`" if block.python == ".venv/bin/python" else f"`{block.python}`"
    assert says in before, f"README.md:{block.line}: the text before the block should tell readers to use {says}"
    for expected in block.expected:
        if block.language == "bash":  # the last JSON printed is the answer of the command before the `# ->`
            after = block.code.split(OUTPUT, 1)[1].splitlines()[1:]
            assert all(line.startswith("#") or not line.strip() for line in after), f"README.md:{block.line}"
        if is_elided(expected):
            assert block.language == "bash", f"README.md:{block.line}: python blocks show exact lines"
            checker(expected)
        elif block.language == "bash":
            json_values(expected)  # exact JSON


def test_an_unmarked_block_and_a_dangling_test_are_found() -> None:
    text = "x\n```bash\nls\n```\n<!-- readme-test: covered by tests/nowhere.py::test_x -->\n```python\npass\n```\n"
    unmarked, covered = blocks(text)
    assert (unmarked.marker, unmarked.line, unmarked.code) == (None, 2, "ls\n")
    assert covered.covering_tests == ("tests/nowhere.py::test_x",) and not (REPO / "tests/nowhere.py").exists()
