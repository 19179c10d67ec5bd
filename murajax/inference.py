"""A trained workdir's model, restored for inference: `load(workdir, checkpoint, ensemble)`.

    loaded = load(workdir, checkpoint="best", ensemble=1)   # read-only: never writes or deletes
    loaded.config, loaded.spec, loaded.model, loaded.steps, loaded.states, loaded.variables(m)

Which checkpoint(s) 'best', 'latest', a step or an ensemble of K mean is
`murajax.workdir.select_steps`; the states are restored without a data iterator (a run may
still be training beside it). `murajax.steps.make_eval_fn(loaded.model, len(loaded.states))`
scores batches with them; `murajax.reevaluate` and `murajax.predict` build on this.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from murajax import checkpoint as ckpt
from murajax import data, freeze, models, steps
from murajax import workdir as workdir_lib
from murajax.config import Config
from murajax.data import DatasetSpec
from murajax.errors import WorkdirError


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A workdir's model with the train states of the selected checkpoints."""

    config: Config
    spec: models.ModelSpec  # `config.model` resolved (`models.resolve`)
    model: nn.Module
    steps: tuple[int, ...]
    states: tuple[steps.TrainState, ...]
    dataset: DatasetSpec  # the labels and groups it was trained on (`dataset.json`)
    note: str | None = None

    def variables(self, member: int = 0) -> dict[str, Any]:
        """The Flax variables (`params`, and `batch_stats` if any) of ensemble member `member`."""
        return steps.state_variables(self.states[member])


def abstract_state(config: Config, spec: models.ModelSpec, model: nn.Module) -> steps.TrainState:
    """The shapes and dtypes of a `TrainState` of `config` (whose model `spec` is): nothing
    is computed, and no pretrained weight file is read (the checkpoint holds the weights)."""
    tx = freeze.make_train_optimizer(config, spec, model)
    shape = spec.input_shape(config.data.image_size, 1)
    return jax.eval_shape(
        lambda: steps.create_train_state(model, tx, jax.random.key(config.seed), shape)
    )


def load(
    workdir: str, checkpoint: str = "best", ensemble: int = 1, model: nn.Module | None = None
) -> Loaded:
    """Restores the selected checkpoint(s) of `workdir` (read-only; no data iterator needed).

    `model` replaces the one `config.json` names (for a run trained with a custom module).
    Raises `WorkdirError` for a workdir, config or checkpoint that cannot be used.
    """
    config = workdir_lib.read_config(workdir)
    dataset = data.spec_for_workdir(workdir, config.data)  # its dataset.json
    try:
        spec = models.resolve(config.model, num_classes=dataset.num_classes)  # `model.name`
    except ValueError as e:
        raise WorkdirError(str(e)) from None
    model = model if model is not None else spec.build()
    manager = ckpt.open_read_only(workdir)
    try:
        selection = ckpt.select(manager, checkpoint, ensemble)
        template = abstract_state(config, spec, model)
        states = tuple(_restore(manager, step, template) for step in selection.steps)
    finally:
        manager.close()
    return Loaded(config, spec, model, selection.steps, states, dataset, selection.note)


def _restore(manager: Any, step: int, template: steps.TrainState) -> steps.TrainState:
    """The state of checkpoint `step`; `WorkdirError` naming it, why, and the other steps when
    it cannot be read (nothing is moved: only training sets unreadable checkpoints aside)."""
    try:
        return ckpt.restore(manager, step, template, None)[0]
    except Exception as error:  # noqa: BLE001 (any failure to read means unreadable)
        others = ", ".join(str(s) for s in sorted(manager.all_steps()) if s != step) or "none"
        raise WorkdirError(
            f"checkpoint {manager.directory}/{step} cannot be restored "
            f"({ckpt.failure_reason(error)}): choose another with --checkpoint=STEP "
            f"(other steps: {others})"
        ) from None
