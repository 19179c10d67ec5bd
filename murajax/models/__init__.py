"""Models: `create(name, num_classes=..., **kw)` builds a registered Flax linen Module.

Built-in: "cnn" (the thesis's CNN from scratch). A user's own module becomes available to
configs (`model.name`) by registering a factory:

    @murajax.models.register("tiny")
    def tiny(num_classes=2, **kwargs):
        return MyModule(num_classes=num_classes)
"""

from murajax.models import cnn  # noqa: F401  (registers "cnn")
from murajax.models.cnn import CNN
from murajax.models.layers import max_pool_2x2
from murajax.models.registry import (
    create,
    create_from_config,
    input_spec,
    register,
    registered_names,
)

__all__ = [
    "CNN",
    "create",
    "create_from_config",
    "input_spec",
    "max_pool_2x2",
    "register",
    "registered_names",
]
