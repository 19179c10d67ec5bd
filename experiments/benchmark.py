"""Is murajax the fastest way to train this? `python -m experiments.benchmark [--json=FILE]
[--quick]` measures it in one run, on this machine.

- Train steps of murajax's real models through the real step (`murajax.steps.train_step`
  placed by `murajax.parallel.data_parallel(..., 'jit', make_mesh())`), float32 and bfloat16:
  workload C (a 4-block CNN at 128 px, batch 32), the quickstart CNN (64 px), VGG16 at 128 (A)
  and 224, DenseNet-169 at 224 and the multi-view study model; `--quick` runs C and A only
  (under 10 minutes on 2 cores; the full run under an hour).
- Peers in the same run, interleaved with murajax: the processes of a row (murajax's and each
  peer's) compile and warm up one at a time, then take turns timing short stretches of steps
  over `--rounds` rounds in a rotating order (`--rounds=1`: one after another); same
  architecture, batch, input, loss and Adam, each in its own process: Keras 3 on TensorFlow
  and on JAX (float32 and 'mixed_bfloat16'; the multi-view model too), and PyTorch eager and
  `torch.compile` (channels_last; bfloat16 by autocast) when torch is importable (the
  optional `bench` extra). 'murajax-xla' (`model.conv_impl='xla'`) appears next to 'murajax'
  when murajax has that field.
- The matmul peak of this machine (float32, and bfloat16 with float32 results; the better of
  a measurement before and one after the train steps), so that each row's GFLOP/s (XLA's
  cost analysis for murajax, an analytic count for the peers) is also a fraction of the peak.
- The input pipeline alone (decode + resize + augment + batch) on `mura_synthetic` and on its
  PNGs re-encoded at 512 px, in the main process and with one worker per core, against the
  train step each one feeds.
- The data-parallel table (not with `--quick`): 'jit' on 1 device against 'jit' and 'pmap' on
  2 fake CPU devices.

Timings are medians of single steps timed over at least `--min_seconds` (split over the
rounds) after a compile step and a warm-up step; each row also keeps every turn's median.
A peer never holds up the run: its process has a time budget for the row (`--peer_budget_s`
or 3x murajax's time in the row, whichever is less, but at least a floor; at most its part of
the run's `--time_limit_s`) and takes the steps that fit, down to one timed step or only its
first; its row then says it was cut short (a footnote in the table, `note` in the JSON).
Before the train steps the run prints its estimated length, and after each row how far it is.
Progress goes to stderr, the tables to stdout, and with `--json=FILE`
`{"machine", "matmul_gflops", "train_step", "input_pipeline", "settings", "data_parallel"}`
to FILE (rewritten after every row, so an interrupted run keeps what it measured).

SIGTERM, SIGINT (Ctrl-C) or SIGHUP kill every measurement process at once (each in a process
group of its own; they also die with the benchmark if it is killed: `runner.spawn`), mark
FILE's settings `"interrupted": "SIGTERM"` (its rows are those measured so far), print one
line and exit with status 128 + the signal.
"""

import dataclasses
import json
import os
import signal
import sys
import time

from absl import app, flags, logging

from experiments import cli
from experiments.bench import runner, suite, workloads
from murajax import files

# Each flag is the `suite.Settings` field of the same name.
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
flags.DEFINE_bool(
    "quick",
    False,
    "Workloads C and A only, float32 and bfloat16, every available peer, the input pipeline "
    "at 128 px only, shorter timing windows (--min_seconds 2) and a 540 s time limit.",
)
flags.DEFINE_float(
    "min_seconds", None, "Timed seconds per row, at least (default 6; 2 with --quick)."
)
flags.DEFINE_integer("min_steps", None, "Timed steps per row, at least (default 3).")
flags.DEFINE_integer(
    "rounds",
    None,
    "Interleaved rounds per row (default 3): the row's frameworks compile one at a time, then "
    "take turns timing min_seconds/rounds each, so a shared machine's slow spells fall on all "
    "alike. Their processes are alive at once (memory: the sum of their peaks); 1 measures "
    "one process after another.",
)
flags.DEFINE_float(
    "time_limit_s",
    None,
    "The run's time limit in seconds (default 3300; 540 with --quick; 0: none), shared among "
    "the rows by their estimated time: the peers' budgets shrink to keep to it (murajax's "
    "steps are not cut, so a machine far slower than the estimate can overrun it).",
)
flags.DEFINE_float(
    "peer_budget_s",
    None,
    "Most seconds a peer's process may take in a row, its start and first step included "
    "(default 400; 120 with --quick; 0: no cap). Its budget is also at most 3x the row's "
    "murajax process, but at least 60 s (40 with --quick), and at most its part of the time "
    "limit. A peer takes the steps that fit (down to one timed step, or its first step only, "
    "not compared; under 10 s it is not started) and its row says it was cut short.",
)
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps per row, the compile step included.")
flags.DEFINE_list(
    "only",
    None,
    "Frameworks to measure (default: murajax, murajax-xla if it exists, keras-tf, keras-jax, "
    "torch-eager, torch-compile); also keras-tf-xla and murajax-direct.",
)
flags.DEFINE_list(
    "models", None, "Workloads to measure: C, quickstart, A, A224, densenet169, multiview."
)
flags.DEFINE_list("dtypes", list(workloads.DTYPES), "Computation dtypes.")
flags.DEFINE_bool("pipeline", True, "Time the input pipeline.")
flags.DEFINE_string(
    "cache", "memory", "Also time the pipeline with this `data.cache` (when murajax has it)."
)
flags.DEFINE_bool("data_parallel", None, "The data-parallel table (default: unless --quick).")
flags.DEFINE_string("dataset", "mura_synthetic", "TFDS dataset the pipeline reads.")
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's).")
flags.DEFINE_integer(
    "image_size", None, "Override every workload's image size (e.g. VGG16 at 320)."
)
flags.DEFINE_integer("batch_size", None, "Override every workload's batch size.")
flags.DEFINE_integer(
    "matmul_size", None, "Side of the matmul-peak matrices (default: 2048 on CPU, 8192 on GPU)."
)
flags.DEFINE_integer("steps", 30, "Timed steps per data-parallel setting.")
flags.DEFINE_bool(
    "inference",
    False,
    "Instead of train steps: images/s of inference at batch 1 and 32, murajax's eval step "
    "against a model package's StableHLO and ONNX (onnxruntime) and Keras-TF "
    "(experiments/bench/inference.py); --models picks workloads (default quickstart, "
    "densenet169; --quick: quickstart).",
)


def run_inference() -> None:
    """`--inference`: the inference table on stdout, and its rows in `--json`."""
    from experiments.bench import inference

    args = flags.FLAGS
    min_seconds = args.min_seconds or (2.0 if args.quick else 6.0)
    rows = inference.run(args.models, args.quick, min_seconds, args.rounds or 3)
    print(inference.table(rows))
    if args.json:
        figures = {"machine": runner.machine_info(), "inference": rows}
        with files.replacing(args.json) as part, open(part, "w") as f:
            json.dump(figures, f, indent=2)


def mark_interrupted(path: str, signum: int, since: float) -> bool:
    """Records in the benchmark's JSON file `path`, if this run wrote it (modified at or
    after `since`, a `time.time()`), that a signal stopped the run: `settings.interrupted` =
    the signal's name; rewritten at once (`files.replacing`). Returns whether it did."""
    try:
        if os.path.getmtime(path) < since:
            return False  # an earlier run's file: this one measured nothing yet
        with open(path) as f:
            figures = json.load(f)
    except (OSError, ValueError):
        return False
    figures.setdefault("settings", {})["interrupted"] = signal.Signals(signum).name
    with files.replacing(path) as part, open(part, "w") as f:
        json.dump(figures, f, indent=2)
    return True


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # TFDS and XLA log every open at INFO
    if flags.FLAGS.inference:
        run_inference()
        return
    fields = dataclasses.fields(suite.Settings)
    settings = suite.Settings(**{f.name: flags.FLAGS[f.name].value for f in fields})
    started = time.time()
    try:
        with runner.stopping_on_signals():
            suite.run(settings)
    except suite.SettingsError as e:
        cli.fail(str(e))
    except Exception:
        if runner.stop_signal() is None:
            raise  # a bug: its traceback
        # else a measurement that a signal ended (`runner.Interrupted`, or a process killed)
    signum = runner.stop_signal()
    if signum is not None:
        if not settings.json:
            where = "nothing was saved (no --json)"
        elif mark_interrupted(settings.json, signum, started):
            where = f"the figures measured so far are in {settings.json}"
        else:
            where = f"nothing was measured yet, {settings.json} not written"
        print(
            f"[benchmark] interrupted by {signal.Signals(signum).name}: its measurement"
            f" processes were stopped; {where}",
            file=sys.stderr,
        )
        sys.exit(128 + signum)


if __name__ == "__main__":
    app.run(main)
