"""Config files and dotted overrides: the one way a `Config` is made, on the command line
(`experiments.main`) and in a sweep (`murajax.sweep`).

A config file is a Python file whose `get_config(arg=None)` returns a `Config`; it is named
as `path.py[:arg]` (the argument follows the first colon). Fields are changed by dotted
name, `{"optim.learning_rate": 3e-4}`. On the command line, `--config.optim.learning_rate=3e-4`
gives a text, parsed by the field's type (`parse_value`):

    int, float, str        as Python reads them (`int('3')`, `float('3e-4')`)
    bool                   true/t/1 or false/f/0, in any case
    tuple[X, ...]          `8,16`, `(8, 16)` or `[8, 16]`
    X | None               `None` is None, anything else is parsed as X

A model's own field (`model.widths`; `murajax.config.ModelConfig`) has the type that the
model the overrides choose gives it: `model.name` and `model.backbone` are parsed and set
first, so `--config.model.name=cnn --config.model.widths=8,16` works on a VGG16 config.

    load_config(spec, texts) -> Config               a file's config with overrides, validated
    load_module(path) -> module                      a config file, imported afresh
    call(module, name, arg, spec)                    its `get_config` or `get_sweep`
    apply_overrides(config, overrides) -> Config     a validated copy
    parse_overrides(config, texts) -> values         command-line texts by their fields' types

Every mistake is a one-line `ConfigError` naming the field (or the file), except a missing
file, `FileNotFoundError`.
"""

import ast
import copy
import dataclasses
import errno
import importlib.util
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from murajax import models, validation
from murajax.config import SHARED_MODEL_FIELDS, Config, ConfigError, ModelConfig, model_fields


class SweepError(ConfigError):
    """A sweep is malformed or missing (no runs, duplicate names, an unknown run); one line."""


_TRUE, _FALSE = ("true", "t", "1"), ("false", "f", "0")

# --------------------------------------------------------------------------- files


def split_spec(spec: str) -> tuple[str, str | None]:
    """`"path.py:arg"` -> `("path.py", "arg")`; the argument follows the first colon."""
    path, sep, arg = spec.partition(":")
    return path, arg if sep else None


def load_module(path: str) -> types.ModuleType:
    """Imports the Python file `path` as a fresh module (its own imports must resolve, e.g.
    `from experiments.configs import quickstart` from the repository root).

    Raises `FileNotFoundError` for a missing file, a one-line `ConfigError` for a file (or a
    file it imports) that is not valid Python.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, f"config file {path!r} not found")
    name = "murajax_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{e.filename}:{e.lineno}: {e.msg} (in a config file)") from None
    return module


def call(module: types.ModuleType, name: str, arg: str | None, spec: str) -> Any:
    """`module.<name>(arg)` (`get_config` or `get_sweep`) of the config file `spec`.

    A file without that function, or a variant it rejects (its `ValueError`), is a one-line
    `ConfigError` that names the file.
    """
    function = getattr(module, name, None)
    if not callable(function):
        path, _ = split_spec(spec)
        raise ConfigError(f"{path} defines no {name}(arg=None)")
    try:
        return function(arg)
    except ConfigError:
        raise
    except ValueError as e:
        message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if os.path.basename(split_spec(spec)[0]) not in message:
            message = f"{spec}: {message}"
        raise ConfigError(message) from None


def base_config(module: types.ModuleType, spec: str) -> Config:
    """The `Config` that `get_config(arg)` of the loaded file `spec` returns (unvalidated)."""
    config = call(module, "get_config", split_spec(spec)[1], spec)
    if not isinstance(config, Config):
        raise ConfigError(
            f"{split_spec(spec)[0]}: get_config() returned {type(config).__name__}, not a Config"
        )
    return config


def load_config(spec: str, texts: Mapping[str, str] | None = None) -> Config:
    """The validated config of `path.py[:arg]` with command-line overrides applied
    (`{"optim.learning_rate": "3e-4"}`, parsed by `parse_overrides`)."""
    config = base_config(load_module(split_spec(spec)[0]), spec)
    return apply_overrides(config, parse_overrides(config, texts or {}))


# --------------------------------------------------------------------------- overrides


MODEL_CHOICE_FIELDS: tuple[str, ...] = ("model.name", "model.backbone")
"""Fields that choose the model, and so which other `model.` fields exist: overrides set
them first (`apply_overrides`) and parse the others against the model they choose."""


def canonical_field(field: str) -> str:
    """The dotted name of a field as flattened from `config.json`, where a model's own fields
    are nested under `model.options`: `model.options.widths` is `model.widths` (either is
    accepted as an override); any other name as it is."""
    return (
        "model." + field[len("model.options.") :] if field.startswith("model.options.") else field
    )


def _owner(config: Config, field: str) -> tuple[Any, str]:
    """The dataclass that holds the dotted `field` of `config`, and the field's own name.

    A model's own field (`model.widths`) is held by `config.model` (its `options`) whenever
    some registered model takes it, so that a config may set it before choosing the model
    (validation refuses it if the chosen model does not take it). Raises `ConfigError` for a
    field that does not exist or that names a whole section.
    """
    owner: Any = config
    parts = canonical_field(field).split(".")
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(owner):
            where = ".".join(parts[:depth])
            raise ConfigError(f"unknown config field {field!r}: {where} is not a section")
        if isinstance(owner, ModelConfig) and depth == len(parts) - 1:
            if part == "options":
                raise ConfigError(f"{field!r} is a config section: name one of its fields")
            if part in SHARED_MODEL_FIELDS or part in owner.options or part in _model_fields():
                return owner, part
            raise ConfigError(f"unknown config field {field!r}: {_no_model_field(owner, part)}")
        names = {f.name for f in dataclasses.fields(owner)}
        if part not in names:
            where = ".".join(parts[:depth]) or "config"
            valid = ", ".join(sorted(names))
            raise ConfigError(f"unknown config field {field!r}: {where} has no {part!r} ({valid})")
        if depth < len(parts) - 1:
            owner = getattr(owner, part)
    if dataclasses.is_dataclass(getattr(owner, parts[-1])):
        raise ConfigError(f"{field!r} is a config section: name one of its fields")
    return owner, parts[-1]


def _model_fields() -> dict[str, Any]:
    """Every registered model's own fields, with their type annotations (the first model, by
    name, that has a field gives its type)."""
    fields: dict[str, Any] = {}
    for name in models.registered_names():
        for key, annotation in (model_fields(ModelConfig(name)) or {}).items():
            fields.setdefault(key, annotation)
    return fields


def _no_model_field(model: ModelConfig, field: str) -> str:
    """Why no model has `field`: what the chosen model takes."""
    own = list(model_fields(model) or {})
    takes = ", ".join([*SHARED_MODEL_FIELDS, *own])
    return f"no model has a field {field!r} (model {model.name!r} takes: {takes})"


def field_type(config: Config, field: str) -> Any:
    """The type annotation of the dotted `field` (`int`, `str | None`, `tuple[int, ...]`).

    A model's own field has the chosen model's type for it, else (a field that model does
    not take, which validation will refuse) that of a model that has it."""
    owner, name = _owner(config, field)
    if isinstance(owner, ModelConfig) and name not in SHARED_MODEL_FIELDS:
        own = model_fields(owner) or {}
        return own[name] if name in own else _model_fields().get(name, Any)
    return typing.get_type_hints(type(owner))[name]


def _without_none(annotation: Any) -> Any:
    """`X` for the annotation `X | None`; any other annotation as it is."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner[0] if len(inner) == 1 else annotation
    return annotation


def _coerce(value: Any, annotation: Any) -> Any:
    """Lists become tuples for tuple fields (a sweep written as JSON, or by hand)."""
    if typing.get_origin(_without_none(annotation)) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def set_field(config: Config, field: str, value: Any) -> None:
    """Sets the dotted `field` (`"seed"`, `"data.image_size"`, `"model.widths"`) of
    `config` in place."""
    owner, name = _owner(config, field)
    setattr(owner, name, _coerce(value, field_type(config, field)))


def model_choices_first(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` with `MODEL_CHOICE_FIELDS` first: every other model field is then set on
    the model they choose, whatever order a command line or a sweep gives them in (setting
    `model.name` after `model.widths` would otherwise drop the widths as the old model's)."""
    canonical = {canonical_field(f) if isinstance(f, str) else f: f for f in overrides}
    first = [canonical[f] for f in MODEL_CHOICE_FIELDS if f in canonical]
    return {f: overrides[f] for f in [*first, *(f for f in overrides if f not in first)]}


def apply_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """A validated copy of `config` with `overrides` (`{"data.image_size": 64}`) applied,
    the model's choice (`model.name`, `model.backbone`) first (`model_choices_first`).

    Raises a one-line `ConfigError` naming the field: an unknown section or field, or a
    value `validation.validate` rejects.
    """
    result = copy.deepcopy(config)
    for field, value in model_choices_first(overrides).items():
        if not isinstance(field, str) or not field:
            raise ConfigError(f"a field name must be a string, got {field!r}")
        set_field(result, field, value)
    return validation.validate(result)


def format_value(value: Any) -> str:
    """A config value as text, as in a sweep's run names and tables: `64`, `0.003`, `True`,
    `16-32-64` for tuples."""
    if isinstance(value, tuple | list):
        return "-".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


# --------------------------------------------------------------------------- command line


def parse_overrides(config: Config, texts: Mapping[str, str]) -> dict[str, Any]:
    """Command-line `texts` (`{"optim.learning_rate": "3e-4"}`) as values of their fields'
    types in `config`, a model's own fields in the model that `texts` choose
    (`--config.model.name=cnn --config.model.widths=8,16` on a VGG16 config). A text that
    does not parse is a one-line `ConfigError`."""
    chosen = copy.deepcopy(config)
    values = {}
    for field, text in model_choices_first(texts).items():
        annotation = field_type(chosen, field)
        try:
            values[field] = parse_value(text, annotation)
        except (ValueError, SyntaxError) as e:
            raise ConfigError(f"flag --config.{field}={text}: {e}") from None
        if canonical_field(field) in MODEL_CHOICE_FIELDS:
            set_field(chosen, field, values[field])
    return {field: values[field] for field in texts}


def parse_value(text: str, annotation: Any) -> Any:
    """`text` as a value of the type `annotation` (see the module docstring)."""
    if _without_none(annotation) is not annotation:
        return None if text.strip() == "None" else parse_value(text, _without_none(annotation))
    if typing.get_origin(annotation) is tuple:
        item_type = typing.get_args(annotation)[0]
        stripped = text.strip()
        if stripped[:1] in ("(", "["):
            items = ast.literal_eval(stripped)
            items = items if isinstance(items, tuple | list) else (items,)
        else:
            items = [piece.strip() for piece in stripped.split(",") if piece.strip()]
        return tuple(parse_value(str(item), item_type) for item in items)
    if annotation is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if annotation in (int, float):
        return annotation(text)
    return str(text)
