"""The thesis's optimisers (its background section): SGD with momentum, RMSProp and Adam.

    python -m experiments.sweep --config=experiments/configs/optimizers.py --workdir=W

Each trains `quickstart.py`'s CNN (batch norm, 64 px, 1500 steps of batch 32, warmup + cosine
schedule) with its own learning rate, in the range that usually works for each with batch norm:

    optim.name=sgd,optim.learning_rate=0.03,optim.momentum=0.9    SGD, heavy-ball momentum
    optim.name=rmsprop,optim.learning_rate=0.001,optim.momentum=0.0   plain RMSProp, as
                                                                      the thesis writes it
    optim.name=adam,optim.learning_rate=0.003                      Adam (quickstart's own)

On 2 CPU cores about 4 minutes a run: about 12 minutes in all. `optimizers.py:smoke` runs the
same three for a few steps on `mura_synthetic/tiny` (seconds each; tests).
"""

from typing import Any

from experiments.configs.thesis import base_config, check_variant
from murajax.config import Config

RUNS: list[dict[str, Any]] = [
    {"optim.name": "sgd", "optim.learning_rate": 0.03, "optim.momentum": 0.9},
    {"optim.name": "rmsprop", "optim.learning_rate": 1e-3, "optim.momentum": 0.0},
    {"optim.name": "adam", "optim.learning_rate": 3e-3},
]


def get_config(arg: str | None = None) -> Config:
    """quickstart (or its smoke variant); the runs change only the optimiser."""
    check_variant("optimizers.py", arg, (None, "smoke"))
    return base_config(arg)


def get_sweep(arg: str | None = None) -> list[dict[str, Any]]:
    """SGD with momentum, RMSProp and Adam, each with its own learning rate."""
    check_variant("optimizers.py", arg, (None, "smoke"))
    return [dict(run) for run in RUNS]
