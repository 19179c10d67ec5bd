"""The cascading-randomisation sanity check (Adebayo et al. 2018) on a tiny CNN."""

import json
import os

import jax
import numpy as np
import pytest

from murajax import attribution_sanity as sanity
from murajax.config import EvalConfig
from murajax.models import CNN, MultiView

SIZE = 16
SETTINGS = EvalConfig(ig_steps=8, occlusion_patch=4, occlusion_stride=4)


def _cnn() -> tuple[CNN, dict, np.ndarray]:
    model = CNN(widths=(4, 8), dense=(8,))
    images = np.random.default_rng(0).random((3, SIZE, SIZE, 1)).astype(np.float32)
    return model, jax.jit(model.init)(jax.random.key(3), images), images  # Grad-CAM > 0


def test_layers_are_listed_top_down_in_blocks():
    model, variables, images = _cnn()
    paths = sanity.layer_paths(model, variables, images)
    assert paths == [("block1_conv1",), ("block2_conv1",), ("dense1",), ("logits",)]
    blocks = sanity.layer_blocks(paths)
    assert [name for name, _ in blocks] == ["logits", "dense1", "block2", "block1"]
    assert sanity.block_name(("conv5_block3_1_conv",)) == "conv5"
    assert sanity.block_name(("head", "logits")) == "head/logits"
    merged = sanity.layer_blocks([("conv1_conv",), ("conv2_block1_0_bn",), ("conv2_block1_1",)])
    assert merged == [("conv2", [("conv2_block1_1",), ("conv2_block1_0_bn",)]),
                      ("conv1", [("conv1_conv",)])]  # fmt: skip


def test_a_study_model_lists_its_encoder_then_its_head():
    model = MultiView(encoder=CNN(widths=(4,), dense=(), num_classes=None))
    images = np.zeros((2, SIZE, SIZE, 1), np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), images[:, None])
    names = [n for n, _ in sanity.layer_blocks(sanity.layer_paths(model, variables, images))]
    assert names[0] == "head/logits" and names[-1] == "encoder/block1"


def test_randomizing_replaces_only_the_chosen_modules():
    model, variables, images = _cnn()
    fresh = jax.jit(model.init)(jax.random.key(1), images)
    out = sanity.randomized(variables, fresh, [("logits",)])["params"]
    trained, new = variables["params"], fresh["params"]
    np.testing.assert_array_equal(out["logits"]["kernel"], new["logits"]["kernel"])
    np.testing.assert_array_equal(out["dense1"]["kernel"], trained["dense1"]["kernel"])
    assert not np.array_equal(out["logits"]["kernel"], trained["logits"]["kernel"])


def test_every_method_changes_when_the_model_is_randomized(tmp_path):
    model, variables, images = _cnn()
    methods = ("gradcam", "ig", "occlusion")
    result = sanity.cascade(
        model, variables, images, methods, jax.random.key(1), SETTINGS, num_classes=2
    )
    assert result["layers"] == ["logits", "dense1", "block2", "block1"]
    assert result["randomized"] == [0, 1, 2, 3, 4] and result["images"] == 3
    for method in methods:
        values = result["correlation"][method]
        assert len(values) == 5 and len(result["correlation_std"][method]) == 5
        assert values[0] == pytest.approx(1.0), method
        assert values[-1] < 0.6, (method, values)
    json.dumps(result)  # plain JSON
    lines = sanity.summary_lines(result)
    assert lines[0].startswith("gradcam: rank correlation 1.00 -> ")
    assert lines[0].endswith("after 4 of 4 layers randomised")
    path = sanity.plot(result, str(tmp_path / "sanity.png"))
    assert os.path.getsize(path) > 1000


def test_rank_correlation_of_constant_maps_is_zero():
    a = np.random.default_rng(0).random((2, 4, 4))
    b = np.stack([a[0], np.zeros((4, 4))])
    np.testing.assert_allclose(sanity.rank_correlation(a, b), [1.0, 0.0])
    np.testing.assert_allclose(sanity.rank_correlation(b[1:], b[1:]), [1.0])
