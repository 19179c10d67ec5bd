"""Trains a sweep of runs, then summarises them (`python -m experiments.sweep`).

    python -m experiments.sweep --config=experiments/configs/image_size.py --workdir=W
    python -m experiments.sweep --config=experiments/configs/optimizers.py:smoke --workdir=W \
        --dry_run                      # lists the runs and their overrides, trains nothing
    python -m experiments.sweep --config=... --workdir=W --only=2,3  # or run names
    python -m experiments.sweep --config=... --workdir=W --summary_only   # rebuild the summary

The config file defines `get_config(arg=None)` and `get_sweep(arg=None)` (a list of dicts of
dotted field -> value; see `murajax.sweep`). Every run is validated before any training.
Run i trains in `W/<its name>/` (e.g. `W/data.image_size=64/`), a normal workdir for
`experiments.evaluate` and `experiments.predict`. Rerunning resumes: finished runs are only
evaluated again, an interrupted one continues from its newest checkpoint. The summary,
`W/sweep.csv`, `W/sweep.md` and `W/sweep_roc.png`, is of the validation split (or the first
split the runs evaluated; `--split` to choose; `murajax.report.sweep`) and is printed at the
end. W must be new, empty or a sweep's folder; while a sweep writes it (training or the
summary), another command on W is refused in one line (`murajax.workdir_lock`).
"""

import contextlib
import os

from absl import flags, logging

from experiments import cli
from murajax import errors

_CONFIG = flags.DEFINE_string("config", None, "Sweep config file (`path.py[:arg]`).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the sweep: one workdir per run.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the runs and their overrides; train nothing.")
_ONLY = flags.DEFINE_string(
    "only", "", "Train only these runs: names as --dry_run prints them, or run numbers, by commas."
)
_SPLIT = flags.DEFINE_string(
    "split", None, "Split the summary is of (default: validation if evaluated, else the first)."
)
_SUMMARY_ONLY = flags.DEFINE_bool(
    "summary_only", False, "Rebuild the summary from W's run folders; train nothing."
)
cli.define_compilation_cache_flag()
flags.mark_flags_as_required(["workdir"])

STATUS_NOTES = {"new": "new", "partial": "resumes from a checkpoint", "finished": "finished"}


def print_summary(summary: dict) -> None:
    """The summary table and where its files are."""
    print(f"[sweep] summary of the {summary['split'] or '(no evaluated)'} split:")
    print(summary["table"])
    written = [summary["csv"], summary["md"]] + ([summary["roc"]] if summary["roc"] else [])
    print(f"[sweep] wrote {', '.join(written)}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    # Here, not at the top: murajax imports jax (seconds), and --help is fast.
    from murajax import sweep as sweep_lib
    from murajax import workdir as workdir_lib
    from murajax import workdir_lock
    from murajax.report import sweep as sweep_report

    workdir = _WORKDIR.value
    if not _DRY_RUN.value:
        # An unwritable workdir fails before any compute (this creates nothing).
        workdir_lib.check_writable(workdir, f"--workdir={workdir}")
        # Someone else's folder too, before the lock below writes its file there.
        workdir_lib.check_may_write(workdir, f"--workdir={workdir}", sweep=True)
    if _SUMMARY_ONLY.value:
        # (a folder that does not exist holds no sweep: `summarise` says so, creating nothing)
        with workdir_lock.holding(workdir) if os.path.isdir(workdir) else contextlib.nullcontext():
            print_summary(sweep_report.summarise(workdir, split=_SPLIT.value))
        return
    if not _CONFIG.value:
        cli.fail("--config=path.py[:arg] is required (unless --summary_only)")
    sweep = cli.loaded_sweep(_CONFIG.value)
    only = sweep_lib.parse_only(_ONLY.value, sweep.runs)
    runs = sweep_lib.select_runs(sweep.runs, only)
    print(f"[sweep] {sweep.spec}: {len(runs)} of {len(sweep.runs)} runs in {workdir}")
    if _DRY_RUN.value:
        for index, run in enumerate(runs, start=1):
            status = STATUS_NOTES[sweep_lib.run_status(workdir, run)]
            print(f"[sweep] run {index}/{len(runs)} {run.name} ({status})")
            print(f"    workdir: {sweep_lib.run_dir(workdir, run)}")
            for field, value in run.overrides.items():
                print(f"    {field} = {value!r}")
        return
    cli.enable_compilation_cache()  # runs of one shape, and a resumed sweep, compile once
    sweep_lib.run_sweep(sweep, workdir, only=only)  # (holds W's lock while it trains)
    runs_info = [{"name": r.name, "overrides": r.overrides} for r in sweep.runs]
    with workdir_lock.holding(workdir):
        summary = sweep_report.write_summary(
            workdir, runs_info, spec=sweep.spec, split=_SPLIT.value
        )
    print_summary(summary)


if __name__ == "__main__":
    cli.run_main(main, errors.USER_ERRORS)
