"""The trainer: the loop around the pure steps, holdout evaluation, orbax checkpoints.

`train_and_evaluate(config, workdir)` is the one entry point. The steps it runs are the pure
functions of `murajax.steps`, placed on the devices by `murajax.parallel`.
"""

import dataclasses
import functools
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from murajax import checkpoint as ckpt
from murajax import (
    data,
    errors,
    evaluation,
    executable_cache,
    freeze,
    interrupt,
    losses,
    models,
    nonfinite,
    optim,
    parallel,
    report,
    resume,
    steps,
    study_browser,
    validation,
    workdir_lock,
    writers,
)
from murajax import workdir as workdir_lib
from murajax.config import Config
from murajax.data import DatasetSpec

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]


def class_weight_table(config: Config, spec: models.ModelSpec, dataset: DatasetSpec) -> np.ndarray:
    """A (groups, classes) table of loss weights (`losses.class_weight_table`) from the
    training split's label counts (one row for a dataset without groups; MURA: its 7 body
    parts x normal, abnormal): of images, or of studies for a study model (`spec`) such as
    "multiview", whose examples are studies."""
    rows = max(len(dataset.group_names), 1)
    if config.train.class_weighting == "none":  # (no need to read the split)
        return losses.class_weight_table("none", np.zeros((rows, dataset.num_classes)))
    info = data.split_info(
        config.data, "train", label_names=dataset.label_names, group_names=dataset.group_names
    )
    counted = "study_label_counts" if spec.study_level else "label_counts"
    groups = [info["by_group"].get(n, {}) for n in dataset.group_names] or [info]
    counts = [[g.get(counted, {}).get(c, 0) for c in dataset.label_names] for g in groups]
    return losses.class_weight_table(config.train.class_weighting, counts)


def _write_config(config: Config, workdir: str) -> None:
    """`workdir/config.json`, checked against a checkpoint's config (`murajax.resume`)."""
    resume.check_and_write_config(config, workdir)


def images_in(batch: Batch, global_batch_size: int) -> int:
    """How many images the model processes for a global batch of which `batch` is this
    process's share: a study batch (B, V, H, W, C) holds V view slots per study."""
    views = batch["image"].shape[1] if "view_mask" in batch else 1
    return global_batch_size * views


def train_and_evaluate(config: Config, workdir: str, model: nn.Module | None = None) -> dict:
    """Trains `config` in `workdir`, resuming from its newest checkpoint, then evaluates.

    A custom Flax `model` may be passed (it must map NHWC images to 2 logits and accept
    `train=`); otherwise `config.model` names one. Returns the final `metrics.json` bodies
    by split.

    The workdir must be new, empty or a murajax workdir (`workdir.check_may_write`: someone
    else's folder is refused, `WorkdirError`, with nothing written), and no other command
    may be writing it: its lock (`murajax.workdir_lock`) is held from before anything is
    written until the end (`WorkdirInUse` names the holder). A config that changed since
    the workdir's checkpoints were saved must pass `murajax.resume` (else `ConfigError`).
    SIGTERM and SIGINT stop training after the step in flight, save a checkpoint at it and
    raise `errors.TrainingInterrupted`; calling again resumes from there
    (`murajax.interrupt`; the previous handlers are back on return). A non-finite step
    raises `errors.TrainingDiverged` as `train.on_nonfinite` says, keeping the last good
    checkpoint the newest.
    """
    validation.check_runnable(config)
    what = f"--workdir={workdir}"
    workdir_lib.check_may_write(workdir, what)  # before the lock: it would write a file
    with workdir_lock.holding(workdir):
        workdir_lib.check_may_write(workdir, what)  # again, now that no one else writes it
        _write_config(config, workdir)
        signals = interrupt.StopSignals(
            process_index=jax.process_index(), process_count=jax.process_count()
        )
        with signals:
            return _train_and_evaluate(config, workdir, model, signals)


def _train_and_evaluate(
    config: Config, workdir: str, model: nn.Module | None, signals: interrupt.StopSignals
) -> dict:
    """`train_and_evaluate` after the config checks, with `signals` installed."""
    dataset = data.resolve(config.data)  # the dataset's labels and groups, from its features
    models.check_num_classes(config.model, dataset.num_classes)
    evaluation.check_dataset(config, dataset)
    spec = models.resolve(config.model, num_classes=dataset.num_classes)  # `model.name`, once
    model = model if model is not None else spec.build()
    process_index, process_count = jax.process_index(), jax.process_count()
    data.check_spec_unchanged(dataset, workdir)  # a resumed run: the same labels
    if process_index == 0:
        data.save_spec(dataset, workdir)

    layer_order = freeze.config_layer_order(config, spec, model)
    tx = freeze.make_train_optimizer(config, spec, order=layer_order)
    manager = ckpt.make_manager(
        workdir, keep_latest=config.train.keep_checkpoints, keep_best=config.train.keep_best
    )
    # A run that resumes takes its weights from the checkpoint: `model.weights` is read only
    # to start (so a resumed run does not need the file any more, nor spends time loading it).
    starting = manager.latest_step() is None
    if starting:
        models.weights_file(spec)  # "imagenet" is downloaded (or fails) before compute
    state = steps.create_train_state(
        model,
        tx,
        jax.random.key(config.seed),
        spec.input_shape(config.data.image_size, config.train.batch_size),
        spec if starting else None,
    )
    train_iter = data.make_train_iterator(
        config.data,
        model=spec,
        batch_size=config.train.batch_size,
        seed=config.seed,
        process_index=process_index,
        process_count=process_count,
    )
    resumed = ckpt.restore_latest(manager, state, train_iter)  # falls back from unreadable
    if resumed is not None:
        state, latest = resumed
        print(f"[murajax] resumed from {workdir}/checkpoints/{latest}")
    if process_index == 0:  # a killed run's later rows come again
        writers.truncate_after(workdir, int(state.step))
    start = int(state.step)
    carry = _loop_carry(manager, start)

    writer = writers.MetricWriter(workdir, enabled=process_index == 0)
    try:
        if start < config.train.steps:
            with signals.deferring():
                state, stopped = _train_loop(
                    config,
                    workdir,
                    spec,
                    dataset,
                    model,
                    tx,
                    state,
                    train_iter,
                    manager,
                    writer,
                    layer_order,
                    signals=signals,
                    carry=carry,
                )
            stopped = stopped or signals.signum  # a signal during the last step
            if stopped is not None:
                raise _interrupted(stopped, int(state.step), workdir)
        else:
            print(f"[murajax] training already finished at step {start}; evaluating only")
        state, results = _evaluate_splits(
            config, workdir, spec, dataset, model, state, manager, writer
        )
    finally:
        writer.close()
        manager.close()
    if process_index == 0:
        _write_report(config, workdir, spec, dataset, model, state)
    return results


def _interrupted(signum: int, step: int, workdir: str) -> errors.TrainingInterrupted:
    """The exception for a run stopped by `signum` with a checkpoint at `step`."""
    where = os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR, str(step))
    return errors.TrainingInterrupted(
        f"interrupted by {interrupt.signal_name(signum)}: stopped after step {step} with a"
        f" checkpoint in {where}",
        signum=signum,
        step=step,
    )


def _loop_carry(manager: Any, step: int) -> dict[str, Any]:
    """What the train loop saved beside the state at `step` (the log window's steps not
    written yet, the non-finite count): `{}` at step 0 or for an older checkpoint."""
    if step == 0 or step not in manager.all_steps():
        return {}
    restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"] or {}).get("train_loop") or {}


def _evaluate_splits(
    config: Config,
    workdir: str,
    spec: models.ModelSpec,
    dataset: DatasetSpec,
    model: nn.Module,
    state: steps.TrainState,
    manager: Any,
    writer: Any,
) -> tuple[steps.TrainState, dict]:
    """The final evaluation of `eval.checkpoint` on `eval.splits`; returns the state
    evaluated and the `metrics.json` bodies by split."""
    results = {}
    eval_fn = steps.make_state_eval_fn(model)
    step = ckpt.select_step(manager, config.eval.checkpoint)
    if step is not None and step != int(state.step):
        state, _ = ckpt.restore(manager, step, state, None)
    for split in config.eval.splits:
        results[split] = evaluation.evaluate_and_write(
            config,
            workdir,
            split,
            state,
            eval_fn,
            spec,
            dataset,
            step=int(state.step),
            writer=writer,
        )
        study = results[split]["study"]
        print(
            f"[murajax] {split} (checkpoint {int(state.step)}): study kappa {study['kappa']:.3f}"
            f" [{study['kappa_ci'][0]:.3f}, {study['kappa_ci'][1]:.3f}],"
            f" AUROC {study['auroc']:.3f}, n={study['n']} studies"
        )
        variables = steps.state_variables(state)
        study_browser.write_if_wanted(config, workdir, split, spec, dataset, model, variables)
    return state, results


def _write_report(
    config: Config,
    workdir: str,
    spec: models.ModelSpec,
    dataset: DatasetSpec,
    model: nn.Module,
    state: steps.TrainState,
) -> None:
    """`report.md` in the workdir; a failure is reported, not raised (the results are saved)."""
    try:
        path = report.write_report(
            config,
            workdir,
            spec=spec,
            dataset=dataset,
            model=model,
            variables=steps.state_variables(state),
        )
        print(f"[murajax] report: {path}")
    except Exception as error:  # noqa: BLE001
        print(f"[murajax] warning: report.md not written: {type(error).__name__}: {error}")


def _batch_stats_mask(
    config: Config, spec: models.ModelSpec, state: steps.TrainState, layer_order: Any
) -> Any:
    """Which running statistics train (`freeze.batch_stats_mask`); None if none is frozen."""
    if config.model.freeze == "none" or not state.batch_stats:
        return None
    return freeze.batch_stats_mask(
        state.params, state.batch_stats, config.model.freeze, spec, layer_order
    )


def _step_identity(
    config: Config, model: nn.Module, weight_table: np.ndarray, batch_stats_mask: Any
) -> str | None:
    """What determines the train step's program beyond its arguments' shapes, for
    `murajax.executable_cache`: the config, the model and what the data gave (class weights,
    the frozen statistics). None (no executable cache) for a model defined outside murajax,
    whose source the cache's key does not cover."""
    if not type(model).__module__.startswith("murajax."):
        return None
    return executable_cache.describe(config, model, weight_table, batch_stats_mask)


def _train_loop(
    config: Config,
    workdir: str,
    spec: models.ModelSpec,
    dataset: DatasetSpec,
    model: nn.Module,
    tx: optax.GradientTransformation,
    state: steps.TrainState,
    train_iter: Any,
    manager: Any,
    writer: writers.MetricWriter,
    layer_order: Any = None,
    *,
    signals: interrupt.StopSignals | None = None,
    carry: dict[str, Any] | None = None,
) -> tuple[steps.TrainState, int | None]:
    """Runs steps `state.step + 1 .. train.steps` with logging, evaluation and checkpoints.

    `state` (host-local) goes onto every device as `train.parallelism` says
    (`murajax.parallel`); evaluation and checkpoints see it host-local again, and so does
    the caller.

    Step metrics stay on the devices until a step that logs, evaluates, saves or stops. There
    the host fetches them and checks them for non-finite steps (`murajax.nonfinite`), which
    raises `TrainingDiverged` before anything of them is logged or saved. A checkpoint keeps
    the log window's steps not logged yet (`carry` hands them back on resume), so a resumed
    run logs what an uninterrupted one does. `signals` is asked after every step; when it
    says stop, a checkpoint is saved at that step. Returns the host-local state and the
    signal that stopped the loop (None when every step ran).
    """
    t = config.train
    signals = signals if signals is not None else interrupt.StopSignals()  # none installed
    carry = carry or {}
    weight_table = class_weight_table(config, spec, dataset)
    batch_stats_mask = _batch_stats_mask(config, spec, state, layer_order)
    step_fn = functools.partial(
        steps.train_step,
        model=model,
        tx=tx,
        weight_table=jnp.asarray(weight_table),
        label_smoothing=t.label_smoothing,
        l2_weight=t.l2_weight,
        batch_stats_mask=batch_stats_mask,
        skip_nonfinite=t.on_nonfinite == "skip",
    )
    dp = parallel.data_parallel(
        step_fn,
        t.parallelism,
        cache_identity=_step_identity(config, model, weight_table, batch_stats_mask),
    )
    eval_fn = steps.make_state_eval_fn(model)
    start = int(state.step)
    state = dp.put_state(state)
    watch = nonfinite.Watch(skip=t.on_nonfinite == "skip", max_skipped=t.max_skipped)
    watch.restore(carry.get("watch"))
    window = nonfinite.rows_from_json(carry.get("window"))  # fetched, not logged yet
    on_device: list[tuple[int, Metrics]] = []
    stopped = None
    progress = tqdm(
        total=t.steps, initial=start, desc="train", disable=not t.progress, dynamic_ncols=True
    )
    tick, images = time.perf_counter(), 0
    try:
        for step in range(start + 1, t.steps + 1):
            batch = next(train_iter)
            state, metrics = dp.step(state, dp.put_batch(batch))
            if step == start + 1 and getattr(dp.step, "loaded", False):
                progress.write("[murajax] train step loaded from the executable cache")
            on_device.append((step, metrics))
            images += images_in(batch, t.batch_size)
            progress.update(1)
            stopped = signals.stop_at(step, final=step == t.steps)
            log = step % t.log_every == 0 or step == t.steps
            evaluate = step % t.eval_every == 0 or step == t.steps
            save = evaluate or step % t.checkpoint_every == 0 or stopped is not None
            if not (log or save):
                continue
            window += nonfinite.host_rows(on_device)
            on_device = []
            _check_finite(watch, window, manager, workdir)
            if log:
                summary = nonfinite.train_row(window, count_skipped=watch.skip)
                summary["images_per_sec"] = images / (time.perf_counter() - tick)
                writer.write(step, "train", summary)
                progress.set_postfix(
                    loss=f"{summary['loss']:.4f}", img_s=f"{summary['images_per_sec']:.0f}"
                )
                window, tick, images = [], time.perf_counter(), 0
            if not save:
                continue
            eval_metrics = None
            if evaluate:
                host = dp.host_state(state)
                eval_metrics = evaluation.evaluate_holdout(config, host, eval_fn, spec, dataset)
                writer.write(step, "holdout", eval_metrics)
                opt_state = optim.observe_holdout_loss(
                    host.opt_state, eval_metrics["loss"], config.optim
                )
                if opt_state is not host.opt_state:  # a plateau schedule took the loss
                    state = dp.put_state(host.replace(opt_state=opt_state))
                progress.write(
                    f"step {step}: holdout loss {eval_metrics['loss']:.4f}, study kappa"
                    f" {eval_metrics['kappa']:.3f}, AUROC {eval_metrics['auroc']:.3f}"
                )
            ckpt_metrics = (
                {workdir_lib.BEST_METRIC: eval_metrics["kappa"]} if eval_metrics else None
            )
            meta = {
                "step": step,
                "config": dataclasses.asdict(config),
                "train_loop": {"window": nonfinite.rows_to_json(window), "watch": watch.to_json()},
            }
            ckpt.save(manager, step, dp.host_state(state), train_iter, meta, ckpt_metrics)
            if stopped is not None:
                break
    finally:
        progress.close()
    return dp.host_state(state), stopped


def _check_finite(watch: nonfinite.Watch, rows: list, manager: Any, workdir: str) -> None:
    """Raises `TrainingDiverged` if `watch` finds a reason to stop in `rows` (one line: the
    step, what was not finite, the checkpoint kept and what to do)."""
    found = watch.check(rows)
    if found is None:
        return
    what = nonfinite.describe(found.code)
    if watch.skip:
        reason = (
            f"{found.in_a_row} steps in a row up to step {found.step} had a non-finite {what}"
            f" (train.max_skipped={watch.max_skipped})"
        )
    else:
        reason = f"step {found.step} had a non-finite {what} (train.on_nonfinite='stop')"
    latest = manager.latest_step()
    if latest is None:
        kept = "no checkpoint was saved before it; start again with a lower"
    else:
        where = os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR, str(latest))
        kept = f"the last good checkpoint is {where}; rerun with a lower"
    raise errors.TrainingDiverged(
        f"training diverged: {reason}; {kept} optim.learning_rate (or optim.grad_clip_norm"
        f" in a new workdir)"
    )
