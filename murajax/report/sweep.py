"""A sweep's summary: one row per run, as `sweep.csv`, `sweep.md` and `sweep_roc.png`.

Read from the run folders alone (`summarise(workdir)`), so it can be rebuilt at any time; of
one split, `validation` when the runs evaluated it, else the first split that they did:

    sweep.csv       one row per run: its name, each swept field, the checkpoint evaluated,
                    study kappa and AUROC with their CIs, accuracy, sensitivity, specificity,
                    studies, the triage figures (ECE, AURC, specificity at sensitivity 0.95,
                    conformal coverage; `triage_columns`), the best holdout kappa of its
                    `metrics.jsonl`, wall time
    sweep.md        the same as a markdown table, with the config and the ROC plot
    sweep_roc.png   the runs' ROC curves (from `eval/<split>/predictions.csv`) overlaid

The runs are those of `sweep.json` (`murajax.sweep` writes it before training), or every
subfolder with a `config.json`.
"""

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from murajax import config as config_lib
from murajax import files, writers
from murajax import workdir as workdir_lib
from murajax.config_files import SweepError, format_value
from murajax.report.markdown import duration, format_score, table

METRIC_COLUMNS = (
    "step",
    "kappa",
    "kappa_ci_low",
    "kappa_ci_high",
    "auroc",
    "auroc_ci_low",
    "auroc_ci_high",
    "accuracy",
    "sensitivity",
    "specificity",
    "n",
    "ece",
    "aurc",
    "specificity_at_sensitivity_0.95",
    "conformal_alpha",
    "conformal_coverage",
    "best_holdout_kappa",
    "best_holdout_step",
    "wall_s",
    "status",
)


def triage_columns(body: Mapping[str, Any]) -> dict[str, Any]:
    """A run's triage figures (`metrics.json`'s `triage` section, `murajax.triage`): ECE
    (equal-width bins, after calibration where calibrated), the referral's AURC, the
    specificity at the 'sensitivity=0.95' operating point, and the split-conformal coverage
    at the first alpha; None where the run has none of them."""
    section = body.get("triage") or {}
    calibration = section.get("calibration", {})
    stage = calibration.get("after") or calibration.get("before") or {}
    point = section.get("operating_points", {}).get("sensitivity=0.95", {})
    conformal = section.get("conformal") or {}
    alpha = next(iter(conformal), None)
    return {
        "ece": stage.get("ece_width"),
        "aurc": section.get("referral", {}).get("aurc"),
        "specificity_at_sensitivity_0.95": point.get("specificity"),
        "conformal_alpha": None if alpha is None else float(alpha),
        "conformal_coverage": conformal[alpha]["split"]["coverage"] if alpha else None,
    }


def summary_split(run_workdirs: Sequence[str]) -> str | None:
    """The split a summary is of: `validation` if any run evaluated it, else `holdout`,
    else the first other by name; None when no run has an evaluation yet."""
    found = {split for path in run_workdirs for split in workdir_lib.evaluated_splits(path)}
    ordered = workdir_lib.in_split_order(found)
    return ordered[0] if ordered else None


def best_holdout(run_workdir: str) -> tuple[float | None, int | None]:
    """The best holdout study kappa in a run's `metrics.jsonl` and the step it came at."""
    best: tuple[float | None, int | None] = (None, None)
    for row in writers.read_metrics(run_workdir):
        kappa = row.get("kappa")
        if row.get("split") != "holdout" or not isinstance(kappa, int | float):
            continue
        if math.isfinite(kappa) and (best[0] is None or kappa > best[0]):
            best = (float(kappa), int(row["step"]))
    return best


def _dotted(values: Mapping[str, Any], field: str) -> Any:
    for part in field.split("."):
        if not isinstance(values, Mapping) or part not in values:
            return None
        values = values[part]
    return values


def _pair(values: Any) -> tuple[Any, Any]:
    if isinstance(values, Sequence) and len(values) == 2:
        return values[0], values[1]
    return None, None


def summary_row(
    workdir: str,
    name: str,
    fields: Sequence[str],
    split: str | None,
    *,
    overrides: Mapping[str, Any] | None = None,
    wall_s: float | None = None,
) -> dict[str, Any]:
    """One run's row: its name, the value of each swept field (from its `config.json`, else
    its overrides), and its `eval/<split>/metrics.json` study scores (None where missing;
    `status` says why)."""
    path = workdir_lib.sweep_run_dir(workdir, name)
    resolved = workdir_lib.read_json(workdir_lib.config_path(path)) or {}
    row: dict[str, Any] = {"name": name}
    for field in fields:
        value = _dotted(resolved, field)
        if value is None and overrides and field in overrides:
            value = overrides[field]
        row[field] = value
    row.update(dict.fromkeys(METRIC_COLUMNS))
    body = workdir_lib.read_json(workdir_lib.eval_file(path, split)) if split else None
    if not os.path.isdir(path):
        row["status"] = "not run"
    elif body is None:
        row["status"] = "not evaluated"
    else:
        study = body.get("study", {})
        row["step"] = body.get("step")
        row["kappa"] = study.get("kappa")
        row["kappa_ci_low"], row["kappa_ci_high"] = _pair(study.get("kappa_ci"))
        row["auroc"] = study.get("auroc")
        row["auroc_ci_low"], row["auroc_ci_high"] = _pair(study.get("auroc_ci"))
        for key in ("accuracy", "sensitivity", "specificity", "n"):
            row[key] = study.get(key)
        row.update(triage_columns(body))
        steps = workdir_lib.checkpoint_steps(path)
        target = resolved.get("train", {}).get("steps")
        finished = bool(steps) and target is not None and steps[-1] >= target
        row["status"] = "done" if finished else "partial"
    if os.path.isdir(path):
        row["best_holdout_kappa"], row["best_holdout_step"] = best_holdout(path)
    row["wall_s"] = round(wall_s, 1) if wall_s is not None else None
    return row


def discover_runs(workdir: str) -> list[dict[str, Any]]:
    """The runs of a sweep folder: from `sweep.json` if present, else every subfolder with a
    `config.json`, whose overrides are the fields in which the runs' configs differ."""
    state = workdir_lib.read_sweep_state(workdir)
    if state.get("runs"):
        return [{"name": r["name"], "overrides": r.get("overrides", {})} for r in state["runs"]]
    names = sorted(
        n
        for n in (os.listdir(workdir) if os.path.isdir(workdir) else [])
        if os.path.isfile(workdir_lib.config_path(os.path.join(workdir, n)))
    )
    configs = {
        n: _flatten(config_lib.lift_model_options(_read_config_json(workdir, n))) for n in names
    }
    keys = sorted({k for c in configs.values() for k in c})
    differ = [k for k in keys if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    return [{"name": n, "overrides": {k: configs[n].get(k) for k in differ}} for n in names]


def _read_config_json(workdir: str, name: str) -> dict[str, Any]:
    return workdir_lib.read_json(workdir_lib.config_path(os.path.join(workdir, name)))


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def summary_rows(
    workdir: str, runs: Sequence[Mapping[str, Any]], split: str | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """`(split, rows)` for `runs` (dicts with `name` and `overrides`) in `workdir`. `split`
    None picks one with `summary_split`."""
    if split is None:
        split = summary_split([workdir_lib.sweep_run_dir(workdir, r["name"]) for r in runs])
    fields: list[str] = []
    for r in runs:
        fields += [f for f in r["overrides"] if f not in fields]
    wall = workdir_lib.read_sweep_state(workdir).get("wall_s", {})
    rows = [
        summary_row(
            workdir,
            r["name"],
            fields,
            split,
            overrides=r["overrides"],
            wall_s=wall.get(r["name"]),
        )
        for r in runs
    ]
    return split, rows


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple | list):
        return format_value(value)
    return str(value)  # floats as repr: they read back exactly


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """`rows` as CSV (the columns of the first row); None is an empty cell."""
    columns = list(rows[0]) if rows else ["name", *METRIC_COLUMNS]
    with files.replacing(path) as part, open(part, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(columns)
        for row in rows:
            out.writerow([_csv_cell(row.get(c)) for c in columns])
    return path


def _score(value: Any, low: Any = None, high: Any = None) -> str:
    return format_score(value, None if low is None else (low, high))


def _coverage(value: Any, alpha: Any) -> str:
    """'0.912 (alpha 0.05)', or '' without conformal sets."""
    return "" if value is None else f"{_score(value)} (alpha {alpha:g})"


def markdown_rows(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> tuple[list, list]:
    """`(header, rows)` of the summary table as text cells."""
    header = ["run", *fields, "checkpoint", "kappa [CI]", "AUROC [CI]", "accuracy"]
    header += ["ECE", "AURC", "spec. @ sens. 0.95", "conformal coverage"]
    header += ["best holdout kappa", "studies", "train time", "status"]
    cells = []
    for row in rows:
        wall = row.get("wall_s")
        cells.append(
            [
                row["name"],
                *(format_value(row.get(f)) for f in fields),
                "" if row.get("step") is None else row["step"],
                _score(row.get("kappa"), row.get("kappa_ci_low"), row.get("kappa_ci_high")),
                _score(row.get("auroc"), row.get("auroc_ci_low"), row.get("auroc_ci_high")),
                _score(row.get("accuracy")),
                _score(row.get("ece")),
                _score(row.get("aurc")),
                _score(row.get("specificity_at_sensitivity_0.95")),
                _coverage(row.get("conformal_coverage"), row.get("conformal_alpha")),
                _score(row.get("best_holdout_kappa")),
                "" if row.get("n") is None else row["n"],
                duration(wall),
                row.get("status") or "",
            ]
        )
    return header, cells


def roc_inputs(
    workdir: str, names: Sequence[str], split: str | None
) -> dict[str, tuple[list[int], list[float]]]:
    """`{name: (labels, probs)}` from each run's `eval/<split>/predictions.csv` (if any; runs
    on a dataset of more than two classes have no one ROC curve and are left out)."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    if split is None:
        return curves
    for name in names:
        path = workdir_lib.eval_file(
            workdir_lib.sweep_run_dir(workdir, name), split, workdir_lib.STUDY_PREDICTIONS_FILE
        )
        if not os.path.isfile(path):
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and "prob" not in rows[0]:  # more than two classes: no single ROC curve
            continue
        curves[name] = ([int(r["label"]) for r in rows], [float(r["prob"]) for r in rows])
    return curves


def write_summary(
    workdir: str,
    runs: Sequence[Mapping[str, Any]],
    *,
    spec: str | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Writes `sweep.csv`, `sweep.md` and `sweep_roc.png` into `workdir` for `runs` (dicts
    with `name` and `overrides`). Returns `{"split", "rows", "table", and the paths}`."""
    from murajax import plots  # here: matplotlib is slow to import

    split, rows = summary_rows(workdir, runs, split)
    fields = [c for c in (rows[0] if rows else {}) if c != "name" and c not in METRIC_COLUMNS]
    csv_path = write_csv(os.path.join(workdir, workdir_lib.SWEEP_CSV), rows)
    header, cells = markdown_rows(rows, fields)
    text = table(header, cells)
    curves = roc_inputs(workdir, [r["name"] for r in runs], split)
    roc_path = os.path.join(workdir, workdir_lib.SWEEP_ROC)
    if curves:
        plots.overlaid_roc_curves(
            curves, roc_path, title=f"ROC per study, {split} ({len(curves)} runs)"
        )
    elif os.path.exists(roc_path):
        os.remove(roc_path)  # no evaluation left to draw: no stale plot
    linked = [[f"[{c[0]}](<{c[0]}/{workdir_lib.REPORT_FILE}>)", *c[1:]] for c in cells]
    lines = [
        f"# Sweep{f': `{spec}`' if spec else ''}",
        "",
        f"{len(rows)} runs in `{os.path.abspath(workdir)}`, each a run workdir named after the"
        " fields it changes. Scores are per study on the"
        f" **{split or 'no'}** split (the checkpoint that `eval.checkpoint` selects), with"
        " bootstrap confidence intervals; the best holdout kappa is the best of the periodic"
        " holdout evaluations during training (holdout: the patient-disjoint slice of train"
        " used for model selection). Train time counts only sweep invocations that trained.",
        "",
        table(header, linked),
        "",
    ]
    if curves:
        lines += [f"![ROC curves of the runs]({workdir_lib.SWEEP_ROC})", ""]
    md_path = os.path.join(workdir, workdir_lib.SWEEP_MD)
    workdir_lib.write_text(md_path, "\n".join(lines))
    return {
        "split": split,
        "rows": rows,
        "table": text,
        "csv": csv_path,
        "md": md_path,
        "roc": roc_path if curves else None,
    }


def summarise(workdir: str, *, split: str | None = None) -> dict[str, Any]:
    """Rebuilds the summary of a sweep folder from its run folders alone (no training): the
    runs of its `sweep.json`, or every subfolder with a `config.json` (`discover_runs`)."""
    runs = discover_runs(workdir)
    if not runs:
        raise SweepError(f"{workdir} holds no sweep: no sweep.json and no run with config.json")
    return write_summary(
        workdir, runs, spec=workdir_lib.read_sweep_state(workdir).get("config"), split=split
    )
