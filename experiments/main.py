"""Trains and evaluates one config: `python -m experiments.main --config=... --workdir=...`.

    python -m experiments.main --config=experiments/configs/quickstart.py --workdir=/tmp/qs \
        --config.optim.learning_rate=3e-4

(`python -m` runs `experiments/__init__.py` first, which sets fast XLA:CPU flags.)
`--config.SECTION.FIELD=VALUE` changes one field of the file's config (parsed by the field's
type: `murajax.config_files`). Rerunning on the same workdir resumes from its newest
checkpoint; a finished run is only evaluated again. While it runs, it holds the workdir's
lock: a second command writing the same workdir is refused in one line naming this one
(`murajax.workdir_lock`). A non-empty folder that is not a murajax workdir is refused with
nothing written.

SIGTERM or SIGINT (Ctrl-C) finishes the step in flight, saves a checkpoint at it, prints
one line saying how to resume and exits with status 143 or 130 (a second signal exits at
once). A diverged run (`train.on_nonfinite`) is one `error:` line and exit status 1.
"""

from absl import flags, logging

from experiments import cli
from murajax import errors

_CONFIG = flags.DEFINE_string(
    "config", None, "Config file (`path.py[:arg]`); `--config.SECTION.FIELD=VALUE` changes a field."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for multi-host training."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
cli.define_compilation_cache_flag()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    overrides = cli.config_overrides(argv)
    # Here, not at the top: these import jax (seconds), and --help is fast. Nothing of them
    # starts a device before `jax.distributed.initialize`.
    import jax

    from murajax import config_files, train
    from murajax import workdir as workdir_lib

    config = cli.loaded(lambda spec: config_files.load_config(spec, overrides), _CONFIG.value)
    # An unwritable workdir, or someone else's folder, fails before any compute (this
    # creates nothing; `train_and_evaluate` checks again once it holds the workdir's lock).
    workdir_lib.check_writable(_WORKDIR.value, f"--workdir={_WORKDIR.value}")
    workdir_lib.check_may_write(_WORKDIR.value, f"--workdir={_WORKDIR.value}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    cli.enable_compilation_cache()  # a rerun or resume loads its compiled steps
    if _COORDINATOR.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    cli.run_main(main, errors.USER_ERRORS, config_overrides=True)
