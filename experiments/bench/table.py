"""Pure functions over benchmark rows: ratios to the best peer, peak fractions, the tables,
issue 9's goals."""

from collections.abc import Mapping, Sequence
from typing import Any

Row = dict[str, Any]

GROUP_KEYS = ("model", "image_size", "batch_size", "dtype")
"""Rows with equal values of these train the same thing and are compared with each other."""


def is_peer(row: Mapping[str, Any]) -> bool:
    """Whether a row is a peer (not murajax itself: 'murajax', 'murajax-xla', ...)."""
    return not str(row["framework"]).startswith("murajax")


def _speed(row: Mapping[str, Any]) -> float | None:
    speed = row.get("images_per_s")
    return float(speed) if speed else None


def group_key(row: Mapping[str, Any]) -> tuple:
    """The (model, image_size, batch_size, dtype) a row is compared within."""
    return tuple(row[k] for k in GROUP_KEYS)


def best_peers(rows: Sequence[Mapping[str, Any]]) -> dict[tuple, Mapping[str, Any]]:
    """The fastest measured peer row of each group (see `group_key`); a row whose only step
    was its first (`first_step_only`: its budget left no room for a timed step) is no
    measured step, and not compared."""
    best: dict[tuple, Mapping[str, Any]] = {}
    for row in rows:
        speed = _speed(row)
        if speed is None or not is_peer(row) or row.get("first_step_only"):
            continue
        key = group_key(row)
        if key not in best or speed > float(best[key]["images_per_s"]):
            best[key] = row
    return best


def add_ratios(rows: Sequence[Row], matmul_gflops: Mapping[str, float] | None = None) -> list[Row]:
    """Copies of `rows` with `ratio_to_best_peer` (images/s over the fastest peer's of the
    same model, size, batch and dtype; None without a measured peer or speed, or for a row of
    its first step only; a peer gets its own ratio too, 1.0 for the best) and `best_peer`
    (that peer's framework), with `peak_fraction` (`gflops` over `matmul_gflops[dtype]`) when
    both are known, and for a peer with a parameter count, `params_match`: whether it equals
    that of the group's murajax rows (None without one)."""
    best = best_peers(rows)
    murajax_params = {
        group_key(r): r["params"] for r in rows if not is_peer(r) and r.get("params") is not None
    }
    out = []
    for row in rows:
        row = dict(row)
        peer = best.get(group_key(row))
        speed = _speed(row)
        if is_peer(row) and row.get("params") is not None:
            reference = murajax_params.get(group_key(row))
            row["params_match"] = None if reference is None else row["params"] == reference
        if peer is None or speed is None or row.get("first_step_only"):
            row["ratio_to_best_peer"] = None
            row["best_peer"] = None
        else:
            row["ratio_to_best_peer"] = round(speed / float(peer["images_per_s"]), 3)
            row["best_peer"] = peer["framework"]
        peak = (matmul_gflops or {}).get(row["dtype"])
        gflops = row.get("gflops")
        row["peak_fraction"] = round(gflops / peak, 3) if gflops and peak else None
        out.append(row)
    return out


def ratio(
    rows: Sequence[Mapping[str, Any]],
    model: str,
    framework: str,
    versus: str,
    dtype: str,
    versus_dtype: str | None = None,
) -> float | None:
    """images/s of `framework` over `versus` for `model` (in `dtype`, and `versus_dtype` for
    `versus`, default the same); None unless both were measured (the first row of each)."""

    def speed(fw: str, dt: str) -> float | None:
        for row in rows:
            if row["model"] == model and row["framework"] == fw and row["dtype"] == dt:
                return _speed(row)
        return None

    a, b = speed(framework, dtype), speed(versus, versus_dtype or dtype)
    return round(a / b, 3) if a and b else None


def _fmt(value: Any, spec: str, width: int) -> str:
    if value is None or value == "":
        return f"{'-':>{width}}"
    return f"{value:>{width}{spec}}"


TRAIN_COLUMNS: tuple[tuple[str, str, str, int], ...] = (
    # (key, header, format, width)
    ("model", "model", "", 12),
    ("image_size", "size", "d", 4),
    ("batch_size", "batch", "d", 5),
    ("dtype", "dtype", "", 8),
    ("framework", "framework", "", 13),
    ("params", "params", "params", 7),
    ("images_per_s", "images/s", ".1f", 9),
    ("step_s", "step s", ".3f", 7),
    ("compile_s", "compile s", ".1f", 9),
    ("peak_memory_mb", "peak MB", ".0f", 7),
    ("gflops", "GFLOP/s", ".1f", 7),
    ("peak_fraction", "of peak", ".0%", 7),
    ("ratio_to_best_peer", "vs best peer", ".2f", 12),
)


def format_params(count: int | None) -> str:
    """A parameter count in 6 characters or fewer: '68.9k', '14.7M', '512'."""
    if count is None:
        return "-"
    if count >= 999_500:
        return f"{count / 1e6:.1f}M"
    if count >= 1000:
        return f"{count / 1e3:.1f}k"
    return str(count)


def row_notes(row: Mapping[str, Any]) -> list[str]:
    """What a row's figures need said: why its budget cut it short (`note`), and a peer whose
    parameter count is not murajax's."""
    notes = [row["note"]] if row.get("note") else []
    if row.get("params_match") is False:
        notes.append(f"{row['params']:,} parameters, not murajax's: not the same network")
    return notes


def format_train_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of train-step rows (failed rows show their error instead; a row
    with notes, `row_notes`, a footnote mark, its notes under the table)."""
    lines = [
        " ".join(
            f"{header:<{w}}" if fmt == "" else f"{header:>{w}}"
            for _, header, fmt, w in TRAIN_COLUMNS
        )
    ]
    footnotes = []
    for row in rows:
        cells = []
        for key, _, fmt, width in TRAIN_COLUMNS:
            value = row.get(key)
            if fmt == "":
                cells.append(f"{'-' if value is None else str(value):<{width}}")
            elif fmt == "params":
                cells.append(f"{format_params(value):>{width}}")
            elif key == "ratio_to_best_peer" and value is not None:
                cells.append(f"{f'{value:.2f}x':>{width}}")
            else:
                cells.append(_fmt(value, fmt, width))
        line = " ".join(cells).rstrip()
        if row.get("error"):
            line += f"  ({row['error']})"
        notes = row_notes(row)
        if notes:
            footnotes.append(
                f"[{len(footnotes) + 1}] {row['framework']} {row['model']}@"
                f"{row['image_size']} {row['dtype']}: {'; '.join(notes)}"
            )
            line += f"  [{len(footnotes)}]"
        lines.append(line)
    return "\n".join(lines + footnotes)


def format_pipeline_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of input-pipeline rows, with each row's ratio to the train step it
    feeds (`feeds`, `step_images_per_s`, `ratio_to_step`) where that step was measured."""
    header = (
        f"{'source':<28} {'size':>4} {'workers':>7} {'images/s':>9} {'startup s':>9} "
        f"{'feeds':<22} {'step img/s':>10} {'pipeline/step':>13}"
    )
    lines = [header]
    for r in rows:
        ratio_text = "-" if r.get("ratio_to_step") is None else f"{r['ratio_to_step']:.2f}x"
        line = (
            f"{r['source']:<28} {r['image_size']:>4} {r['workers']:>7} "
            f"{_fmt(r.get('images_per_s'), '.1f', 9)} {_fmt(r.get('startup_s'), '.2f', 9)} "
            f"{r.get('feeds') or '-':<22} {_fmt(r.get('step_images_per_s'), '.1f', 10)} "
            f"{ratio_text:>13}"
        ).rstrip()
        if r.get("error"):
            line += f"  ({r['error']})"
        lines.append(line)
    return "\n".join(lines)


def add_step_ratios(
    pipeline_rows: Sequence[Row], train_rows: Sequence[Mapping[str, Any]]
) -> list[Row]:
    """Copies of `pipeline_rows` with `step_images_per_s` (the fastest murajax row of the
    model, size and batch each feeds, `feeds_model`/`image_size`/`feeds_batch`, over dtypes
    and frameworks: the step the pipeline must keep up with) and `ratio_to_step`."""
    out = []
    for row in pipeline_rows:
        row = dict(row)
        speeds = [
            float(t["images_per_s"])
            for t in train_rows
            if not is_peer(t)
            and t.get("images_per_s")
            and t["model"] == row.get("feeds_model")
            and t["image_size"] == row.get("feeds_image_size")
            and t["batch_size"] == row.get("feeds_batch")
        ]
        step = max(speeds) if speeds else None
        row["step_images_per_s"] = step
        speed = row.get("images_per_s")
        row["ratio_to_step"] = round(speed / step, 2) if step and speed else None
        out.append(row)
    return out


def goal_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The issue's goals for workloads C and A as ratios: murajax over Keras on TF in float32;
    in bfloat16 over Keras's mixed_bfloat16 and over Keras's float32."""
    lines = []
    for model in ("cnn_c", "vgg16"):
        checks = [
            ("float32 vs keras-tf float32", "float32", "float32", 1.0),
            ("bfloat16 vs keras-tf mixed_bfloat16", "bfloat16", "bfloat16", 1.0),
            ("bfloat16 vs keras-tf float32", "bfloat16", "float32", 1.5),
        ]
        sizes = sorted({r["image_size"] for r in rows if r["model"] == model})
        for size in sizes[:1]:  # the issue's workloads: C at 128, A (VGG16) at 128
            sized = [r for r in rows if r["image_size"] == size]
            for label, dtype, versus_dtype, goal in checks:
                value = ratio(sized, model, "murajax", "keras-tf", dtype, versus_dtype)
                if value is not None:
                    verdict = "met" if value >= goal else "not met"
                    lines.append(
                        f"  {model}@{size} murajax {label}: {value:.2f}x "
                        f"(goal >= {goal:.1f}x: {verdict})"
                    )
    return lines
