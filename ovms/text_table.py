"""Plain text tables, as `ovms jobs` and `ovms status` print them."""

from __future__ import annotations


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """The lines of a plain text table: columns padded to their widest cell, the last one not."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in [header, *rows]
    ]
