"""Using a trained workdir without training: its config, model, checkpoints and new images.

Shared by `experiments.evaluate` (re-score a split with one checkpoint or an ensemble) and
`experiments.predict` (score radiographs from disk):

    load_config(workdir) -> Config                         from `config.json`
    open_checkpoints(workdir) -> CheckpointManager         read-only, never deletes
    select_steps(manager, checkpoint, ensemble) -> Selection
    load(workdir, checkpoint='best', ensemble=1) -> Loaded    config, model, restored states
    make_eval_fn(model, n_members) -> EvalFn               one pass, mean of the members' probs

    read_gray(path) -> uint8 (H, W)                        8-bit grayscale like the `mura` builder
    prepare_batch(config, grays) -> float32 (N, S, S, C)   the eval pipeline's preprocessing
    collect_studies(inputs) -> {study folder: [files]}     a study = the images of one folder
    body_part_of(path) -> 'XR_WRIST' | ''

Nothing here writes into the workdir.
"""

import dataclasses
import functools
import glob
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image, UnidentifiedImageError

from murajax import checkpoint as ckpt
from murajax import config as config_lib
from murajax import freeze, models, steps, train
from murajax.config import Config
from murajax.data import pipeline, preprocess
from murajax.errors import WorkdirError
from tfds_mura.features import BODY_PARTS
from tfds_mura.mura.mura_dataset_builder import image_to_grayscale

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


class InputError(ValueError):
    """The input files cannot be scored (none readable); one-line message."""


class UnreadableImage(ValueError):
    """A file that is not an image Pillow can decode fully (junk, truncated, another format)."""


USER_ERRORS: tuple[type[Exception], ...] = (WorkdirError, InputError)
"""`WorkdirError` (`murajax.errors`, re-exported here): the workdir, the checkpoint asked for
or an output folder cannot be used."""


# --------------------------------------------------------------------------- workdir


def load_config(workdir: str) -> Config:
    """The resolved `Config` a run wrote to `<workdir>/config.json`."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isdir(workdir):
        what = "is a file, not a folder" if os.path.exists(workdir) else "does not exist"
        raise WorkdirError(f"workdir {workdir} {what}: expected a training run's folder")
    if not os.path.isfile(path):
        raise WorkdirError(f"{workdir} has no {CONFIG_FILE}: is it a murajax workdir?")
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WorkdirError(f"{path} is not readable JSON: {str(e).splitlines()[0]}") from None
    config = config_lib.from_dict(values)
    config_lib.validate(config)
    return config


def open_checkpoints(workdir: str) -> ocp.CheckpointManager:
    """A read-only orbax manager over `<workdir>/checkpoints` that knows the best checkpoint.

    Read-only: it neither creates folders nor deletes checkpoints (a training run may be
    writing beside it). Raises `WorkdirError` if there is no finished checkpoint.
    """
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if not os.path.isdir(directory):
        raise WorkdirError(f"{workdir} has no {CHECKPOINT_DIR}/ folder: nothing to evaluate")
    options = ocp.CheckpointManagerOptions(
        read_only=True,
        create=False,
        best_fn=ckpt.best_metric,  # a NaN kappa never ranks best
        best_mode="max",
        enable_async_checkpointing=False,
    )
    manager = ocp.CheckpointManager(directory, options=options)
    if not manager.all_steps():
        manager.close()
        raise WorkdirError(f"{directory} holds no finished checkpoint")
    return manager


def checkpoint_kappas(manager: ocp.CheckpointManager) -> dict[int, float]:
    """Holdout study kappa of each checkpoint saved with metrics (NaN kappas left out)."""
    kappas = {}
    for step in manager.all_steps():
        metrics = manager.metrics(step) or {}
        value = metrics.get(ckpt.BEST_METRIC)
        if value is not None and math.isfinite(float(value)):
            kappas[int(step)] = float(value)
    return kappas


@dataclasses.dataclass(frozen=True)
class Selection:
    """The checkpoint steps to use and, where the request could not be met exactly, why."""

    steps: tuple[int, ...]
    note: str | None = None


def rank_by_kappa(kappas: dict[int, float]) -> list[int]:
    """Steps from the highest holdout kappa down; ties go to the later step."""
    return sorted(kappas, key=lambda s: (-kappas[s], -s))


def select_steps(manager: ocp.CheckpointManager, checkpoint: str, ensemble: int = 1) -> Selection:
    """Which checkpoint(s) `checkpoint` ('best', 'latest' or a step) and `ensemble` mean.

    `ensemble` = K > 1 takes the K best checkpoints by holdout kappa (the MURA paper's final
    model averages 5); if fewer carry metrics it takes those and says so in `note`.
    """
    available = sorted(int(s) for s in manager.all_steps())
    if ensemble < 1:
        raise WorkdirError(f"ensemble={ensemble}: expected a number of checkpoints >= 1")
    if ensemble == 1:
        if checkpoint not in ("best", "latest"):
            try:
                step = int(checkpoint)
            except ValueError:
                raise WorkdirError(
                    f"checkpoint={checkpoint!r}: expected 'best', 'latest' or a step number"
                ) from None
            if step not in available:
                raise WorkdirError(
                    f"checkpoint {step} not found: available steps {_listing(available)}"
                    " (or 'best', 'latest')"
                )
            return Selection((step,))
        note = None
        if checkpoint == "best" and manager.best_step() is None:
            note = "no checkpoint carries holdout metrics: using the latest"
        return Selection((int(ckpt.select_step(manager, checkpoint)),), note)
    if checkpoint != "best":
        raise WorkdirError(
            f"ensemble={ensemble} takes the best checkpoints by holdout kappa: "
            f"leave checkpoint at 'best' (got {checkpoint!r})"
        )
    ranked = rank_by_kappa(checkpoint_kappas(manager))
    if not ranked:
        latest = max(available)
        return Selection(
            (latest,),
            f"no checkpoint carries holdout metrics: using the latest ({latest}), not an "
            f"ensemble of {ensemble}",
        )
    chosen = tuple(ranked[:ensemble])
    note = None
    if len(chosen) < ensemble:
        note = (
            f"only {len(chosen)} of the {len(available)} checkpoints carry holdout metrics "
            f"(steps {_listing(sorted(chosen))}): an ensemble of {len(chosen)}, not {ensemble}"
        )
    return Selection(chosen, note)


def _listing(steps: Sequence[int]) -> str:
    return ", ".join(str(s) for s in steps) if steps else "none"


def abstract_state(config: Config, model: nn.Module) -> steps.TrainState:
    """The shapes and dtypes of a `TrainState` of `config`: nothing is computed, and no
    pretrained weight file is read (the checkpoint holds the trained weights)."""
    tx = freeze.make_train_optimizer(config, model)
    shape = train.model_input_shape(config, 1)
    return jax.eval_shape(
        lambda: steps.create_train_state(model, tx, jax.random.key(config.seed), shape)
    )


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A workdir's model with the train states of the selected checkpoints."""

    config: Config
    model: nn.Module
    steps: tuple[int, ...]
    states: tuple[steps.TrainState, ...]
    note: str | None = None

    def variables(self, member: int = 0) -> dict[str, Any]:
        """The Flax variables (`params`, and `batch_stats` if any) of ensemble member `member`."""
        state = self.states[member]
        if state.batch_stats:
            return {"params": state.params, "batch_stats": state.batch_stats}
        return {"params": state.params}


def load(
    workdir: str, checkpoint: str = "best", ensemble: int = 1, model: nn.Module | None = None
) -> Loaded:
    """Restores the selected checkpoint(s) of `workdir` (read-only; no data iterator needed).

    `model` replaces the one `config.json` names (for a run trained with a custom module).
    """
    config = load_config(workdir)
    if model is None:
        try:
            model = models.create_from_config(config.model)
        except ValueError as e:
            raise WorkdirError(str(e)) from None
    manager = open_checkpoints(workdir)
    try:
        selection = select_steps(manager, checkpoint, ensemble)
        template = abstract_state(config, model)
        states = tuple(ckpt.restore(manager, step, template, None)[0] for step in selection.steps)
    finally:
        manager.close()
    return Loaded(config, model, selection.steps, states, selection.note)


def ensemble_eval_step(
    states: Sequence[steps.TrainState], batch: dict[str, Any], *, model: nn.Module
) -> dict[str, jax.Array]:
    """`steps.eval_step` for an ensemble: the abnormal probability is the mean of the
    members' probabilities, the loss the cross-entropy of that mean; pure."""
    probs = []
    for state in states:
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        logits = model.apply(
            variables, batch["image"], **steps.model_kwargs(batch), train=False
        ).astype(jnp.float32)
        probs.append(jax.nn.softmax(logits))
    mean = jnp.mean(jnp.stack(probs), axis=0)
    label = jnp.asarray(batch["label"], jnp.int32)
    picked = jnp.take_along_axis(mean, label[:, None], axis=1)[:, 0]
    return {"prob": mean[:, 1], "loss": -jnp.log(jnp.clip(picked, 1e-12, 1.0))}


def make_eval_fn(model: nn.Module, members: int) -> Callable[[Any, dict[str, Any]], Any]:
    """A jitted `(state or tuple of states, batch) -> {'prob', 'loss'}`.

    One member: exactly `steps.eval_step` (so re-evaluating a checkpoint reproduces the
    training run's numbers); several: `ensemble_eval_step`, one data pass for all members.
    """
    if members == 1:
        step = jax.jit(functools.partial(steps.eval_step, model=model))
        return lambda states, batch: step(states[0], batch)
    return jax.jit(functools.partial(ensemble_eval_step, model=model))


# --------------------------------------------------------------------------- image files


def read_gray(path: str) -> np.ndarray:
    """Reads an image file as uint8 (H, W) grayscale, converted as the `mura` builder does
    (colour to ITU-R 601-2 luma, alpha dropped, 16-bit to 8 by the high byte).

    Raises `UnreadableImage` for anything Pillow cannot decode fully: not an image, a
    truncated file, AppleDouble junk (`._image1.png`), an unsupported mode.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes fully, so a truncated file fails here
            gray = image_to_grayscale(image)
    except UnidentifiedImageError:
        raise UnreadableImage("not an image") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnreadableImage(f"unreadable image ({reason})") from None
    if gray.ndim != 2 or gray.size == 0:
        raise UnreadableImage(f"unexpected image shape {gray.shape}")
    return gray


def prepare_batch(config: Config, grays: Sequence[np.ndarray]) -> np.ndarray:
    """float32 (N, S, S, C) model inputs, preprocessed exactly as the eval pipeline does
    (`murajax.data.pipeline.prepare_images` with the model's resize and normalisation)."""
    spec = pipeline.preprocess_spec(config.data, config.model)
    return pipeline.prepare_images([{"image": g[:, :, None]} for g in grays], spec)


def model_view(config: Config, gray: np.ndarray) -> np.ndarray:
    """The uint8 (S, S) square the model sees of `gray` (resized, padded or cropped)."""
    image = preprocess.resize_to_square(
        gray[:, :, None], config.data.image_size, config.data.resize
    )
    return image[:, :, 0]


def heatmap_to_original(
    heatmap: np.ndarray, shape: tuple[int, int], size: int, mode: str
) -> np.ndarray:
    """Maps an (S, S) heatmap over the model's square input back onto the (H, W) original.

    Undoes `resize_to_square`: 'pad' drops the padding, 'crop' puts the map on the centre
    crop (zero outside it); then a bilinear resize to `shape`. Values stay in [0, 1].
    """
    height, width = shape
    new_h, new_w = preprocess.resized_shape(height, width, size, mode)
    heatmap = np.asarray(heatmap, np.float32)
    if mode == "pad":
        top, left = (size - new_h) // 2, (size - new_w) // 2
        resized = heatmap[top : top + new_h, left : left + new_w]
    else:
        top, left = (new_h - size) // 2, (new_w - size) // 2
        resized = np.zeros((new_h, new_w), np.float32)
        resized[top : top + size, left : left + size] = heatmap
    pil = Image.fromarray(np.ascontiguousarray(resized), mode="F")
    out = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR), np.float32)
    return np.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------- studies


_GLOB_CHARS = re.compile(r"[*?\[]")


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Input paths with shell-style patterns expanded (a pattern that matches nothing stays)."""
    out = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if _GLOB_CHARS.search(item) else []
        out.extend(matches or [item])
    return out


def collect_studies(inputs: Iterable[str]) -> dict[str, list[str]]:
    """Groups the files of `inputs` into studies: {study folder: [file paths]}.

    A folder is walked recursively and every folder that holds files is one study (MURA's
    `XR_WRIST/patient00001/study1_positive/`); files given directly are grouped by their
    parent folder. Every regular file is listed (junk is sorted out when it fails to
    read); hidden folders are walked too. Studies and files come back sorted.
    """
    studies: dict[str, set[str]] = {}
    for item in expand_inputs(inputs):
        if os.path.isdir(item):
            for folder, subfolders, files in os.walk(item):
                subfolders.sort()
                for name in files:
                    path = os.path.join(folder, name)
                    if os.path.isfile(path):
                        studies.setdefault(os.path.normpath(folder), set()).add(path)
        elif os.path.isfile(item):
            folder = os.path.normpath(os.path.dirname(item) or ".")
            studies.setdefault(folder, set()).add(item)
        else:
            raise FileNotFoundError(
                f"input {item} does not exist (expected image files, folders of them or shell"
                " patterns that match some)"
            )
    return {folder: sorted(files) for folder, files in sorted(studies.items())}


_BODY_PART = re.compile(r"XR_[A-Z]+")


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


def looks_like_image(path: str) -> bool:
    """Whether a file's name says it is an image (an image extension, not `._` junk)."""
    name = os.path.basename(path)
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("._")


def body_part_of(path: str) -> str:
    """The MURA body part a path names (`XR_ELBOW` ... `XR_WRIST`, the last one if several),
    or '' if it names none."""
    found = [p for p in _BODY_PART.findall(path.upper()) if p in BODY_PARTS]
    return found[-1] if found else ""


def common_root(paths: Sequence[str]) -> str:
    """The deepest folder that contains every path in `paths` (for mirrored output trees)."""
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    return os.path.commonpath(folders) if folders else ""
