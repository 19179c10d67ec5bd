"""nonfinite.check_step: the `nonfinite` bits and `grad_norm` of a step in one pass over the
leaves, equal to the per-leaf reference (`all_finite`, `optax.global_norm`)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from murajax import nonfinite


def _tree(seed: int = 0) -> dict:
    """Leaves shaped like a small CNN's: kernels (> 32 elements), biases, BatchNorm vectors,
    a scalar and a bfloat16 leaf."""
    keys = jax.random.split(jax.random.key(seed), 6)
    return {
        "conv": {
            "kernel": jax.random.normal(keys[0], (3, 3, 4, 8)),
            "bias": jax.random.normal(keys[1], (8,)),
        },
        "bn": {"scale": jax.random.normal(keys[2], (40,)), "bias": jnp.zeros((40,))},
        "dense": {"kernel": jax.random.normal(keys[3], (300, 2)).astype(jnp.bfloat16)},
        "temperature": jax.random.normal(keys[4], ()),
    }


def _reference(loss, grads, params) -> tuple[int, float]:
    """The per-leaf definition: isfinite(loss), all_finite of each tree, and the global
    norm in float64 (optax.global_norm sums a bfloat16 leaf in bfloat16: 3e-4 off here)."""
    bits = [
        (jnp.isfinite(loss), nonfinite.LOSS),
        (nonfinite.all_finite(grads), nonfinite.GRADIENTS),
    ]
    bits.append((nonfinite.all_finite(params), nonfinite.PARAMETERS))
    code = sum(bit for ok, bit in bits if not bool(ok))
    norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(grads)))
    return code, float(norm)


_check = jax.jit(nonfinite.check_step)


def _assert_matches_reference(loss, grads, params) -> None:
    got = _check(loss, grads, params)
    code, norm = _reference(loss, grads, params)
    assert got.code.dtype == jnp.int32 and int(got.code) == code
    assert int(nonfinite.nonfinite_code(loss, grads, params)) == code
    if np.isfinite(norm):
        np.testing.assert_allclose(float(got.grad_norm), norm, rtol=1e-6)
    else:
        assert not np.isfinite(float(got.grad_norm))


def test_a_good_step_has_code_zero_and_the_global_norm():
    grads, params = _tree(1), _tree(2)
    _assert_matches_reference(jnp.float32(0.5), grads, params)
    assert int(_check(jnp.float32(0.5), grads, params).code) == 0


LEAVES = [path for path, _ in jax.tree_util.tree_flatten_with_path(_tree())[0]]


def _set_first(tree: dict, where, value: float) -> dict:
    """`tree` with the first element of the leaf at `where` set to `value`."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.reshape(-1).at[0].set(value).reshape(x.shape) if path == where else x,
        tree,
    )


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf, -jnp.inf])
@pytest.mark.parametrize("where", LEAVES, ids=jax.tree_util.keystr)
def test_one_non_finite_gradient_or_parameter_sets_its_bit(where, value):
    grads, params = _tree(1), _tree(2)
    bad_grads, bad_params = _set_first(grads, where, value), _set_first(params, where, value)
    _assert_matches_reference(jnp.float32(0.5), bad_grads, params)
    _assert_matches_reference(jnp.float32(0.5), grads, bad_params)
    _assert_matches_reference(jnp.float32(jnp.nan), bad_grads, bad_params)
    assert int(_check(jnp.float32(0.5), bad_grads, params).code) == nonfinite.GRADIENTS
    assert int(_check(jnp.float32(0.5), grads, bad_params).code) == nonfinite.PARAMETERS
    assert int(_check(jnp.float32(jnp.nan), bad_grads, bad_params).code) == 7


def test_a_non_finite_loss_alone_sets_the_loss_bit():
    grads, params = _tree(1), _tree(2)
    assert int(_check(jnp.float32(jnp.inf), grads, params).code) == nonfinite.LOSS


def test_finite_gradients_whose_squares_overflow_are_finite_with_an_infinite_norm():
    grads = jax.tree.map(
        lambda x: jnp.full_like(x, 1e30 if x.dtype == jnp.float32 else 1e4), _tree()
    )
    got = _check(jnp.float32(1.0), grads, _tree(2))
    assert int(got.code) == 0
    assert float(got.grad_norm) == float(optax.global_norm(grads)) == np.inf


def test_trees_that_do_not_pair_leaf_by_leaf_give_the_reference():
    grads, params = _tree(1), _tree(2)
    other = {"a": params["conv"]["kernel"], "b": jnp.arange(3), "c": params["bn"]["scale"]}
    _assert_matches_reference(jnp.float32(0.5), grads, other)
    _assert_matches_reference(
        jnp.float32(0.5), grads, {**other, "c": other["c"].at[3].set(jnp.nan)}
    )
    complex_grads = {"z": jnp.array([3 + 4j, 0j], jnp.complex64), "w": jnp.ones((40,))}
    complex_params = {"z": jnp.array([1 + 1j, jnp.nan], jnp.complex64), "w": jnp.ones((40,))}
    got = _check(jnp.float32(0.0), complex_grads, complex_params)
    assert int(got.code) == nonfinite.PARAMETERS
    np.testing.assert_allclose(float(got.grad_norm), float(optax.global_norm(complex_grads)))
    empty = _check(jnp.float32(0.0), {}, {})
    assert int(empty.code) == 0 and float(empty.grad_norm) == 0.0


def test_each_leaf_pair_is_one_fused_reduction_on_cpu():
    """The reason for check_step: XLA:CPU splits single-output reductions of > 32 elements
    into unfused reduce-window and reduce thunks; the variadic one per leaf pair is not."""
    if jax.default_backend() != "cpu":
        pytest.skip("the thunk layout checked here is XLA:CPU's")
    leaves = {f"w{i}": jnp.ones((64, 3 + i)) for i in range(8)}
    text = _check.lower(jnp.float32(0.0), leaves, leaves).compile().as_text()
    assert "reduce-window" not in text
    reference = jax.jit(_reference_code_and_norm).lower(jnp.float32(0.0), leaves, leaves)
    assert "reduce-window" in reference.compile().as_text()  # what the per-leaf way gave


def _reference_code_and_norm(loss, grads, params):
    bits = [(jnp.isfinite(loss), 1), (nonfinite.all_finite(grads), 2)]
    bits.append((nonfinite.all_finite(params), 4))
    code = sum(jnp.where(ok, 0, bit) for ok, bit in bits)
    return code, optax.global_norm(grads)
