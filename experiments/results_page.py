"""The results page, `docs/results.md`, built from sweep folders (`python -m
experiments.results` is its flags).

For each thesis experiment (`EXPERIMENTS`: 5.1 baseline, 5.2 image size, 5.3
regularisation, 5.4 pre-trained models, 2.3.4 optimisers) the page has the command that runs
it, what it varies, the table of its runs' study kappa and AUROC with confidence intervals
(from the sweep's summary, `murajax.report.sweep.summarise`, which also rewrites `W/sweep.md`), its
ROC overlay (`W/sweep_roc.png`, copied beside the page), the machine and the date.
`assign_folders` matches a folder to its experiment by the config named in its `sweep.json`
(or by `name=W`). An experiment without a folder, or whose runs did not run, says so instead
of a table (5.4 also says whether ImageNet's weights files are in the cache). `write_page`
keeps what a person wrote between each pair of interpretation markers.

Config files are Python that runs: the page runs only the project's own sweep configs
(`CONFIGS_DIR`), and refuses a sweep.json that names any other file (`sweep_config`).
"""

import dataclasses
import datetime
import os
import platform
import re
import shutil
from collections.abc import Mapping, Sequence

from murajax import config_files, errors
from murajax import sweep as sweep_lib
from murajax import workdir as workdir_lib
from murajax.models import weights_hub
from murajax.report import markdown
from murajax.report import sweep as sweep_report

SYNTHETIC_NOTE = (
    "**`mura_synthetic` is not MURA.** Its images are drawn procedurally (murajax's offline"
    " stand-in with MURA's features and splits), so these numbers test the code and compare"
    " settings on that data; they say nothing about radiographs. The thesis's and the MURA"
    " paper's numbers come from real MURA (the `:mura` variants, GPU runs)."
)
INTERPRETATION_TODO = (
    "_Not written yet: two sentences on what this shows, and how it compares with the"
    " thesis's and the MURA paper's findings._"
)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One thesis experiment: its page section, config file and what its runs vary."""

    name: str
    section: str
    title: str
    config: str
    varies: str


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "baseline",
        "5.1",
        "Baseline performance",
        "experiments/configs/baseline.py",
        "nothing: one run, the ab-initio CNN (quickstart's) that the other sections vary.",
    ),
    Experiment(
        "image_size",
        "5.2",
        "Image size",
        "experiments/configs/image_size.py",
        "`data.image_size` (32, 64, 128 px on mura_synthetic), the CNN otherwise as the baseline.",
    ),
    Experiment(
        "regularisation",
        "5.3",
        "Regularisation",
        "experiments/configs/regularisation.py",
        "one regulariser at a time on the un-regularised baseline (dropout, L2, flips,"
        " rotations, batch norm off), then all of them.",
    ),
    Experiment(
        "pretrained",
        "5.4",
        "Pre-trained models",
        "experiments/configs/pretrained.py",
        "the model at one budget: the CNN from scratch, VGG16 from ImageNet frozen (feature"
        " extraction) and fine-tuned (backbone at a tenth of the head's learning rate),"
        " DenseNet-169 from ImageNet fine-tuned (the MURA paper's recipe).",
    ),
    Experiment(
        "optimizers",
        "2.3.4",
        "Optimisers",
        "experiments/configs/optimizers.py",
        "the optimiser (SGD with momentum, RMSProp, Adam), each with its own learning rate.",
    ),
)
BY_NAME = {e.name: e for e in EXPERIMENTS}

CONFIGS_DIR = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"))
"""The project's sweep configs (`experiments/configs/`): the only config files the page runs."""

PROJECT_ROOT = os.path.dirname(os.path.dirname(CONFIGS_DIR))
"""The folder that specs such as `experiments/configs/baseline.py` are relative to."""

_MARKER = re.compile(
    r"<!-- interpretation:(?P<name>[\w.-]+) -->\n"
    r"(?P<text>.*?)\n?<!-- /interpretation:(?P=name) -->",
    re.DOTALL,
)


# --------------------------------------------------------------------------- inputs


def experiment_of(spec: str | None) -> str | None:
    """The experiment a sweep's config spec (`experiments/configs/NAME.py[:arg]`) runs."""
    if not spec:
        return None
    path, _ = config_files.split_spec(spec)
    name = os.path.splitext(os.path.basename(path))[0]
    return name if name in BY_NAME else None


def project_config(spec: str) -> str | None:
    """`spec` (`path.py[:arg]`) with its path made the real path of one of the project's
    configs (a file in `CONFIGS_DIR`), the path read from the current folder or else from
    `PROJECT_ROOT`; None if it names any other file."""
    path, arg = config_files.split_spec(spec)
    for base in (os.getcwd(), PROJECT_ROOT):
        real = os.path.realpath(os.path.join(base, path))  # an absolute path stays itself
        if os.path.dirname(real) == CONFIGS_DIR and os.path.isfile(real):
            return real if arg is None else f"{real}:{arg}"
    return None


def sweep_config(folder: str) -> str | None:
    """The config spec that `folder`'s sweep.json names, as written; None without one.

    Raises a one-line `ConfigError` naming the sweep.json and the file if that is not one of
    the project's configs (`project_config`): config files are Python that runs, and a
    sweep folder may come from anywhere.
    """
    spec = workdir_lib.read_sweep_state(folder).get("config")
    if spec is None:
        return None
    if not isinstance(spec, str) or project_config(spec) is None:
        where = os.path.join(folder, workdir_lib.SWEEP_STATE_FILE)
        named = config_files.split_spec(spec)[0] if isinstance(spec, str) else repr(spec)
        raise errors.ConfigError(
            f"{where} names the config {named}, which is not one of murajax's sweep configs"
            f" in {CONFIGS_DIR}: the results page runs only those (config files are Python"
            " that runs)"
        )
    return spec


def assign_folders(entries: Sequence[str]) -> dict[str, str]:
    """`{experiment: folder}` from `--sweeps` entries: `W` (matched by its sweep.json) or
    `name=W`. Raises `ConfigError` for an unknown name, a folder that cannot be matched, a
    sweep.json that names a config other than the project's (`sweep_config`), or two
    folders for one experiment."""
    assigned: dict[str, str] = {}
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        name, sep, folder = entry.partition("=")
        if sep and name in BY_NAME:
            experiment = name
            sweep_config(folder)  # refused here, before anything is written
        elif sep and not os.path.exists(entry):
            valid = ", ".join(BY_NAME)
            raise errors.ConfigError(f"--sweeps: unknown experiment {name!r} (known: {valid})")
        else:
            folder = entry
            experiment = experiment_of(sweep_config(folder))
            if experiment is None:
                raise errors.ConfigError(
                    f"--sweeps: {folder} has no sweep.json naming one of the thesis's configs;"
                    f" name its experiment: NAME={folder} (NAME: {', '.join(BY_NAME)})"
                )
        if experiment in assigned:
            raise errors.ConfigError(
                f"--sweeps: two folders for {experiment}: {assigned[experiment]} and {folder}"
            )
        assigned[experiment] = folder
    return assigned


def read_interpretations(page: str) -> dict[str, str]:
    """The text between each pair of interpretation markers of an existing page."""
    return {m["name"]: m["text"].strip() for m in _MARKER.finditer(page)}


def machine() -> str:
    """This machine in one line: CPU, cores, OS, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = models[0] if models else cpu
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}"
    )


def runs_finished(folder: str, names: Sequence[str]) -> str | None:
    """When the runs' newest evaluation was written (UTC date), None without any."""
    times = []
    for name in names:
        run = workdir_lib.sweep_run_dir(folder, name)
        times += [
            os.path.getmtime(workdir_lib.eval_file(run, split))
            for split in workdir_lib.evaluated_splits(run)
        ]
    if not times:
        return None
    return datetime.datetime.fromtimestamp(max(times), datetime.UTC).strftime("%Y-%m-%d")


def missing_imagenet_files(spec: str | None) -> list[str]:
    """The ImageNet weights files that `spec`'s runs name ("imagenet") and that are not in
    murajax's cache (where a run would download them); reads the sweep without jax. Only
    the project's configs are run (`project_config`); for any other file, nothing."""
    loadable = project_config(spec) if spec else None
    if loadable is None:
        return []
    try:
        loaded = sweep_lib.load_sweep(loadable)
    except (errors.ConfigError, FileNotFoundError, OSError):
        return []
    needed = {
        r.config.model.name for r in loaded.runs if r.config.model.weights == weights_hub.IMAGENET
    }
    return [
        weights_hub.cached_path(weights_hub.IMAGENET_FILES[m])
        for m in sorted(needed)
        if m in weights_hub.IMAGENET_FILES
        and not os.path.isfile(weights_hub.cached_path(weights_hub.IMAGENET_FILES[m]))
    ]


# --------------------------------------------------------------------------- sections


def command(spec: str) -> str:
    """The command that runs (or resumes) the sweep `spec`."""
    return f"python -m experiments.sweep --config={spec} --workdir=W"


def section_body(
    experiment: Experiment, folder: str | None, out_dir: str
) -> tuple[list[str], str | None]:
    """The lines of one experiment's section after its heading and what it varies, and the
    config spec its folder ran (None without one). Writes the ROC figure into `out_dir`."""
    if folder is None:
        return ["Not run: no sweep folder was given for this experiment (`--sweeps`)."], None
    if not os.path.isdir(folder):
        return [f"Not run: the sweep folder `{folder}` does not exist."], None
    spec = sweep_config(folder)
    runs = sweep_report.discover_runs(folder)
    if not runs:
        return [f"Not run: `{folder}` holds no sweep (no sweep.json, no run folder)."], spec
    summary = sweep_report.summarise(folder)
    rows = summary["rows"]
    evaluated = [r for r in rows if r.get("kappa") is not None]
    lines: list[str] = []
    if _variant(spec) == "smoke":
        lines += ["**A `:smoke` sweep: a few steps on `mura_synthetic/tiny`, not a result.**", ""]
    if not evaluated:
        lines.append(f"No run of `{folder}` has been evaluated, so there is no table.")
        missing = missing_imagenet_files(spec)
        if missing:
            lines.append(
                "Its pretrained runs need ImageNet's weights, which are not in the cache and"
                " could not be downloaded here: " + ", ".join(f"`{p}`" for p in missing) + "."
            )
        return lines, spec
    split = summary["split"]
    fields = [c for c in rows[0] if c != "name" and c not in sweep_report.METRIC_COLUMNS]
    header, cells = sweep_report.markdown_rows(rows, fields)
    finished = runs_finished(folder, [r["name"] for r in runs]) or "(unknown)"
    lines += [
        f"Study-level scores on the **{split}** split"
        + (" (the runs evaluated no validation split)" if split != "validation" else "")
        + ", with 95% bootstrap confidence intervals; each row is one run folder of"
        f" `{os.path.abspath(folder)}`. Runs finished {finished} (UTC).",
        "",
        markdown.table(header, cells),
        "",
    ]
    not_done = [r["name"] for r in rows if r.get("status") != "done"]
    if not_done:
        lines += [f"Not finished: {', '.join(f'`{n}`' for n in not_done)}.", ""]
    if summary.get("roc"):
        figure = f"{experiment.name}_roc.png"
        os.makedirs(os.path.join(out_dir, "results"), exist_ok=True)
        shutil.copyfile(summary["roc"], os.path.join(out_dir, "results", figure))
        lines += [f"![ROC curves of the {experiment.title.lower()} runs](results/{figure})", ""]
    return lines, spec


def _variant(spec: str | None) -> str | None:
    return config_files.split_spec(spec)[1] if spec else None


def render_page(
    folders: Mapping[str, str],
    out_dir: str,
    *,
    interpretations: Mapping[str, str] | None = None,
    machine_text: str | None = None,
    date: str | None = None,
) -> str:
    """The whole page as markdown; ROC figures are copied into `<out_dir>/results/`."""
    interpretations = interpretations or {}
    date = date or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    lines = [
        "# Results",
        "",
        "The thesis's experiments (chapter 5 and the optimisers of 2.3.4) as murajax runs them."
        " The tables are generated from the sweep folders; do not edit them by hand:",
        "",
        "    python -m experiments.results --sweeps=W1,W2,... --output=docs/results.md",
        "",
        SYNTHETIC_NOTE,
        "",
        f"Machine: {machine_text or machine()}. Page generated: {date}.",
        "",
    ]
    for experiment in EXPERIMENTS:
        body, spec = section_body(experiment, folders.get(experiment.name), out_dir)
        text = interpretations.get(experiment.name) or INTERPRETATION_TODO
        lines += [
            f"## {experiment.section} {experiment.title}",
            "",
            f"Command: `{command(spec or experiment.config)}`",
            "",
            f"Varies: {experiment.varies}",
            "",
            *body,
            "",
            f"<!-- interpretation:{experiment.name} -->",
            text,
            f"<!-- /interpretation:{experiment.name} -->",
            "",
        ]
    return "\n".join(_squeeze(lines)).rstrip() + "\n"


def _squeeze(lines: Sequence[str]) -> list[str]:
    """`lines` without runs of blank lines."""
    out: list[str] = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue
        out.append(line)
    return out


def write_page(folders: Mapping[str, str], output: str, *, machine_text: str | None = None) -> str:
    """Regenerates `output` from `folders` (`{experiment: sweep folder}`), keeping the
    interpretations already written in it. Returns the page's text."""
    previous = ""
    if os.path.isfile(output):
        with open(output) as f:
            previous = f.read()
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    page = render_page(
        folders, out_dir, interpretations=read_interpretations(previous), machine_text=machine_text
    )
    with open(output, "w") as f:
        f.write(page)
    return page
