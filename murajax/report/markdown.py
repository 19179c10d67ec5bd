"""Markdown for the reports: scores with their intervals, tables, links and durations."""

import math
import os
from collections.abc import Sequence
from typing import Any


def _undefined(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_score(value: float | None, interval: Sequence[float | None] | None = None) -> str:
    """'0.712 [0.650, 0.771]'; 'n/a' for an undefined value (None or NaN)."""
    if _undefined(value):
        return "n/a"
    text = f"{value:.3f}"
    if interval is not None and len(interval) == 2 and not any(map(_undefined, interval)):
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (first column left-aligned, the others right)."""
    align = [":--"] + ["--:"] * (len(header) - 1)
    lines = ["| " + " | ".join(map(str, header)) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def link(path: str, root: str) -> str:
    """`path` relative to `root`, with forward slashes (for markdown links)."""
    return os.path.relpath(path, root).replace(os.sep, "/")


def duration(seconds: float | None) -> str:
    """'45 s', '2.5 min'; '' for None."""
    if seconds is None:
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
