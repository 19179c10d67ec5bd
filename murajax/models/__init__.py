"""Models: `create(name, num_classes=..., **kw)` builds a registered Flax linen Module.

Built-in: "cnn" (the thesis's CNN from scratch), "vgg16" and "densenet169" (Keras's
applications, layer for layer; `load_keras_weights` fills them from Keras's ImageNet files and
`pretrained_variables` puts those into a model's initial variables when `model.weights` is
set), and "multiview" (a study model: one shared encoder over all views of a study, pooled
into one prediction). Each model's own config fields are a dataclass beside it (`CNNConfig`,
`VGG16Config`, `DenseNet169Config`, `MultiViewConfig`, the last also taking its backbone's);
`config.model` holds the shared fields and the chosen model's. A user's own module becomes
available to configs (`model.name`) by registering a factory, with its own fields if it has
any:

    @dataclasses.dataclass
    class TinyConfig:
        width: int = 16  # config.model.width, --config.model.width=32

    @murajax.models.register("tiny", config=TinyConfig)
    def tiny(num_classes=2, *, width=16, **kwargs):
        return MyModule(num_classes=num_classes, width=width)

A config's model is resolved once, `spec = models.resolve(config.model)`: the `ModelSpec`
says how the model wants its images, whether it takes studies, which parameters form its
head, holds its config dataclass filled (`spec.options`), and builds the module
(`spec.build()`).

A module holds no weights, so `create(name, weights=path)` raises (a `TypeError` that says
what to call instead); pretrained weights are variables:

    model = models.create("vgg16", num_classes=2)
    variables = models.pretrained_variables(
        ModelConfig(name="vgg16", weights="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))),
    )  # the backbone from the file, the new head as initialised

`weights="imagenet"` (in a `ModelConfig`, or `load_keras_weights("vgg16", "imagenet")`) is
Keras's ImageNet file for vgg16 / densenet169, downloaded once, hash-checked and cached in
`$MURAJAX_CACHE/weights` (`murajax.models.weights_hub`). `save_keras_weights(name, variables,
path)` writes a backbone's variables as such a file (what `load_keras_weights` reads back).
"""

from murajax.models import (  # noqa: F401  (register the built-in models)
    cnn,
    densenet,
    multiview,
    vgg,
)
from murajax.models.cnn import CNN, CNNConfig
from murajax.models.densenet import DenseNet, DenseNet169Config
from murajax.models.keras_save import save_keras_weights
from murajax.models.keras_weights import (
    WeightsError,
    load_keras_weights,
    pretrained_variables,
    weights_file,
)
from murajax.models.layers import mark_features, max_pool_2x2, with_bn_axis
from murajax.models.multiview import MultiView, MultiViewConfig
from murajax.models.registry import (
    ModelSpec,
    check_config,
    check_num_classes,
    create,
    create_from_config,
    input_spec,
    is_study_model,
    loads_keras_weights,
    register,
    registered_names,
    resolve,
)
from murajax.models.vgg import VGG16, VGG16Config

__all__ = [
    "CNN",
    "CNNConfig",
    "DenseNet",
    "DenseNet169Config",
    "MultiView",
    "MultiViewConfig",
    "ModelSpec",
    "VGG16",
    "VGG16Config",
    "WeightsError",
    "check_config",
    "check_num_classes",
    "create",
    "create_from_config",
    "input_spec",
    "is_study_model",
    "load_keras_weights",
    "loads_keras_weights",
    "mark_features",
    "max_pool_2x2",
    "pretrained_variables",
    "save_keras_weights",
    "weights_file",
    "with_bn_axis",
    "register",
    "registered_names",
    "resolve",
]
