"""Resuming with a changed config: which changes a checkpoint survives.

A rerun on a workdir resumes from its newest checkpoint, which was trained under the
workdir's `config.json`. The new config may differ from it only in fields that neither
change what the checkpoint holds (the shapes of params, batch statistics and optimiser
state, the data iterator's position) nor what the steps already taken meant:

- `train`: `steps` (the cosine schedule's horizon follows it), `log_every`, `eval_every`,
  `checkpoint_every`, `keep_checkpoints`, `keep_best`, `progress`, `parallelism` (a
  checkpoint is the same under 'jit' and 'pmap'), `on_nonfinite`, `max_skipped`;
- `optim`: the learning-rate schedule's values, `learning_rate`, `min_learning_rate`,
  `warmup_steps`, `decay_every`, `decay_factor`, `plateau_patience` (the schedule is
  recomputed from the config at every step; the optimiser's other hyper-parameters, such as
  `b1` or `momentum`, live in its saved state, so a change there would be silently ignored);
- `eval`: everything (evaluation reads the checkpoints, never writes them);
- `data`: where the data lives, `data_dir`, `manual_dir`, `manifest`, `build_if_missing`,
  `cache_dir` (a workdir's `dataset.json` guards its labels and groups: `murajax.data.spec`);
- `model.conv_impl` (which kernel computes the same convolution).

Anything else (the seed, the model, the data and its augmentation, the batch, the loss, the
optimiser and its schedule's kind) refuses to resume with one `ConfigError` line naming the
fields; start afresh with a new `--workdir`. A workdir without a checkpoint takes the new
config as it is. Fields that an older `config.json` lacks count as unchanged when the new
config keeps their default.
"""

import dataclasses
import json
import os
from typing import Any

from murajax import config as config_lib
from murajax import workdir as workdir_lib
from murajax.config import Config, ConfigError

ALLOWED = frozenset(
    [
        *(
            f"train.{name}"
            for name in (
                "steps",
                "log_every",
                "eval_every",
                "checkpoint_every",
                "keep_checkpoints",
                "keep_best",
                "progress",
                "parallelism",
                "on_nonfinite",
                "max_skipped",
            )
        ),
        *(
            f"optim.{name}"
            for name in (
                "learning_rate",
                "min_learning_rate",
                "warmup_steps",
                "decay_every",
                "decay_factor",
                "plateau_patience",
            )
        ),
        *(f"eval.{f.name}" for f in dataclasses.fields(config_lib.EvalConfig)),
        *(
            f"data.{name}"
            for name in ("data_dir", "manual_dir", "manifest", "build_if_missing", "cache_dir")
        ),
        "model.conv_impl",
        # None is "the dataset's"; a dataset whose labels changed is refused by its
        # dataset.json (murajax.data.spec.check_unchanged), and an explicit number that is not
        # the dataset's by models.check_num_classes. An older workdir's config says 2.
        "model.num_classes",
    ]
)
"""Dotted config fields that may change between a checkpoint and the run resuming from it."""


def changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """`{dotted field: (old value, new value)}` for the fields that differ between two
    configs as JSON dicts; a field missing from `old` is unchanged if `new` holds its
    default. `old` is read as `config.from_dict` reads it (an older murajax's flat model
    section: the model's own fields), and a model's own fields are named as on the command
    line, `model.widths` (config.json nests them under `model.options`)."""
    lift = config_lib.lift_model_options
    defaults = lift(json.loads(config_lib.to_json(Config())))
    return _changes(lift(_current(old)), lift(json.loads(json.dumps(new))), defaults, "")


def _current(values: dict[str, Any]) -> dict[str, Any]:
    """`values` as this murajax writes them (`from_dict`, then JSON); as they are if they
    are not a config it can read."""
    try:
        return json.loads(config_lib.to_json(config_lib.from_dict(values)))
    except (ConfigError, TypeError, ValueError, AttributeError):
        return values


def _changes(old: Any, new: Any, defaults: Any, prefix: str) -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        default = defaults.get(key, _MISSING) if isinstance(defaults, dict) else _MISSING
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_changes(a, b, default, f"{prefix}{key}."))
        elif a is _MISSING and b == default:
            continue
        elif a != b:
            out[f"{prefix}{key}"] = (a, b)
    return out


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


_MISSING = _Missing()


def describe(changed: dict[str, tuple[Any, Any]]) -> str:
    """'a.b (1 -> 2), c.d (x -> y)' for `changes`' output."""
    return ", ".join(f"{name} ({_show(a)} -> {_show(b)})" for name, (a, b) in changed.items())


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, _Missing) else json.dumps(value)


def refused(changed: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """The changes that a checkpoint cannot survive (not in `ALLOWED`)."""
    return {name: values for name, values in changed.items() if name not in ALLOWED}


def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir/checkpoints` holds a finished checkpoint (`workdir.checkpoint_steps`)."""
    return bool(workdir_lib.checkpoint_steps(workdir))


def check_and_write_config(config: Config, workdir: str) -> None:
    """Writes `config` to `workdir/config.json` (at once, `workdir.write_text`), after
    checking it against the one there.

    With a checkpoint to resume from, a change outside `ALLOWED` raises `ConfigError` (one
    line naming the fields) and leaves the workdir alone; allowed changes are listed in one
    line. Without a checkpoint any change is listed and taken.
    """
    path = workdir_lib.config_path(workdir)
    text = config_lib.to_json(config)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        changed = changes(old, json.loads(text))
        if changed and has_checkpoint(workdir):
            bad = refused(changed)
            if bad:
                raise ConfigError(
                    f"cannot resume {workdir}: its checkpoints were trained with another"
                    f" {describe(bad)}; start afresh with a new --workdir (or undo these"
                    f" changes; see murajax/resume.py for what may change on resume)"
                )
            print(f"[murajax] resuming with changed {describe(changed)}")
        elif changed:
            print(
                f"[murajax] config differs from {path} in: {', '.join(changed)};"
                " no checkpoint to resume, updating it"
            )
    workdir_lib.write_text(path, text + "\n")  # at once: a killed run leaves the old one
