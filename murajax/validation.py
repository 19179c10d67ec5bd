"""The one place where a whole config is checked, before any compute.

    validate(config) -> config          every field; a one-line `ConfigError` if one is bad
    check_runnable(config) -> config    and what this machine must offer (devices, kernels)

Each module says what its own fields may be (`murajax.config` their types and ranges, the
optimisers `murajax.optim`, the models their registry and freezing, the devices
`murajax.parallel`); this module only composes those checks, so no lower module needs to
import the ones above it.
"""

from murajax import (
    evaluation,
    freeze,
    losses,
    metrics,
    models,
    nonfinite,
    ops,
    optim,
    parallel,
    triage,
)
from murajax import workdir as workdir_lib
from murajax.config import Config, check_choice, check_fields
from murajax.data import cache, preprocess
from murajax.models import layers


def validate(config: Config) -> Config:
    """Checks every field of `config`; returns it unchanged or raises `ConfigError`.

    Types and ranges first (`config.check_fields`, with each model's own fields checked by
    its config dataclass: a field the chosen model does not take is refused there), then the
    choices each implementing module offers, then what needs the model registry
    (`model.name`, `model.backbone`, `model.weights`) and the syntax of `model.freeze`. Reads
    no file and starts no device.
    """
    check_fields(config)
    d, m, o, t, e = config.data, config.model, config.optim, config.train, config.eval
    check_choice("data.resize", d.resize, preprocess.RESIZE_MODES)
    if d.normalization is not None:
        check_choice("data.normalization", d.normalization, preprocess.NORMALIZATIONS)
    check_choice("data.cache", d.cache, cache.DATA_CACHES)

    models.check_config(m)
    check_choice("model.dtype", m.dtype, layers.DTYPES)
    check_choice("model.conv_impl", m.conv_impl, ops.CONV_IMPLS)
    freeze.check_syntax(m.freeze)

    check_choice("optim.name", o.name, optim.OPTIMIZERS)
    check_choice("optim.schedule", o.schedule, optim.SCHEDULES)

    check_choice("train.parallelism", t.parallelism, parallel.PARALLELISMS)
    check_choice("train.class_weighting", t.class_weighting, losses.CLASS_WEIGHTINGS)
    check_choice("train.on_nonfinite", t.on_nonfinite, nonfinite.ON_NONFINITE)

    check_choice("eval.aggregation", e.aggregation, metrics.AGGREGATIONS)
    check_choice("eval.threshold_method", e.threshold_method, evaluation.THRESHOLD_METHODS)
    for i, split in enumerate(e.splits):
        check_choice(f"eval.splits[{i}]", split, evaluation.EVAL_SPLITS)
    check_choice("eval.checkpoint", e.checkpoint, workdir_lib.CHECKPOINT_SELECTIONS)
    triage.check_config(config)
    return config


def check_runnable(config: Config) -> Config:
    """`validate`, and that this machine can run `config`: the batch splits over the
    processes and devices (`parallel.check_config`) and `model.conv_impl`'s kernels run
    (`ops.check_conv_impl`). Needs JAX's devices (after `jax.distributed.initialize`)."""
    validate(config)
    parallel.check_config(config)
    ops.check_conv_impl(config.model.conv_impl)
    return config
