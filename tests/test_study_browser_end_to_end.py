"""The study browser of a real run, read in headless Chromium against its predictions.csv.

A seconds-long training on `trivial_mura` writes `eval/validation/browser/`; Chromium opens it
from file://, and the worklist, a filter, a study's images and the console are checked as a
reader would see them (`tests/browser_driver.py`; skipped without Chromium, failed under $CI).
"""

import csv
import os

import pytest

from tests import browser_driver as bd


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory) -> str:
    """A trained workdir whose evaluation wrote the browser with all three attributions."""
    from murajax import train
    from tests.trivial_mura import trivial_config

    config = trivial_config(data_dir)
    config.eval.bootstrap_samples = 20
    config.eval.attributions = ("gradcam", "ig", "occlusion")
    config.eval.ig_steps = 4
    config.eval.occlusion_patch = 8
    config.eval.occlusion_stride = 8
    workdir = str(tmp_path_factory.mktemp("browser_run") / "run")
    train.train_and_evaluate(config, workdir)
    return workdir


def _predictions(workdir: str) -> list[dict[str, str]]:
    with open(os.path.join(workdir, "eval", "validation", "predictions.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _index(workdir: str) -> str:
    return os.path.join(workdir, "eval", "validation", "browser", "index.html")


def test_the_run_wrote_a_browser_of_its_studies_and_views(run):
    from tests.test_browser import read_data

    data = read_data(os.path.dirname(_index(run)))
    rows = _predictions(run)
    assert sorted(s["id"] for s in data["studies"]) == sorted(r["study_id"] for r in rows)
    for study in data["studies"]:
        assert study["views"], study["id"]
        for view in study["views"]:
            assert set(view["heatmaps"]) == {"gradcam", "ig", "occlusion"}


def test_chromium_reads_the_run_as_predictions_csv_says(run):
    bd.require_chromium()
    rows = _predictions(run)
    driver = bd.open_browser(_index(run))
    try:
        assert len(bd.visible_rows(driver)) == len(rows)
        bd.set_filter(driver, errors=True)
        errors = {r["study_id"] for r in rows if r["label"] != r["pred"]}
        assert set(bd.visible_study_ids(driver)) == errors
        bd.reset_filters(driver)
        bd.set_filter(driver, referred=True)
        referred = {r["study_id"] for r in rows if r["referred"] == "1"}
        assert set(bd.visible_study_ids(driver)) == referred and referred
        bd.reset_filters(driver)
        group = rows[0]["body_part"]
        bd.set_filter(driver, group=group)
        assert len(bd.visible_rows(driver)) == sum(r["body_part"] == group for r in rows)
        bd.select_study(driver, 0)
        bd.wait_images_loaded(driver)
        images = bd.view_images(driver)
        assert images and all(i["naturalWidth"] > 0 for i in images)
        assert bd.console_errors(driver) == []
        bd.screenshot(driver, os.path.join(bd.artifacts_dir(), "study_browser_run.png"))
    finally:
        driver.quit()


def test_evaluate_rewrites_the_browser(run):
    from murajax import reevaluate

    index = _index(run)
    before = os.path.getmtime(index)
    reevaluate.reevaluate(run, "validation")
    assert os.path.getmtime(index) >= before
    assert os.path.isfile(os.path.join(os.path.dirname(index), "data.js"))


def test_a_method_the_model_cannot_give_is_named_and_left_out(capsys):
    import numpy as np

    from murajax import study_browser

    def no_features(images):
        raise ValueError("MyNet marks no feature map: heatmaps need one")

    functions = {"gradcam": no_features, "ig": lambda images: np.zeros(images.shape[:3])}
    maps = study_browser._maps(functions, np.zeros((2, 8, 8, 1), np.float32))
    assert list(maps) == ["ig"] and maps["ig"].shape == (2, 8, 8)
    assert list(functions) == ["ig"]  # not tried again for the next batch
    assert "draws no gradcam heatmaps: MyNet marks no feature map" in capsys.readouterr().out
