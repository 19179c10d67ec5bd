"""Seconds per study of each attribution method (`murajax.attribution_maps`).

    python -m experiments.bench.attributions [--model=densenet169] [--image_size=224]
        [--views=3] [--methods=gradcam,ig,occlusion] [--ig_steps=32]
        [--occlusion_patch=32] [--occlusion_stride=32] [--repeats=2]

A randomly initialised model (weights do not change the time) explains one study of `views`
random images; each method is compiled first (its compile time is printed apart), then timed
as the median of `repeats` runs, as `predict --heatmaps` runs it.
"""

import argparse
import dataclasses
import statistics
import time

from murajax import xla_flags


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command's arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet169")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--methods", default="gradcam,ig,occlusion")
    parser.add_argument("--ig_steps", type=int, default=None)
    parser.add_argument("--ig_baseline", default=None)
    parser.add_argument("--occlusion_patch", type=int, default=None)
    parser.add_argument("--occlusion_stride", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    return parser.parse_args(argv)


def time_method(fn, images, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, which compiles; median seconds of `repeats` more)."""
    start = time.perf_counter()
    fn(images)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    """Prints one line per method: seconds per study (and its compile time)."""
    args = parse(argv)
    xla_flags.set_default()
    import jax  # here: after the XLA flags are set
    import numpy as np

    from murajax import attribution_maps, models
    from murajax.config import EvalConfig, ModelConfig

    overrides = {
        name: getattr(args, name)
        for name in ("ig_steps", "ig_baseline", "occlusion_patch", "occlusion_stride")
        if getattr(args, name) is not None
    }
    eval_config = dataclasses.replace(EvalConfig(), **overrides)
    spec = models.resolve(ModelConfig(name=args.model), num_classes=2)
    model = spec.build()
    shape = spec.input_shape(args.image_size, 1)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros(shape, np.float32))
    rng = np.random.default_rng(0)
    size = args.image_size
    images = rng.standard_normal((args.views, size, size, spec.channels)).astype(np.float32)
    print(
        f"{args.model} at {size} px, one study of {args.views} views, {jax.device_count()}"
        f" {jax.devices()[0].platform} device(s); ig_steps={eval_config.ig_steps},"
        f" ig_baseline={eval_config.ig_baseline}, occlusion patch {eval_config.occlusion_patch}"
        f" stride {eval_config.occlusion_stride}"
    )
    for method in attribution_maps.parse_methods(args.methods):
        fn = attribution_maps.make_attribution_fn(
            model, variables, method, eval_config, num_classes=2
        )
        first, seconds = time_method(fn, images, args.repeats)
        print(
            f"{method:>10}: {seconds:7.2f} s per study ({seconds / args.views:.2f} s per image;"
            f" first call {first:.1f} s with compilation)"
        )


if __name__ == "__main__":
    main()
