"""Printing benchmark results: Markdown tables that also read well in a terminal, the machine, progress lines."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def progress(message: str) -> None:
    print(f"[{Path(sys.argv[0]).stem}] {message}", file=sys.stderr, flush=True)


def fmt(value: float, digits: int = 1) -> str:
    return "-" if np.isnan(value) else f"{value:,.{digits}f}"


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not np.isnan(denominator) else float("nan")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table padded so it also reads well in a terminal (numbers right-aligned)."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (width + 1) + ":" for width in widths) + "|"
    return "\n".join([line(headers), separator, *(line(cells) for cells in rows)])


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def load_average() -> float:
    """The 1-minute load average: on a shared machine, how busy others kept the cores."""
    return os.getloadavg()[0]


@dataclass(frozen=True)
class RunStart:
    """When a benchmark run began and how busy the machine was then (reported beside the load at its end)."""

    at: datetime.datetime
    load_average: float

    @classmethod
    def now(cls) -> RunStart:
        return cls(datetime.datetime.now().astimezone(), load_average())

    def header_items(self) -> str:
        """A report's date, machine and load average, as Markdown list items."""
        return "\n".join([
            f"- date: {self.at:%Y-%m-%d %H:%M:%S %Z}",
            f"- machine: {machine()}",
            f"- load average (1 min): {self.load_average:.1f} before the run, {load_average():.1f} after",
        ])  # fmt: skip
