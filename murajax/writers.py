"""Metric logs in the workdir: `metrics.jsonl` (one JSON object per line) and TensorBoard.

A run killed while appending a row can leave the file's last line torn (half a row, or the
zeros a file system leaves after a crash). Reading drops such a last line with one warning
naming the file and the line; a line that does not parse anywhere else is not a torn write
but a damaged file, and is a `WorkdirError` naming it. `truncate_after` rewrites the file at
once (`workdir.write_text`), never in place.
"""

import json
import os
from typing import Any

from tensorboardX import SummaryWriter

from murajax import workdir as workdir_lib
from murajax.errors import WorkdirError

Row = dict[str, Any]


def metrics_path(workdir: str) -> str:
    """`<workdir>/metrics.jsonl`."""
    return os.path.join(workdir, workdir_lib.METRICS_LOG)


def parse_row(line: str) -> Row | None:
    """A `metrics.jsonl` line as its row: a JSON object with an integer `step`; None if the
    line is not one."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        return None
    return row


def parse_rows(lines: list[str], path: str) -> tuple[list[tuple[Row, str]], int | None]:
    """The rows of `metrics.jsonl` lines, each with its line (blank lines skipped), and the
    number (1-based) of a torn last line that was dropped, or None. Raises `WorkdirError`
    naming `path` and the line for a line that does not parse before the last one."""
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    rows: list[tuple[Row, str]] = []
    for position, (number, line) in enumerate(numbered):
        row = parse_row(line)
        if row is not None:
            rows.append((row, line))
        elif position == len(numbered) - 1:
            return rows, number
        else:
            raise WorkdirError(
                f"{path} line {number} is not a metrics row ({_shown(line)}) and is not the"
                f" last line, so it is not a write cut short: the file is damaged; repair or"
                f" remove that line"
            )
    return rows, None


def _shown(line: str, limit: int = 60) -> str:
    text = line.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _warn_torn(path: str, number: int) -> None:
    print(
        f"[murajax] warning: {path} line {number} is incomplete (a run killed while writing"
        " it); dropped"
    )


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readlines()


def truncate_after(workdir: str, step: int) -> None:
    """Drops `metrics.jsonl` rows logged after `step` (a resumed run logs them again) and a
    torn last line (with a warning); rewrites the file at once, and only if it changes."""
    path = metrics_path(workdir)
    if not os.path.exists(path):
        return
    lines = _read_lines(path)
    rows, torn = parse_rows(lines, path)
    if torn is not None:
        _warn_torn(path, torn)
    kept = [
        line if line.endswith("\n") else line + "\n" for row, line in rows if row["step"] <= step
    ]
    if kept != lines:
        workdir_lib.write_text(path, "".join(kept))


def read_metrics(workdir: str) -> list[Row]:
    """All rows of a workdir's `metrics.jsonl`, in order (a torn last line is left out, with
    a warning)."""
    path = metrics_path(workdir)
    if not os.path.exists(path):
        return []
    rows, torn = parse_rows(_read_lines(path), path)
    if torn is not None:
        _warn_torn(path, torn)
    return [row for row, _ in rows]


class MetricWriter:
    """Appends `{"step", "split", **metrics}` rows to metrics.jsonl and TensorBoard scalars
    (NaN and infinities are logged as null: `workdir.json_safe`)."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self._enabled = enabled
        self._path = metrics_path(workdir)
        self._tensorboard = None
        if enabled:
            self._tensorboard = SummaryWriter(os.path.join(workdir, workdir_lib.TENSORBOARD_DIR))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        """Logs scalar `metrics` of `split` ('train', 'holdout', ...) at `step` (one line,
        appended in one write)."""
        if not self._enabled:
            return
        row = workdir_lib.json_safe({"step": int(step), "split": split, **metrics})
        with open(self._path, "a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
        for name, value in row.items():
            if name not in ("step", "split") and isinstance(value, int | float):
                self._tensorboard.add_scalar(f"{split}/{name}", value, step)
        self._tensorboard.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self._tensorboard is not None:
            self._tensorboard.close()
