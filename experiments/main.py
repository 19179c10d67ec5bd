"""Trains and evaluates one config: `python -m experiments.main --config=... --workdir=...`.

    python -m experiments.main --config=experiments/configs/quickstart.py --workdir=/tmp/qs \
        --config.optim.learning_rate=3e-4

(`python -m` runs `experiments/__init__.py` first, which sets fast XLA:CPU flags.)
Rerunning on the same workdir resumes from its newest checkpoint; a finished run is only
evaluated again.

SIGTERM or SIGINT (Ctrl-C) finishes the step in flight, saves a checkpoint at it, prints
one line saying how to resume and exits with status 143 or 130 (a second signal exits at
once). A diverged run (`train.on_nonfinite`) is one `error:` line and exit status 1.
"""

from absl import flags, logging
from ml_collections import config_flags

from experiments import cli
from murajax import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (`path.py[:arg]`).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for multi-host training."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
cli.define_compilation_cache_flag()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    # An unwritable workdir fails before any compute (this creates nothing).
    cli.check_writable(_WORKDIR.value, f"--workdir={_WORKDIR.value}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    import jax

    cli.enable_compilation_cache()  # a rerun or resume loads its compiled steps

    if _COORDINATOR.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    from murajax import train

    train.train_and_evaluate(cli.loaded_config(_CONFIG), _WORKDIR.value)


if __name__ == "__main__":
    cli.run_main(main, errors.USER_ERRORS)
