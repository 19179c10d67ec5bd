"""murajax's measurement: the real train step as training runs it.

The step is `murajax.steps.train_step` placed by `murajax.parallel.data_parallel(step_fn,
'jit', make_mesh())`, fed a host batch every step (as the training loop is), exactly as
`train_and_evaluate` compiles it. Its FLOPs come from XLA's cost analysis of the compiled step.
"""

import functools
import warnings
from typing import Any

import jax
import numpy as np

from experiments.bench import timing
from experiments.bench.workloads import Workload
from murajax import allocator, models, ops, optim, parallel, steps


def _flops(cost: Any) -> float | None:
    """The 'flops' entry of a jax cost analysis (a dict, or a list of one dict per program)."""
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def host_batch(workload: Workload, seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch of `workload`'s inputs on the host: NHWC images in [0, 1) (a study
    batch: (B, V, H, W, C) with every view real), labels and body parts."""
    rng = np.random.default_rng(seed)
    b, s, c = workload.batch_size, workload.image_size, workload.channels
    batch = {
        "label": rng.integers(0, 2, b).astype(np.int32),
        "group": rng.integers(0, 7, b).astype(np.int32),  # MURA's body parts
    }
    if workload.views > 1:
        batch["image"] = rng.random((b, workload.views, s, s, c), dtype=np.float32)
        batch["view_mask"] = np.ones((b, workload.views), bool)
    else:
        batch["image"] = rng.random((b, s, s, c), dtype=np.float32)
    return batch


def placed_step(
    config: Any,
    input_shape: tuple[int, ...],
    parallelism: str = "jit",
    devices: Any = None,
) -> tuple[parallel.DataParallel, Any]:
    """(DataParallel, device state) of `config`'s train step (no class weights, smoothing or
    L2) as `train.parallelism` places it over `devices` (default: all)."""
    model = models.create_from_config(config.model)
    tx = optim.make_optimizer(config.optim, config.train.steps)
    state = steps.create_train_state(model, tx, jax.random.key(0), input_shape)
    step_fn = functools.partial(
        steps.train_step,
        model=model,
        tx=tx,
        weight_table=np.ones((7, 2), np.float32),
        label_smoothing=0.0,
        l2_weight=0.0,
    )
    dp = parallel.data_parallel(step_fn, parallelism, parallel.make_mesh(devices))
    return dp, dp.put_state(state)


def _step_and_state(workload: Workload, dtype: str, conv_impl: str | None) -> tuple[Any, ...]:
    """(DataParallel, device state, host batch) of `workload`'s train step."""
    batch = host_batch(workload)
    dp, state = placed_step(workload.config(dtype, conv_impl), batch["image"].shape)
    return dp, state, batch


def measure(
    workload: Workload,
    dtype: str,
    conv_impl: str | None,
    *,
    min_seconds: float,
    min_steps: int = 5,
    warmup_steps: int = 2,
    turns: bool = False,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Times murajax's train step of `workload` in `dtype` (`model.conv_impl` = `conv_impl`
    when the config has it); returns the row's measured fields.

    The first step is lowered, compiled and run (`compile_s`); every later step runs the
    compiled executable on a batch put on the devices from the host. FLOPs per step come from
    the compiled step's cost analysis; when the step calls custom kernels that XLA cannot
    count (a `conv_impl` other than 'xla'), they come from the same step lowered with
    `conv_impl='xla'` instead (`flops_source` says which).
    """
    dp, state, batch = _step_and_state(workload, dtype, conv_impl)
    compiled = None

    def step() -> None:
        nonlocal state, compiled
        device_batch = dp.put_batch(batch)
        if compiled is None:
            compiled = dp.step.lower(state, device_batch).compile()
        state, metrics = compiled(state, device_batch)
        jax.block_until_ready(metrics)

    result = timing.time_steps(
        step,
        min_seconds=min_seconds,
        min_steps=min_steps,
        warmup_steps=warmup_steps,
        turns=turns,
        deadline=deadline,
    )
    flops, source = _flops(compiled.cost_analysis()), "xla_cost_analysis"
    if conv_impl not in (None, "xla"):
        xla_dp, xla_state, _ = _step_and_state(workload, dtype, "xla")
        lowered = xla_dp.step.lower(xla_state, xla_dp.put_batch(batch))
        xla_flops = _flops(lowered.cost_analysis())
        if xla_flops and (not flops or xla_flops > flops):
            flops, source = xla_flops, "xla_cost_analysis(conv_impl='xla')"
    row = timing.measurement_row(result, workload.images_per_step, flops)
    row["flops_source"] = source
    row["device"] = jax.devices()[0].platform
    row["malloc"] = allocator.malloc_in_use()
    stats = jax.devices()[0].memory_stats()  # None on CPU
    if stats and "peak_bytes_in_use" in stats:
        row["device_peak_memory_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    row["conv_impl"] = workload.config(dtype, conv_impl).model.conv_impl
    row["conv_impl_resolved"] = _resolved_conv_impl(row["conv_impl"])
    row["params"] = timing.parameter_count(x.shape for x in jax.tree.leaves(state.params))
    return row


def _resolved_conv_impl(conv_impl: str) -> str | None:
    """The convolution `conv_impl` runs here ('xla' or 'onednn'), if murajax says."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's warning was given once already
        try:
            return ops.resolve_conv_impl(conv_impl)
        except (RuntimeError, ValueError):
            return None
