"""The model-randomisation sanity check of Adebayo et al. (2018), "Sanity checks for saliency
maps": cascading randomisation from the top.

    result = cascade(model, variables, images, ("gradcam", "ig"), jax.random.key(0),
                     eval_config, num_classes=2)
    plot(result, "attribution_sanity.png")

The model's layers are re-initialised one block at a time from the output down, cumulatively,
and each method's maps (`murajax.attribution_maps`, the maps that predict and the report draw)
are drawn after each step. A method that explains the model must give other maps once the
weights it explains are gone: their Spearman rank correlation with the trained model's maps
(per image, then the mean over the images) should fall well below 1.

Layers: the modules that own parameters, in the order a forward pass calls them
(`layer_paths`; found by intercepting the module calls, so any Flax model works). They go in
blocks (`layer_blocks`): consecutive modules whose names share the part before the first
"_" (Keras's naming: `conv5_block3_1_conv` belongs to `conv5`, `block2_conv1` to `block2`),
so DenseNet-169 has 10 steps (head, final BN, conv5, pool4, ..., conv1) rather than 338;
`by_block=False` takes every module alone. Re-initialising a block replaces every variable
collection under it (its parameters and BatchNorm statistics) with what the model's own
`init` gives for `key`.

`check_workdir` runs the check on the first images of a workdir's split and writes
`eval/<split>/attribution_sanity.json` and `.png` (`python -m experiments.sanity_check`).

A map that is constant (all zero: Grad-CAM of a model with nothing positive to show) has no
ranking; its correlation with another map counts as 0 (with an equal one, 1).
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from scipy import stats

from murajax import attribution_maps, attributions, data, files, inference
from murajax import workdir as workdir_lib
from murajax.config import EvalConfig

Path = tuple[str, ...]

RESULT_FILE = "attribution_sanity.json"
"""`eval/<split>/attribution_sanity.json`: `check_workdir`'s result (the report reads it)."""
PLOT_FILE = "attribution_sanity.png"


# --------------------------------------------------------------------------- layers


def _owners(tree: Mapping[str, Any], path: Path = ()) -> list[Path]:
    """The paths of the sub-dicts of a params tree that hold arrays themselves."""
    found = [path] if any(not isinstance(v, Mapping) for v in tree.values()) else []
    for name, value in tree.items():
        if isinstance(value, Mapping):
            found += _owners(value, (*path, name))
    return found


def call_order(model: nn.Module, variables: Any, images: Any) -> list[Path]:
    """The module paths in the order an inference forward pass first calls them (no
    compute: traced with `jax.eval_shape`)."""
    order: dict[Path, None] = {}

    def record(call: Any, args: Any, kwargs: Any, context: Any) -> Any:
        order.setdefault(tuple(context.module.path), None)
        return call(*args, **kwargs)

    inputs = attributions.model_inputs(model, np.asarray(images[:1], np.float32))
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, inputs)
    return list(order)


def layer_paths(model: nn.Module, variables: Any, images: Any) -> list[Path]:
    """The modules that own parameters, from the input to the output (forward call order;
    a module never called goes last, in the tree's order)."""
    owners = _owners(variables["params"])
    order = {path: k for k, path in enumerate(call_order(model, variables, images))}
    return sorted(owners, key=lambda path: order.get(path, len(order)))


def block_name(path: Path) -> str:
    """A module's block: its path with its own name cut at the first "_" ("conv5" for
    `conv5_block3_1_conv`, "head/logits" for ("head", "logits"))."""
    return "/".join((*path[:-1], path[-1].split("_")[0])) if path else "model"


def layer_blocks(paths: Sequence[Path], *, by_block: bool = True) -> list[tuple[str, list[Path]]]:
    """(name, module paths) top-down: the output's block first. Consecutive modules of one
    `block_name` form a block; with `by_block=False` each module is its own."""
    blocks: list[tuple[str, list[Path]]] = []
    for path in reversed(paths):
        name = block_name(path) if by_block else "/".join(path) or "model"
        if blocks and blocks[-1][0] == name:
            blocks[-1][1].append(path)
        else:
            blocks.append((name, [path]))
    return blocks


def _replaced(tree: Any, fresh: Any, path: Path) -> Any:
    """`tree` with its subtree at `path` taken from `fresh` (where both have it)."""
    if not path:
        return fresh
    if not isinstance(tree, Mapping) or path[0] not in tree or path[0] not in fresh:
        return tree
    return {**tree, path[0]: _replaced(tree[path[0]], fresh[path[0]], path[1:])}


def randomized(variables: Any, fresh: Any, paths: Sequence[Path]) -> dict[str, Any]:
    """`variables` with every collection's entries at module `paths` replaced by `fresh`'s
    (the model's initial values)."""
    out = {name: dict(collection) for name, collection in variables.items()}
    for name in out:
        for path in paths:
            if name in fresh:
                out[name] = _replaced(out[name], fresh[name], path)
    return out


# --------------------------------------------------------------------------- correlation


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each pair of maps (N, H, W) x (N, H, W) -> (N,): 1
    for equal maps, else 0 where either map is constant."""
    out = np.zeros(len(a))
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        x, y = np.ravel(x), np.ravel(y)
        if np.array_equal(x, y):
            out[k] = 1.0
        elif np.ptp(x) > 0 and np.ptp(y) > 0:
            out[k] = stats.spearmanr(x, y).statistic
    return out


def cascade(
    model: nn.Module,
    variables: Any,
    images: Any,
    methods: Sequence[str],
    key: jax.Array,
    eval_config: EvalConfig,
    *,
    num_classes: int,
    black: Any = 0.0,
    by_block: bool = True,
) -> dict[str, Any]:
    """Cascading randomisation (module docstring): a JSON-able dict.

    `{"methods", "layers" (block names, top-down), "randomized" (blocks re-initialised at
    each step: 0, 1, ..., len(layers)), "images", "correlation" {method: mean Spearman per
    step}, "correlation_std" {method: its standard deviation over the images per step}}`.
    """
    methods = attribution_maps.check_methods(methods)
    images = np.asarray(images, np.float32)
    blocks = layer_blocks(layer_paths(model, variables, images), by_block=by_block)
    sample = attributions.model_inputs(model, images[:1])
    fresh = jax.jit(model.init)(key, sample)
    steps = [
        randomized(variables, fresh, [p for _, ps in blocks[:k] for p in ps])
        for k in range(len(blocks) + 1)
    ]
    means: dict[str, list[float]] = {}
    spreads: dict[str, list[float]] = {}
    for method in methods:
        fn = attribution_maps.make_variables_fn(
            model, method, eval_config, num_classes=num_classes, black=black
        )
        trained = fn(variables, images)
        scores = [rank_correlation(trained, fn(v, images)) for v in steps]
        means[method] = [round(float(np.mean(s)), 6) for s in scores]
        spreads[method] = [round(float(np.std(s)), 6) for s in scores]
    return {
        "methods": list(methods),
        "layers": [name for name, _ in blocks],
        "randomized": list(range(len(blocks) + 1)),
        "images": len(images),
        "correlation": means,
        "correlation_std": spreads,
    }


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per method: "gradcam: rank correlation 1.00 -> 0.12 after 5 of 5 layers
    randomised"."""
    total = len(result["layers"])
    return [
        f"{method}: rank correlation {values[0]:.2f} -> {values[-1]:.2f} after {total} of"
        f" {total} layers randomised"
        for method, values in result["correlation"].items()
    ]


# --------------------------------------------------------------------------- plot


def plot(result: Mapping[str, Any], path: str, *, title: str = "Cascading randomisation") -> str:
    """Mean rank correlation with the trained model's maps against the blocks re-initialised
    (named on the axis, top-down), one line per method; writes the PNG `path`."""
    from matplotlib.figure import Figure  # here: matplotlib is slow to import

    steps = result["randomized"]
    figure = Figure(figsize=(max(5.0, 0.45 * len(steps) + 2.5), 3.6))
    axes = figure.subplots()
    for method, values in result["correlation"].items():
        spread = np.asarray(result.get("correlation_std", {}).get(method, np.zeros(len(values))))
        label = attribution_maps.TITLES.get(method, method)
        axes.plot(steps, values, marker="o", label=label)
        axes.fill_between(steps, np.subtract(values, spread), np.add(values, spread), alpha=0.15)
    axes.set_xticks(steps, ["trained", *result["layers"]], rotation=45, ha="right")
    axes.set_xlabel("re-initialised down to (cumulative, from the top)")
    axes.set_ylabel("Spearman rank correlation")
    lowest = min((min(v) for v in result["correlation"].values() if len(v)), default=0.0)
    axes.set_ylim(min(-0.25, float(lowest) - 0.1), 1.05)
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    axes.set_title(f"{title} ({result['images']} images)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with files.replacing(path) as part:
        figure.savefig(part, format="png", dpi=100, bbox_inches="tight")
    return path


# --------------------------------------------------------------------------- a workdir


def first_images(loaded: inference.Loaded, split: str, count: int) -> np.ndarray:
    """The first `count` images (count, S, S, C) of `split` as evaluation prepares them (a
    study model's studies are taken view by view)."""
    batches = data.make_eval_batches(
        loaded.config.data, split, model=loaded.spec, batch_size=loaded.config.eval.batch_size
    )
    found: list[np.ndarray] = []
    for batch in batches:
        images = np.asarray(batch["image"])[np.asarray(batch["mask"], bool)]
        if "view_mask" in batch:
            images = images[np.asarray(batch["view_mask"], bool)[np.asarray(batch["mask"], bool)]]
        found += list(images[: count - len(found)])
        if len(found) >= count:
            break
    if not found:
        raise data.DataError(f"split {split!r} holds no image to explain")
    return np.stack(found)


def check_workdir(
    workdir: str,
    *,
    split: str = "validation",
    count: int = 8,
    methods: Sequence[str] = attribution_maps.METHODS,
    checkpoint: str = "best",
    seed: int = 0,
) -> dict[str, Any]:
    """Cascading randomisation of `workdir`'s checkpoint on the first `count` images of
    `split`; writes `eval/<split>/attribution_sanity.json` (the result, with the checkpoint,
    split and seed) and its plot, and returns the result."""
    methods = attribution_maps.check_methods(methods)
    if count < 1:
        raise ValueError(f"images={count}: expected a positive integer")
    loaded = inference.load(workdir, checkpoint)
    images = first_images(loaded, split, count)
    result = cascade(
        loaded.model,
        loaded.variables(),
        images,
        methods,
        jax.random.key(seed),
        loaded.config.eval,
        num_classes=loaded.dataset.num_classes,
        black=attribution_maps.black_value(loaded.config.data, loaded.spec),
    )
    result |= {"split": split, "step": loaded.steps[0], "seed": seed}
    workdir_lib.write_json(workdir_lib.eval_file(workdir, split, RESULT_FILE), result)
    plot(result, workdir_lib.eval_file(workdir, split, PLOT_FILE), title=f"{split}: sanity check")
    return result
