"""Regenerates the results page (`docs/results.md`) from sweep folders.

    python -m experiments.results --sweeps=W1,W2,... [--output=docs/results.md]
    python -m experiments.results --sweeps=baseline=W1,pretrained=W4 ...  # name the section

For each thesis experiment (5.1 baseline, 5.2 image size, 5.3 regularisation, 5.4
pre-trained models, 2.3.4 optimisers) the page has the command that runs it, what it
varies, the table of its runs' study kappa and AUROC with confidence intervals (from the
sweep's summary, `murajax.report.sweep.summarise`, which also rewrites `W/sweep.md`), its ROC
overlay (`W/sweep_roc.png`, copied beside the page), the machine and the date. A folder
is matched to its experiment by the config named in its `sweep.json` (or by `name=W`);
that config must be one of murajax's own (`experiments/configs/`), since config files are
Python that runs: a sweep.json that names any other file is refused in one line. An
experiment without a folder, or whose runs did not run, says so instead of a table (5.4
also says whether ImageNet's weights files are in the cache). Between the markers

    <!-- interpretation:NAME -->  ...  <!-- /interpretation:NAME -->

a person writes what each result shows; regenerating keeps what is there.
"""

import os

from absl import flags

from experiments import cli
from murajax import errors

_SWEEPS = flags.DEFINE_list(
    "sweeps", [], "Sweep folders (W, matched by its sweep.json) or NAME=W, by commas."
)
_OUTPUT = flags.DEFINE_string("output", "docs/results.md", "The page to (re)write.")
_MACHINE = flags.DEFINE_string("machine", None, "The machine the runs ran on (default: this).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported here: the page reads sweeps through murajax.report (jax, seconds); --help is fast.
    from experiments import results_page
    from murajax import workdir as workdir_lib

    folders = results_page.assign_folders(_SWEEPS.value)
    output = os.path.dirname(os.path.abspath(_OUTPUT.value))
    workdir_lib.check_writable(output, f"--output={_OUTPUT.value}")
    results_page.write_page(folders, _OUTPUT.value, machine_text=_MACHINE.value)
    shown = ", ".join(f"{k}={v}" for k, v in folders.items()) or "no sweep folders"
    print(f"[results] wrote {_OUTPUT.value} from {shown}")


if __name__ == "__main__":
    cli.run_main(main, errors.USER_ERRORS)
