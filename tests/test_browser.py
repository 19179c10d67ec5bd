"""The study browser's writer (murajax.browser), without a browser: files, data.js, images,
the staging folder's replacement and the refusal to replace a folder it did not write."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from murajax.browser import MARKER, Study, Summary, View, write_browser
from murajax.browser import writer as browser_writer
from tests.browser_driver import synthetic_studies, synthetic_summary

PREFIX = "window.MURAJAX_DATA = "


def read_data(directory: str) -> dict:
    """data.js's object, parsed as JSON."""
    with open(os.path.join(directory, "data.js"), encoding="utf-8") as f:
        text = f.read()
    assert text.startswith(PREFIX) and text.rstrip().endswith(";")
    return json.loads(text[len(PREFIX) :].rstrip().rstrip(";"))


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[str, list[Study], dict]:
    """A browser of 12 synthetic studies, written once: (folder, studies, data.js's object)."""
    root = tmp_path_factory.mktemp("browser")
    studies = synthetic_studies(12, seed=1)
    index = write_browser(str(root / "browser"), studies, synthetic_summary(str(root)))
    directory = os.path.dirname(index)
    return directory, studies, read_data(directory)


def test_files_written(written):
    directory, studies, data = written
    for name in ("index.html", "app.js", "style.css", "data.js", MARKER):
        assert os.path.isfile(os.path.join(directory, name)), name
    html = open(os.path.join(directory, "index.html"), encoding="utf-8").read()
    assert '<link rel="icon" href="data:,">' in html
    assert "http://" not in html and "https://" not in html  # nothing from the network
    assert "synthetic — validation, step 0" in html
    assert [s["id"] for s in data["studies"]] == [s.study_id for s in studies]
    assert data["groups"] == ["XR_ELBOW", "XR_SHOULDER", "XR_WRIST"]
    assert data["methods"] == ["gradcam", "ig", "occlusion"]
    for plot in data["summary"]["plots"]:
        assert os.path.isfile(os.path.join(directory, plot["src"]))
    assert [p["caption"] for p in data["summary"]["plots"]][0] == "ROC with operating points"
    assert data["summary"]["metrics"][0] == {
        "name": "study kappa",
        "value": 0.917,
        "ci": [0.875, 0.956],
    }
    assert data["summary"]["metrics"][2]["ci"] is None


def test_study_records(written):
    _, studies, data = written
    for study, record in zip(studies, data["studies"], strict=True):
        assert record["group"] == study.group and record["label"] == study.label
        assert record["prob"] == pytest.approx(study.prob)
        assert record["decision"] == study.decision
        assert record["set"] == list(study.conformal_set)
        assert record["referred"] == study.referred and record["correct"] == study.correct
        assert [v["name"] for v in record["views"]] == [v.name for v in study.views]


def test_images_sizes(written):
    directory, studies, data = written
    for study, record in zip(studies, data["studies"], strict=True):
        for view, view_record in zip(study.views, record["views"], strict=True):
            with Image.open(os.path.join(directory, view_record["thumb"])) as thumb:
                assert max(thumb.size) <= 256 and thumb.mode == "L"
                assert thumb.size == (view_record["width"], view_record["height"])
                height, width = view.image.shape
                assert abs(thumb.size[0] / thumb.size[1] - width / height) < 0.02
            assert set(view_record["heatmaps"]) == set(view.heatmaps)
            for path in view_record["heatmaps"].values():
                with Image.open(os.path.join(directory, path)) as heat:
                    assert heat.size == thumb.size and heat.mode == "P"
                    assert "transparency" in heat.info  # the palette's alpha


def test_small_image_is_not_enlarged(tmp_path):
    image = np.full((40, 30, 1), 128, np.uint8)  # (H, W, 1) is taken as (H, W)
    study = Study("s", None, "normal", 0.2, "normal", (), False, True, [View("a.png", image, {})])
    write_browser(str(tmp_path / "b"), [study], Summary("t", [], {}))
    data = read_data(str(tmp_path / "b"))
    assert data["groups"] == [] and data["methods"] == []
    view = data["studies"][0]["views"][0]
    assert (view["width"], view["height"]) == (30, 40) and view["heatmaps"] == {}


def test_heatmap_colours():
    heat = np.array([[0.0, 1.0], [np.nan, 0.25]], np.float32)
    image = browser_writer.colour_heatmap(heat, 2, 2)
    assert image.mode == "P"
    rgba = np.asarray(image.convert("RGBA"))
    lut = browser_writer.jet_lut()
    assert rgba.shape == (2, 2, 4)
    assert (rgba[0, 0, :3] == lut[0]).all() and rgba[0, 0, 3] == 0
    assert (rgba[0, 1, :3] == lut[255]).all() and rgba[0, 1, 3] == 255
    assert rgba[1, 0, 3] == 0  # NaN counts as no evidence
    assert 0 < rgba[1, 1, 3] < 255


def test_strings_escaped(tmp_path):
    nasty = "a\"b'c</script><script>alert(1)</script>&\u2028<!--"
    image = np.zeros((8, 8), np.uint8)
    view = View(nasty, image, {nasty: np.ones((2, 2), np.float32)})
    study = Study(nasty, nasty, nasty, float("nan"), nasty, (nasty,), True, False, [view])
    summary = Summary(nasty, [(nasty, float("inf"), (0.1, float("nan")))], {}, [nasty])
    write_browser(str(tmp_path / "b"), [study], summary)
    text = open(tmp_path / "b" / "data.js", encoding="utf-8").read()
    assert "</script" not in text.lower() and "<" not in text and "\u2028" not in text
    data = read_data(str(tmp_path / "b"))
    record = data["studies"][0]
    assert record["id"] == nasty and record["set"] == [nasty] and record["prob"] is None
    assert data["summary"]["metrics"][0] == {"name": nasty, "value": None, "ci": [0.1, None]}
    assert list(record["views"][0]["heatmaps"]) == [nasty]
    html = open(tmp_path / "b" / "index.html", encoding="utf-8").read()
    assert "</script><script>alert" not in html and "&lt;/script&gt;" in html


def test_replaces_own_folder_whole(tmp_path):
    target = tmp_path / "browser"
    summary = Summary("t", [], {})
    write_browser(str(target), synthetic_studies(5, seed=2), summary)
    assert os.path.isdir(target / "img" / "4")
    write_browser(str(target), synthetic_studies(2, seed=3), summary)
    assert len(read_data(str(target))["studies"]) == 2
    assert not os.path.exists(target / "img" / "4")  # nothing of the old browser is left
    assert sorted(os.listdir(tmp_path)) == ["browser"]  # no staging or old folder left


def test_refuses_foreign_folder(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a study browser") as info:
        write_browser(str(target), synthetic_studies(2), Summary("t", [], {}))
    assert "\n" not in str(info.value)
    assert (target / "thesis.tex").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["mine"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a study browser"):
        write_browser(str(a_file), [], Summary("t", [], {}))


def test_empty_folder_is_used(tmp_path):
    (tmp_path / "empty").mkdir()
    index = write_browser(str(tmp_path / "empty"), [], Summary("t", [], {}))
    assert os.path.isfile(index) and read_data(str(tmp_path / "empty"))["studies"] == []


def test_failure_leaves_old_browser(tmp_path, monkeypatch):
    target = tmp_path / "browser"
    write_browser(str(target), synthetic_studies(3, seed=4), Summary("old", [], {}))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(browser_writer, "write_page", broken)
    with pytest.raises(OSError, match="disk full"):
        write_browser(str(target), synthetic_studies(2, seed=5), Summary("new", [], {}))
    assert read_data(str(target))["summary"]["title"] == "old"
    assert sorted(os.listdir(tmp_path)) == ["browser"]


@pytest.mark.parametrize(
    "image, heatmap, match",
    [
        (np.zeros((4, 4), np.float32), np.zeros((2, 2)), "uint8"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), "uint8"),
        (np.zeros((4, 4), np.uint8), np.zeros((2, 2, 2)), "heatmap 'gradcam'"),
    ],
)
def test_bad_arrays_rejected(tmp_path, image, heatmap, match):
    view = View("v.png", image, {"gradcam": heatmap})
    study = Study("s1", None, "normal", 0.1, "normal", (), False, True, [view])
    with pytest.raises(ValueError, match=match) as info:
        write_browser(str(tmp_path / "b"), [study], Summary("t", [], {}))
    assert "'s1'" in str(info.value) and "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_missing_plot_rejected(tmp_path):
    summary = Summary("t", [], {"ROC": str(tmp_path / "missing.png")})
    with pytest.raises(ValueError, match="'ROC'"):
        write_browser(str(tmp_path / "b"), [], summary)
    assert os.listdir(tmp_path) == []


def test_static_files_are_package_data():
    for name in browser_writer.STATIC_FILES:
        assert browser_writer.TITLE_PLACEHOLDER in browser_writer.static_text("index.html")
        assert browser_writer.static_text(name)
