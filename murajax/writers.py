"""Metric logs in the workdir: `metrics.jsonl` (one JSON object per line) and TensorBoard."""

import json
import os
from typing import Any

from tensorboardX import SummaryWriter

from murajax import workdir as workdir_lib


def truncate_after(workdir: str, step: int) -> None:
    """Drops `metrics.jsonl` rows logged after `step` (a resumed run logs them again)."""
    path = os.path.join(workdir, workdir_lib.METRICS_LOG)
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(rows)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All rows of a workdir's `metrics.jsonl`, in order."""
    path = os.path.join(workdir, workdir_lib.METRICS_LOG)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
    """Appends `{"step", "split", **metrics}` rows to metrics.jsonl and TensorBoard scalars
    (NaN and infinities are logged as null: `workdir.json_safe`)."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self._enabled = enabled
        self._path = os.path.join(workdir, workdir_lib.METRICS_LOG)
        self._tensorboard = None
        if enabled:
            self._tensorboard = SummaryWriter(os.path.join(workdir, workdir_lib.TENSORBOARD_DIR))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        """Logs scalar `metrics` of `split` ('train', 'holdout', ...) at `step`."""
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
