"""README.md's ```bash and ```python blocks, the marker that says how each is tested, and their runs.

Every such block has, on the line before its fence, either `<!-- readme-test: run -->` (run verbatim against
`make run`: bash after `source .venv/bin/activate`, python with `.venv/bin/python`), `<!-- readme-test: run
with .venv-tfs/bin/python -->` (a python block for another interpreter the README names), or
`<!-- readme-test: covered by tests/…py::test_name[, …] -->` for blocks that need what one server lacks
(hosts, buckets, a GPU, docker, TLS).

A `# -> X` comment shows what the command before it prints. Where X is elided (`...`, `…`) it needs a
checker in ELIDED; otherwise it is exact: in bash, the JSON X equals the last JSON value the block printed;
in python, X is one of the lines the block printed.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.stack import REPO

README = REPO / "README.md"
MARKER = re.compile(r"<!-- readme-test: (run(?: with (?P<python>\S+))?|covered by (?P<tests>.+?)) -->")
FENCE = re.compile(r"```(\w*)")
OUTPUT = "# -> "
ELISIONS = ("...", "…")
# bash blocks: HTTP errors fail the block (curl alone exits 0 on a 4xx/5xx answer), no progress meter
CURL = 'curl() { command curl --fail-with-body -sS "$@"; }'


@dataclass(frozen=True)
class Block:
    """One ```bash or ```python block of the README."""

    language: str
    code: str
    line: int  # of the opening fence, 1-based
    marker: str | None  # what the marker on the line before says, None without a (well-formed) one
    python: str = ".venv/bin/python"  # the interpreter of a python block that runs, relative to the clone
    covering_tests: tuple[str, ...] = ()  # `path::test` of each test a "covered by" marker names

    @property
    def runs(self) -> bool:
        return self.marker is not None and not self.covering_tests

    @property
    def expected(self) -> list[str]:
        """The `# -> X` texts, each with the comment lines that continue it (a bash block's long JSON)."""
        shown: list[str] = []
        lines = self.code.splitlines()
        for index, line in enumerate(lines):
            if OUTPUT not in line:
                continue
            text = [line.split(OUTPUT, 1)[1]]
            for following in lines[index + 1 :]:
                if not following.startswith("#") or OUTPUT in following:
                    break
                text.append(following.lstrip("#").strip())
            shown.append(" ".join(text))
        return shown


def blocks(text: str | None = None) -> list[Block]:
    """The README's bash and python blocks in document order."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    found: list[Block] = []
    opening: tuple[str, int] | None = None
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        fence = FENCE.match(line)
        if opening is None and fence:
            opening, body = (fence[1], number), []
        elif opening is not None and line.startswith("```"):
            language, start = opening
            if language in ("bash", "python"):
                found.append(_block(language, "\n".join(body) + "\n", start, lines[start - 2] if start >= 2 else ""))
            opening = None
        elif opening is not None:
            body.append(line)
    return found


def _block(language: str, code: str, line: int, before: str) -> Block:
    marker = MARKER.fullmatch(before)
    if marker is None:
        return Block(language, code, line, None)
    covering = tuple(name.strip() for name in marker["tests"].split(",")) if marker["tests"] else ()
    return Block(language, code, line, marker[1], marker["python"] or ".venv/bin/python", covering)


def json_values(text: str) -> list[Any]:
    """The JSON values printed one after another (curl prints no newline between answers)."""
    decoder, values, position = json.JSONDecoder(), [], 0
    while (position := _skip_space(text, position)) < len(text):
        value, position = decoder.raw_decode(text, position)
        values.append(value)
    return values


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _digits_predict(answer: dict) -> None:
    (probabilities,) = answer["predictions"]
    assert len(probabilities) == 10 and max(probabilities) == probabilities[0], answer


def _resnet_predict(answer: dict) -> None:
    (probabilities,) = answer["predictions"]
    assert len(probabilities) == 1000 and abs(sum(probabilities) - 1) < 1e-3, len(probabilities)


def _versioned_stats(answer: dict) -> None:
    (stats,) = answer["model_stats"]
    assert (stats["name"], stats["version"]) == ("versioned", "2"), stats
    assert stats.keys() >= {"last_inference", "inference_count", "execution_count", "inference_stats", "batch_stats"}
    assert stats["inference_stats"].keys() >= {"success", "fail", "queue", "compute_input", "compute_infer"}, stats
    assert stats["inference_count"] >= 1, stats  # the KServe v2 block's infer of `versioned` ran before


# The checks of elided `# -> X`, each found by a part of X that no other X has
ELIDED: dict[str, Callable[[Any], None]] = {
    "10 probabilities, the highest at index 0": _digits_predict,
    "1000 probabilities": _resnet_predict,
    '{"model_stats": [{"name": "versioned", "version": "2",': _versioned_stats,
}


def is_elided(expected: str) -> bool:
    return any(elision in expected for elision in ELISIONS)


def checker(expected: str) -> Callable[[Any], None]:
    """The check of an elided `# -> X` (exactly one key of ELIDED is part of X)."""
    checks = [check for key, check in ELIDED.items() if key in expected]
    assert len(checks) == 1, f"# -> {expected[:80]}: {len(checks)} checks in tests/support/readme.py ELIDED"
    return checks[0]


def check_output(block: Block, done: subprocess.CompletedProcess[str]) -> None:
    """The block's run succeeded, and each `# -> X` of it holds for what it printed (see the module's docstring)."""
    stdout = done.stdout
    assert done.returncode == 0, (
        f"README.md:{block.line} ({block.language}) exited {done.returncode}:\n{block.code}\n"
        f"stdout: {stdout[-2000:]}\nstderr: {done.stderr[-3000:]}"
    )
    for expected in block.expected:
        where = f"README.md:{block.line}: # -> {expected[:80]}"
        if block.language == "python":
            assert not is_elided(expected), f"{where}: python blocks show exact lines"
            assert expected.strip() in [line.strip() for line in stdout.splitlines()], f"{where}\n{stdout}"
        elif is_elided(expected):
            checker(expected)(json_values(stdout)[-1])
        else:
            assert json_values(stdout)[-1] == json.loads(expected), f"{where}\nprinted {stdout[-2000:]}"


def run(block: Block, cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a block verbatim in `cwd` (a clone's layout): bash with `-euo pipefail` after activating `.venv`
    and with CURL, python with its interpreter."""
    if block.language == "bash":
        script = f"source .venv/bin/activate\nset -euo pipefail\n{CURL}\n{block.code}"
        command = ["bash", "-c", script]
    else:
        command = [str(cwd / block.python), "-c", block.code]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)
