"""murajax.ops.conv2d: oneDNN's convolutions give XLA's values and gradients, only on CPU."""

import functools
import platform
import sys
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax import models, ops, optim, steps
from murajax.config import Config, ConfigError, ModelConfig, OptimConfig
from murajax.ops import conv as conv_lib
from murajax.ops import onednn
from murajax.validation import validate

# The oneDNN wheels exist for x86-64 Linux, where `make install` builds the extension: there a
# missing extension is a failure, not a skip.
ONEDNN_EXPECTED = sys.platform == "linux" and platform.machine() == "x86_64"
needs_onednn = pytest.mark.skipif(
    not ONEDNN_EXPECTED, reason="oneDNN's wheels exist for x86-64 Linux only"
)

# (batch, size, in, out, kernel, strides, padding, bias, relu): the models' convolutions
# (3x3 'SAME' with bias+ReLU, DenseNet's 1x1, 7x7/2 'VALID' stem, a single-channel input) and
# odd sizes where padding and strides do not divide evenly.
CASES = [
    (2, 9, 3, 5, 3, 1, "SAME", True, True),
    (3, 8, 1, 4, 3, 1, "SAME", True, True),
    (2, 8, 4, 6, 3, 2, "VALID", False, False),
    (2, 15, 3, 8, 7, 2, "VALID", False, False),
    (2, 6, 16, 8, 1, 1, "SAME", False, False),
    (2, 7, 5, 7, 3, 2, ((0, 1), (2, 0)), True, False),
]


@needs_onednn
def test_extension_builds_and_runs_here():
    assert onednn.onednn_status() is None, onednn.onednn_status()
    assert ops.resolve_conv_impl("auto") == "onednn"


def _loss_and_grads(impl, x, kernel, bias, strides, padding, relu):
    def loss(x, kernel, bias):
        y = ops.conv2d(x, kernel, bias, strides=strides, padding=padding, relu=relu, impl=impl)
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), y

    argnums = (0, 1, 2) if bias is not None else (0, 1)
    return jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(x, kernel, bias)


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_float32_values_and_gradients_equal_xla(case):
    n, size, cin, cout, k, stride, padding, with_bias, relu = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, size, size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / k, jnp.float32)
    bias = jnp.asarray(rng.standard_normal(cout), jnp.float32) if with_bias else None
    args = (x, kernel, bias, (stride, stride), padding, relu)
    (loss, y), grads = _loss_and_grads("onednn", *args)
    (want_loss, want_y), want_grads = _loss_and_grads("xla", *args)
    chex.assert_trees_all_close(y, want_y, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(loss, want_loss, rtol=1e-5, atol=1e-4)
    chex.assert_trees_all_close(grads, want_grads, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_bfloat16_values_and_gradients_as_close_to_float32_as_xla():
    """bfloat16 rounds differently in each library: oneDNN's output and gradients must be as
    close to float32 maths on the same (bfloat16) inputs as XLA's, in relative L2 error (at
    most twice XLA's error)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 12, 12, 8)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 8, 16)) / 3, jnp.bfloat16)
    bias = jnp.asarray(rng.standard_normal(16), jnp.bfloat16)
    weights = jnp.asarray(rng.standard_normal((2, 12, 12, 16)), jnp.float32)

    def outputs(impl, dtype):
        def loss(x, kernel, bias):
            y = ops.conv2d(x, kernel, bias, impl=impl)
            return jnp.sum(y.astype(jnp.float32) * weights), y

        grad = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))
        (_, y), grads = grad(x.astype(dtype), kernel.astype(dtype), bias.astype(dtype))
        return [a.astype(jnp.float32) for a in (y, *grads)]

    def errors(impl):
        """Relative L2 errors of the output and the three gradients against float32."""
        pairs = zip(outputs(impl, jnp.bfloat16), reference, strict=True)
        return [float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) for got, want in pairs]

    reference = outputs("xla", jnp.float32)
    onednn_errors, xla_errors = errors("onednn"), errors("xla")
    names = ("y", "dx", "dkernel", "dbias")
    for name, onednn_error, xla_error in zip(names, onednn_errors, xla_errors, strict=True):
        assert 0 < xla_error < 3e-2, (name, xla_error)  # bfloat16 rounds: never 0
        # measured: oneDNN 1.7e-3 to 2.4e-3, XLA the same or (dbias) 1.7e-2
        assert onednn_error <= 2 * xla_error, (name, onednn_error, xla_error)


@needs_onednn
def test_cpu_lowering_calls_onednn_and_gpu_lowering_keeps_xla_convolution():
    x = jnp.ones((1, 8, 8, 3))
    kernel = jnp.ones((3, 3, 3, 4))

    def step(x, kernel):
        return jax.grad(lambda k: jnp.sum(ops.conv2d(x, k, relu=True, impl="onednn")))(kernel)

    cpu = jax.jit(step).trace(x, kernel).lower(lowering_platforms=("cpu",)).as_text()
    gpu = jax.jit(step).trace(x, kernel).lower(lowering_platforms=("cuda",)).as_text()
    assert "murajax_onednn_conv_fwd" in cpu and "murajax_onednn_conv_bwd_weights" in cpu
    assert "murajax_onednn" not in gpu
    assert "convolution" in gpu


@needs_onednn
def test_conv_relu_max_pool_lowers_to_onednn_pooling_on_cpu_only():
    x = jnp.ones((1, 8, 8, 3))
    kernel = jnp.ones((3, 3, 3, 4))

    def step(x, kernel):
        pooled = lambda k: ops.conv2d_relu_max_pool(x, k, impl="onednn")  # noqa: E731
        return jax.grad(lambda k: jnp.sum(pooled(k)))(kernel)

    cpu = jax.jit(step).trace(x, kernel).lower(lowering_platforms=("cpu",)).as_text()
    gpu = jax.jit(step).trace(x, kernel).lower(lowering_platforms=("cuda",)).as_text()
    for target in ("conv_relu_pool_fwd", "unpool_relu_bwd", "conv_bwd_weights"):
        assert f"murajax_onednn_{target}" in cpu
    assert "murajax_onednn" not in gpu
    assert "convolution" in gpu


def test_xla_impl_is_lax_conv():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
    want = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    chex.assert_trees_all_equal(ops.conv2d(x, kernel, impl="xla"), want)
    text = jax.jit(lambda x, k: ops.conv2d(x, k, impl="xla")).lower(x, kernel).as_text()
    assert "murajax_onednn" not in text


def test_auto_falls_back_to_xla_with_one_warning_and_onednn_refuses(monkeypatch):
    monkeypatch.setattr(conv_lib, "onednn_status", lambda: "no oneDNN on this test machine")
    conv_lib._warn_fallback.cache_clear()
    with pytest.warns(RuntimeWarning, match="no oneDNN on this test machine"):
        assert ops.resolve_conv_impl("auto") == "xla"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every convolution
        assert ops.resolve_conv_impl("auto") == "xla"
    with pytest.raises(RuntimeError, match="conv_impl='onednn' is not available"):
        ops.resolve_conv_impl("onednn")
    with pytest.raises(ValueError, match="unknown conv_impl 'fast'"):
        ops.resolve_conv_impl("fast")


def test_conv_impl_is_validated_in_the_config():
    config = Config()
    config.model.conv_impl = "mkl"
    with pytest.raises(ConfigError, match=r"model.conv_impl='mkl'.*'auto', 'xla', 'onednn'"):
        validate(config)


def test_build_reports_missing_onednn(tmp_path, monkeypatch):
    monkeypatch.setenv("MURAJAX_ONEDNN_PREFIX", str(tmp_path))
    with pytest.raises(onednn.BuildError, match="oneDNN headers not found"):
        onednn.build(tmp_path / "out.so")
    assert not list(tmp_path.glob("*.so*"))


def first_train_step(model, x: jax.Array, labels: jax.Array) -> dict:
    """`model`'s initial parameters, its logits and their gradient (of the sum of squares),
    and its first train step (murajax's own, `steps.train_step`, SGD at learning rate 1):
    the loss, the parameters and the BatchNorm statistics after it."""
    tx = optim.make_optimizer(OptimConfig(name="sgd", learning_rate=1.0, momentum=0.0), 1)
    state = steps.create_train_state(model, tx, jax.random.key(0), x.shape)
    step = jax.jit(
        functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            weight_table=jnp.ones((7, 2)),
            label_smoothing=0.0,
            l2_weight=0.0,
        )
    )
    batch = {"image": x, "label": labels, "group": jnp.zeros(len(x), jnp.int32)}
    trained, metrics = step(state, batch)

    def squares(params):
        logits = model.apply(steps.variables(params, state.batch_stats), x)
        return jnp.sum(logits**2), logits

    (_, logits), gradients = jax.jit(jax.value_and_grad(squares, has_aux=True))(state.params)
    return {
        "initial": state.params,
        "logits": logits,
        "gradients": gradients,
        "loss": metrics["loss"],
        "params": trained.params,
        "batch_stats": trained.batch_stats,
    }


def assert_leaves_close(got, want, what: str) -> None:
    """Every array of `got` equals `want`'s to 1e-4 of the largest value of that array."""
    for path, expected in jax.tree_util.tree_leaves_with_path(want):
        actual = functools.reduce(lambda tree, key: tree[key.key], path, got)
        scale = float(jnp.max(jnp.abs(expected)))
        where = what + jax.tree_util.keystr(path)
        assert scale > 0, where  # nothing compared is all zeros
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=where)


@needs_onednn
@pytest.mark.parametrize("name", ["cnn", "vgg16"])
def test_models_train_the_same_on_both_implementations(name):
    """A model's logits and their gradients, and its first train step's loss, parameters and
    BatchNorm statistics, do not depend on `conv_impl` (from the same initial parameters)."""
    size, channels = (16, 1) if name == "cnn" else (32, 3)
    x = jnp.asarray(np.random.default_rng(3).random((2, size, size, channels)), jnp.float32)
    labels = jnp.array([0, 1], jnp.int32)
    xla, onednn = (
        first_train_step(
            models.create_from_config(
                ModelConfig(name=name, conv_impl=impl, widths=(4, 8), dense=(8,), dropout_rate=0.0)
            ),
            x,
            labels,
        )
        for impl in ("xla", "onednn")
    )
    chex.assert_trees_all_equal(xla["initial"], onednn["initial"])
    assert bool(jnp.all(xla["logits"] != 0))
    for key in ("logits", "gradients", "loss", "params", "batch_stats"):
        assert_leaves_close(onednn[key], xla[key], key)


def test_onednn_where_it_cannot_run_is_a_one_line_config_error(monkeypatch):
    monkeypatch.setattr(conv_lib, "onednn_status", lambda: "libdnnl.so not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ops.check_conv_impl("auto")  # falls back to XLA with a warning, no error
    ops.check_conv_impl("xla")
    with pytest.raises(ConfigError) as error:
        ops.check_conv_impl("onednn")
    message = str(error.value)
    assert "\n" not in message
    assert "config.model.conv_impl='onednn'" in message and "libdnnl.so not found" in message
    assert "use 'auto' or 'xla'" in message


@needs_onednn
def test_onednn_gradients_are_bitwise_reproducible():
    """Resuming a run bit-exactly needs the same gradients for the same inputs every time."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((8, 32, 32, 16)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 16, 32)) / 3, jnp.float32)
    bias = jnp.zeros(32, jnp.float32)

    def loss(x, kernel, bias):
        return jnp.sum(jnp.sin(ops.conv2d(x, kernel, bias, relu=True, impl="onednn")))

    grad = jax.jit(jax.grad(loss, (0, 1, 2)))
    first = grad(x, kernel, bias)
    for _ in range(4):
        chex.assert_trees_all_equal(grad(x, kernel, bias), first)


def conv_relu_max_pool_reference(x, kernel, bias):
    """`conv2d_relu_max_pool` from JAX's and Flax's own layers (none of murajax.ops): XLA's
    convolution, `jax.nn.relu`, `flax.linen.max_pool` (select-and-scatter's gradient)."""
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    if bias is not None:
        y = y + bias.astype(x.dtype)
    return nn.max_pool(jax.nn.relu(y), (2, 2), strides=(2, 2), padding="VALID")


@pytest.mark.parametrize("impl", ["onednn", "xla"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "size, with_bias", [(8, True), (9, True), (7, False)], ids=["even", "odd", "odd-nobias"]
)
def test_conv_relu_max_pool_equals_the_layers_apart(impl, dtype, size, with_bias):
    """Values and gradients equal conv2d(relu=True) then max_pool_2x2, bit for bit, and JAX's
    and Flax's own layers (`conv_relu_max_pool_reference`): bit for bit on XLA, to float
    rounding on oneDNN (its gradient sums in another order). Ties from the ReLU's zeros and
    from small-integer inputs, odd sizes (a dropped row and column)."""
    if impl == "onednn" and not ONEDNN_EXPECTED:
        pytest.skip("oneDNN's wheels exist for x86-64 Linux only")
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.integers(-2, 3, (2, size, size, 3)), dtype)
    kernel = jnp.asarray(rng.integers(-1, 2, (3, 3, 3, 4)), jnp.float32)
    bias = jnp.asarray(rng.integers(-1, 2, 4), jnp.float32) if with_bias else None
    weights = jnp.asarray(rng.standard_normal((2, size // 2, size // 2, 4)), jnp.float32)

    def apart(x, kernel, bias):
        y = ops.conv2d(x, kernel, bias, relu=True, impl=impl)
        return ops.max_pool_2x2(y)

    def fused(x, kernel, bias):
        return ops.conv2d_relu_max_pool(x, kernel, bias, impl=impl)

    def loss(f):
        return lambda *a: jnp.sum(f(*a).astype(jnp.float32) * weights)

    argnums = (0, 1, 2) if with_bias else (0, 1)
    expected = jax.jit(jax.value_and_grad(loss(apart), argnums))(x, kernel, bias)
    got = jax.jit(jax.value_and_grad(loss(fused), argnums))(x, kernel, bias)
    assert int(jnp.sum(apart(x, kernel, bias) == 0)) > 0  # the ReLU's zeros tie
    chex.assert_trees_all_equal(fused(x, kernel, bias), apart(x, kernel, bias))
    chex.assert_trees_all_equal(got, expected)
    reference = jax.jit(jax.value_and_grad(loss(conv_relu_max_pool_reference), argnums))
    chex.assert_trees_all_equal(
        fused(x, kernel, bias), conv_relu_max_pool_reference(x, kernel, bias)
    )  # small integers: exact in both dtypes
    if impl == "xla":
        chex.assert_trees_all_equal(got, reference(x, kernel, bias))
    else:  # a bfloat16 gradient of about 10 is rounded to 1/16
        tolerance = 1e-5 if dtype == jnp.float32 else 1 / 64
        chex.assert_trees_all_close(got, reference(x, kernel, bias), rtol=tolerance, atol=tolerance)


@needs_onednn
def test_conv_relu_max_pool_keeps_no_full_size_activation_for_its_gradient():
    """Its backward pass needs the input, kernel and quarter-size pooled arrays only."""
    x = jnp.ones((2, 16, 16, 3))
    kernel = jnp.ones((3, 3, 3, 8))
    _, residuals = jax.vjp(lambda x: ops.conv2d_relu_max_pool(x, kernel, impl="onednn"), x)
    sizes = sorted(leaf.size for leaf in jax.tree.leaves(residuals) if hasattr(leaf, "size"))
    assert max(sizes) == x.size  # the input; the 2 x 16 x 16 x 8 ReLU output is not kept


@pytest.mark.parametrize("impl", ["xla", "auto"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("size", [1, 3])
def test_conv2d_grads_are_the_gradients_of_conv2d(impl, dtype, size):
    keys = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(keys[0], (2, 6, 5, 8), dtype)
    kernel = jax.random.normal(keys[1], (size, size, 8, 4), dtype)
    dy = jax.random.normal(keys[2], (2, 6, 5, 4), dtype)
    _, vjp = jax.vjp(lambda x, k: ops.conv2d(x, k, None, padding="SAME", impl=impl), x, kernel)
    expected = vjp(dy)
    got = jax.jit(lambda x, k, dy: ops.conv2d_grads(x, k, dy, padding="SAME", impl=impl))(
        x, kernel, dy
    )
    tolerance = 1e-5 if dtype == "float32" else 5e-2
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(
            np.asarray(g, np.float32), np.asarray(e, np.float32), rtol=tolerance, atol=tolerance
        )
