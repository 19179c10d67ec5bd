"""Metrics: equal to scikit-learn, bootstrap CIs over studies, aggregation, Youden, EvalState."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from murajax import metrics
from murajax.metrics import EvalState
from tfds_mura.features import BODY_PARTS

SKLEARN_THRESHOLDED = {
    "kappa": skm.cohen_kappa_score,
    "accuracy": skm.accuracy_score,
    "sensitivity": lambda y, p: skm.recall_score(y, p, zero_division=np.nan),
    "specificity": lambda y, p: skm.recall_score(y, p, pos_label=0, zero_division=np.nan),
    "precision": lambda y, p: skm.precision_score(y, p, zero_division=np.nan),
    "f1": lambda y, p: skm.f1_score(y, p, zero_division=np.nan),
}


def _sklearn_scores(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    preds = (probs >= threshold).astype(int)
    out = {name: fn(labels, preds) for name, fn in SKLEARN_THRESHOLDED.items()}
    out["auroc"] = skm.roc_auc_score(labels, probs) if len(set(labels)) == 2 else np.nan
    return out


def _images(n_studies: int, seed: int = 0, separation: float = 0.3) -> dict[str, np.ndarray]:
    """Random image predictions: 1-4 images per study, study labels, probabilities with ties."""
    rng = np.random.default_rng(seed)
    per_study = rng.integers(1, 5, n_studies)
    study_labels = rng.integers(0, 2, n_studies)
    label = np.repeat(study_labels, per_study)
    prob = np.clip(separation * label + rng.uniform(0, 1 - separation, len(label)), 0, 1)
    return {
        "study_id": np.repeat([f"study{i:05d}" for i in range(n_studies)], per_study),
        "group": np.repeat(rng.integers(0, 7, n_studies), per_study),  # MURA's body parts
        "label": label,
        "prob": prob.round(2),  # rounded: ties, as models' probabilities have
        "image_path": np.asarray([f"img{i}.png" for i in range(len(label))]),
        "loss": rng.uniform(0, 1, len(label)),
    }


def _evaluate(images: dict, **kw) -> tuple[dict, dict]:
    return metrics.evaluate_predictions(
        images["study_id"],
        images["prob"],
        images["label"],
        images["group"],
        group_names=BODY_PARTS,
        **kw,
    )


def _assert_close(a: float, b: float) -> None:
    assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12), (a, b)


# --------------------------------------------------------------------------- vs scikit-learn


# 4 abnormal and 6 normal cases; an abnormal 0.5 sits on the threshold 0.5 (>= predicts
# abnormal) and an abnormal 0.2 ties a normal 0.2. AUROC = P(abnormal > normal) + ties / 2:
# 0.9 and 0.7 beat all 6 normals, 0.5 beats 5, 0.2 beats 2 and ties 1: 19.5 / 24.
HAND_LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
HAND_PROBS = np.array([0.9, 0.7, 0.5, 0.2, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05])
HAND_SCORES = {
    # threshold 0.5: tp 3 (0.9, 0.7, 0.5), fn 1, fp 1 (0.6), tn 5; chance agreement
    # pe = 0.4 * 0.4 + 0.6 * 0.6 = 0.52, kappa = (0.8 - 0.52) / (1 - 0.52) = 7 / 12
    0.5: {
        "confusion": {"tn": 5, "fp": 1, "fn": 1, "tp": 3},
        "accuracy": 0.8,
        "sensitivity": 3 / 4,
        "specificity": 5 / 6,
        "precision": 3 / 4,
        "f1": 3 / 4,
        "kappa": 7 / 12,
        "auroc": 19.5 / 24,
    },
    # threshold 0.65: tp 2, fn 2, fp 0, tn 6; pe = 0.4 * 0.2 + 0.6 * 0.8 = 0.56,
    # kappa = (0.8 - 0.56) / 0.44 = 6 / 11; f1 = 2 * 1 * 0.5 / 1.5 = 2 / 3
    0.65: {
        "confusion": {"tn": 6, "fp": 0, "fn": 2, "tp": 2},
        "accuracy": 0.8,
        "sensitivity": 1 / 2,
        "specificity": 1.0,
        "precision": 1.0,
        "f1": 2 / 3,
        "kappa": 6 / 11,
        "auroc": 19.5 / 24,
    },
}


@pytest.mark.parametrize("threshold", sorted(HAND_SCORES))
def test_point_scores_equal_hand_computed_values(threshold):
    scores = metrics.point_scores(HAND_LABELS, HAND_PROBS, threshold)
    want = HAND_SCORES[threshold]
    assert scores["confusion"] == want["confusion"]
    assert (scores["n"], scores["abnormal"], scores["normal"]) == (10, 4, 6)
    for name in metrics.SCORE_NAMES:
        assert scores[name] == pytest.approx(want[name], rel=1e-12), name


def test_point_scores_single_class_are_nan_like_sklearn():
    scores = metrics.point_scores(np.ones(5), np.linspace(0.1, 0.9, 5))
    assert np.isnan(scores["auroc"]) and np.isnan(scores["specificity"])
    assert scores["sensitivity"] == 0.6
    scores = metrics.point_scores(np.zeros(4), np.full(4, 0.1))
    assert np.isnan(scores["kappa"]) and np.isnan(scores["precision"])


def test_vectorised_bootstrap_equals_sklearn_on_every_resample():
    images = _images(150, seed=2)
    studies = metrics.aggregate_studies(
        images["study_id"], images["prob"], images["label"], images["group"]
    )
    _, _, image_study = metrics.study_index(images["study_id"])
    counts = metrics.bootstrap_counts(len(studies["label"]), 60, np.random.default_rng(3))
    weights = counts.astype(float)
    study_scores = metrics.resampled_scores(weights, studies["label"], studies["prob"], 0.5)
    image_scores = metrics.resampled_scores(
        weights[:, image_study], images["label"], images["prob"], 0.5
    )
    for b in range(len(counts)):
        drawn = np.repeat(np.arange(len(studies["label"])), counts[b])  # the resampled studies
        expected = _sklearn_scores(studies["label"][drawn], studies["prob"][drawn], 0.5)
        rows = np.concatenate([np.flatnonzero(image_study == s) for s in drawn])  # their images
        expected_images = _sklearn_scores(images["label"][rows], images["prob"][rows], 0.5)
        for name in metrics.SCORE_NAMES:
            _assert_close(study_scores[name][b], expected[name])
            _assert_close(image_scores[name][b], expected_images[name])


def test_weighted_auroc_handles_ties_and_missing_classes():
    labels = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([0.2, 0.5, 0.5, 0.9, 0.5, 0.2])
    weights = np.array([[1, 1, 1, 1, 1, 1], [2, 0, 1, 3, 1, 0], [0, 0, 1, 1, 0, 1]], float)
    aurocs = metrics.weighted_auroc(weights, labels, probs)
    for b in range(2):
        rows = np.repeat(np.arange(6), weights[b].astype(int))
        assert aurocs[b] == pytest.approx(skm.roc_auc_score(labels[rows], probs[rows]))
    assert np.isnan(aurocs[2])  # only abnormal cases drawn


def test_bootstrap_counts_are_resamples_with_replacement():
    counts = metrics.bootstrap_counts(7, 50, np.random.default_rng(0))
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    rng = np.random.default_rng(0)
    assert (counts[0] == np.bincount(rng.integers(0, 7, size=(50, 7))[0], minlength=7)).all()


# --------------------------------------------------------------------------- CIs


def test_intervals_contain_the_estimate_and_shrink_with_more_data():
    small, _ = _evaluate(_images(60, seed=4), bootstrap_samples=300)
    large, _ = _evaluate(_images(1500, seed=4), bootstrap_samples=300)
    for result in (small, large):
        for level in ("study", "image"):
            for name in metrics.SCORE_NAMES:
                low, high = result[level][f"{name}_ci"]
                assert low <= result[level][name] <= high, (level, name)
    for level in ("study", "image"):
        for name in ("kappa", "auroc", "accuracy"):
            width = lambda r, lv=level, n=name: np.diff(r[lv][f"{n}_ci"])[0]  # noqa: E731
            assert width(large) < 0.5 * width(small), (level, name)


def test_intervals_are_reproducible_with_the_seed():
    images = _images(80, seed=5)
    first, _ = _evaluate(images, bootstrap_samples=100, seed=7)
    again, _ = _evaluate(images, bootstrap_samples=100, seed=7)
    other, _ = _evaluate(images, bootstrap_samples=100, seed=8)
    assert first == again
    assert first["study"]["kappa_ci"] != other["study"]["kappa_ci"]
    assert first["study"]["kappa"] == other["study"]["kappa"]


def test_confidence_level_widens_the_interval():
    images = _images(100, seed=6)
    narrow, _ = _evaluate(images, bootstrap_samples=300, confidence=0.8)
    wide, _ = _evaluate(images, bootstrap_samples=300, confidence=0.99)
    assert np.diff(wide["study"]["auroc_ci"])[0] > np.diff(narrow["study"]["auroc_ci"])[0]


def test_no_resamples_give_undefined_intervals():
    result, _ = _evaluate(_images(20), bootstrap_samples=0)
    assert all(np.isnan(result["study"]["kappa_ci"]))


def test_body_parts_are_scored_on_their_own_studies():
    images = _images(200, seed=7)
    result, studies = _evaluate(images, bootstrap_samples=50)
    assert sum(p["n"] for p in result["by_group"].values()) == result["study"]["n"] == 200
    for index, (name, scores) in enumerate(result["by_group"].items()):
        assert name == BODY_PARTS[index]
        rows = studies["group"] == index
        expected = _sklearn_scores(studies["label"][rows], studies["prob"][rows], 0.5)
        for score in metrics.SCORE_NAMES:
            _assert_close(scores[score], expected[score])
        image_rows = images["group"] == index
        assert scores["image"]["n"] == image_rows.sum()
        _assert_close(
            scores["image"]["auroc"],
            skm.roc_auc_score(images["label"][image_rows], images["prob"][image_rows]),
        )


def test_bootstrap_is_fast_on_a_quickstart_sized_split():
    images = _images(270, seed=8)  # ~700 images, 7 body parts
    start = time.perf_counter()
    _evaluate(images, bootstrap_samples=1000)
    assert time.perf_counter() - start < 10.0  # measured ~0.3 s on 2 shared cores


# --------------------------------------------------------------------------- aggregation


def test_aggregation_by_mean_and_max():
    ids = ["b", "a", "b", "b", "c"]
    probs = np.array([0.2, 0.9, 0.4, 0.9, 0.1])
    labels, parts = np.array([1, 0, 1, 1, 0]), np.array([6, 0, 6, 6, 3])
    mean = metrics.aggregate_studies(ids, probs, labels, parts, "mean")
    assert list(mean["study_id"]) == ["a", "b", "c"]  # sorted: independent of arrival order
    np.testing.assert_allclose(mean["prob"], [0.9, 0.5, 0.1])
    assert list(mean["n_images"]) == [1, 3, 1]
    assert list(mean["label"]) == [0, 1, 0] and list(mean["group"]) == [0, 6, 3]
    maxed = metrics.aggregate_studies(ids, probs, labels, parts, "max")
    np.testing.assert_allclose(maxed["prob"], [0.9, 0.9, 0.1])
    result, studies = metrics.evaluate_predictions(
        ids, probs, labels, parts, aggregation="max", bootstrap_samples=0
    )
    assert list(studies["pred"]) == [1, 1, 0] and result["study"]["accuracy"] == 2 / 3


def test_aggregation_rejects_inconsistent_studies():
    with pytest.raises(ValueError, match="different values of 'label'"):
        metrics.aggregate_studies(["a", "a"], [0.1, 0.2], [0, 1], [0, 0])
    with pytest.raises(ValueError, match="unknown aggregation"):
        metrics.aggregate_studies(["a"], [0.1], [0], [0], "median")


# --------------------------------------------------------------------------- Youden


def test_youden_threshold_maximises_j():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(0.25 * labels + rng.uniform(0, 0.75, 200), 0, 1).round(3)

    def youden_j(threshold: float) -> float:
        preds = probs >= threshold
        return preds[labels == 1].mean() - preds[labels == 0].mean()

    threshold = metrics.youden_threshold(labels, probs)
    best = max(youden_j(t) for t in np.unique(probs))
    assert youden_j(threshold) == pytest.approx(best)
    assert threshold not in probs  # midway between two scores
    fpr, tpr, _ = skm.roc_curve(labels, probs)
    assert youden_j(threshold) == pytest.approx(np.max(tpr - fpr))


def test_youden_threshold_separates_a_separable_set():
    labels = np.array([0, 0, 0, 1, 1])
    threshold = metrics.youden_threshold(labels, np.array([0.1, 0.2, 0.3, 0.7, 0.8]))
    assert threshold == pytest.approx(0.5)
    assert metrics.youden_threshold(np.ones(3), np.array([0.1, 0.2, 0.3])) == 0.5


# --------------------------------------------------------------------------- EvalState


def _state(images: dict) -> EvalState:
    return EvalState.create(**images)


def _split(images: dict, sizes: list[int]) -> list[dict]:
    bounds = np.cumsum([0, *sizes])
    return [
        {k: v[a:b] for k, v in images.items()} for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def test_merged_evaluation_equals_one_shot():
    images = _images(120, seed=10)
    whole = _state(images)
    pieces = [_state(p) for p in _split(images, [50, 1, 0, 100, len(images["label"]) - 151])]
    merged = EvalState.merge_all(pieces)
    options = {"bootstrap_samples": 100, "seed": 3}
    assert merged.compute(**options) == whole.compute(**options)
    grouped = {**options, "group_names": BODY_PARTS}
    assert merged.compute(**grouped) == whole.compute(**grouped)
    assert set(whole.compute(**grouped)["by_group"]) <= set(BODY_PARTS)
    for key, value in whole.as_dict().items():
        np.testing.assert_array_equal(merged.as_dict()[key], value)
    # Any order of merging (hosts may arrive in any order) gives the same metrics.
    shuffled = EvalState.merge_all(pieces[::-1])
    assert shuffled.compute(**options) == whole.compute(**options)
    # Associative, with the empty state as identity.
    a, b, c = pieces[0], pieces[3], pieces[4]
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    np.testing.assert_array_equal(left.prob, right.prob)
    assert len(EvalState.empty().merge(a)) == len(a)


def test_from_batch_drops_padding_rows():
    images = _images(10, seed=11)
    n = len(images["label"])
    batch = {k: v for k, v in images.items() if k not in ("prob", "loss")}
    batch["mask"] = np.arange(n) < n - 3
    state = EvalState.from_batch(batch, {"prob": images["prob"], "loss": images["loss"]})
    assert len(state) == n - 3
    np.testing.assert_array_equal(state.prob, images["prob"][: n - 3])
    np.testing.assert_array_equal(state.study_id, images["study_id"][: n - 3])
    no_loss = EvalState.from_batch(batch, {"prob": images["prob"]})
    assert no_loss.loss is None and np.isnan(no_loss.mean_loss())
    assert state.merge(no_loss).loss is None


def test_from_dict_and_as_dict_round_trip():
    images = _images(5, seed=12)
    state = EvalState.from_dict(images)
    assert EvalState.from_dict(state) is state
    again = EvalState.from_dict(state.as_dict())
    for key, value in state.as_dict().items():
        np.testing.assert_array_equal(again.as_dict()[key], value)
    with pytest.raises(ValueError, match="differ in length"):
        EvalState(
            study_id=np.array(["a"]),
            group=np.array([0, 1]),
            label=np.array([0]),
            prob=np.array([0.1]),
            image_path=np.array(["x"]),
        )


def test_states_of_hosts_pack_gather_and_unpack_to_their_merge():
    images = _images(30, seed=13)
    images["study_id"] = np.asarray([f"{s}/é" for s in images["study_id"]])  # non-ASCII
    first, second = (_state(p) for p in _split(images, [17, len(images["label"]) - 17]))
    second = EvalState.from_dict({**second.as_dict(), "loss": None})
    rows, width = max(len(first), len(second)) + 3, 40
    packed = [metrics.pack_state(s, rows, width) for s in (first, second)]
    gathered = {k: np.stack([p[k] for p in packed]) for k in packed[0]}  # what allgather gives
    result = metrics.unpack_states(gathered)
    expected = first.merge(second)
    for key, value in expected.as_dict().items():
        np.testing.assert_array_equal(result.as_dict()[key], value)
    assert result.loss is None
    # One process through `gather_state` with an explicit allgather: unchanged.
    single = metrics.gather_state(first, allgather=lambda tree: _stack_one(tree))
    np.testing.assert_array_equal(single.study_id, first.study_id)
    np.testing.assert_array_equal(single.loss, first.loss)


def _stack_one(tree):
    if isinstance(tree, dict):
        return {k: np.asarray(v)[None] for k, v in tree.items()}
    return np.asarray(tree)[None]


def test_average_states_matches_images_by_path():
    images = _images(20, seed=14)
    a = _state(images)
    order = np.random.default_rng(0).permutation(len(a))
    b = EvalState.create(**{k: v[order] for k, v in images.items()})
    b = EvalState.from_dict({**b.as_dict(), "prob": 1 - b.prob})
    mean = metrics.average_states([a, b])
    np.testing.assert_allclose(mean.prob, 0.5)
    np.testing.assert_array_equal(mean.image_path, a.image_path)
    assert mean.loss is None
    other = EvalState.from_dict({**a.as_dict(), "image_path": np.char.add("x", a.image_path)})
    with pytest.raises(ValueError, match="different images"):
        metrics.average_states([a, other])
    relabelled = EvalState.from_dict({**a.as_dict(), "label": 1 - a.label})
    with pytest.raises(ValueError, match="labels"):
        metrics.average_states([a, relabelled])


GATHER_SCRIPT = """
import json, sys
import numpy as np
import jax
pid, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
from murajax import metrics
n = 3 + 4 * pid  # the hosts hold different numbers of images and string lengths
state = metrics.EvalState.create(
    study_id=[f"host{pid}/stüdy{i // 2}" for i in range(n)],
    group=[pid] * n,
    label=[(i // 2) % 2 for i in range(n)],
    prob=np.linspace(0.0, 1.0, n),
    image_path=[f"host{pid}/image{i}.png" + "x" * pid for i in range(n)],
    loss=np.full(n, pid + 0.5),
)
gathered = metrics.gather_state(state, process_count=jax.process_count())
print("RESULT " + json.dumps({k: np.asarray(v).tolist() for k, v in gathered.as_dict().items()}))
"""


def test_gather_state_across_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(pid), port],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for pid in (0, 1)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=90)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = []
    for pid, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"process {pid}:\n{out[-2000:]}"
        (line,) = [x for x in out.splitlines() if x.startswith("RESULT ")]
        results.append(json.loads(line.removeprefix("RESULT ")))
    assert results[0] == results[1]
    result = results[0]
    assert len(result["prob"]) == 3 + 7
    assert result["study_id"][0] == "host0/stüdy0" and result["study_id"][-1] == "host1/stüdy3"
    assert result["image_path"][-1] == "host1/image6.pngx"
    assert result["loss"] == [0.5] * 3 + [1.5] * 7
