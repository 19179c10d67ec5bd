"""The study browser in a real browser: headless Chromium (selenium) opens a synthetic browser
from file:// and the tests filter, sort, select and read the console as a user would.

Needs selenium, Debian's chromium and chromium-driver (`make browser-test-deps`): skipped
without them, failed when $CI is set. One driver serves the whole module (a few seconds).
"""

import dataclasses
import os

import pytest
from PIL import Image

from murajax.browser import Study, Summary, write_browser
from tests import browser_driver as bd

N_STUDIES = 40


@pytest.fixture(scope="module")
def studies() -> list[Study]:
    """40 seeded studies over three body parts, 1-3 views each."""
    return bd.synthetic_studies(N_STUDIES, seed=0)


@pytest.fixture(scope="module")
def index_html(tmp_path_factory, studies) -> str:
    """The synthetic browser's index.html."""
    root = tmp_path_factory.mktemp("chromium_browser")
    return write_browser(str(root / "browser"), studies, bd.synthetic_summary(str(root)))


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module (skips, or fails under $CI, when missing)."""
    bd.require_chromium()
    driver = bd.start_driver()
    yield driver
    driver.quit()


@pytest.fixture
def page(chromium, index_html):
    """The browser freshly loaded, all filters off; checks the console stayed clean."""
    bd.load(chromium, index_html)
    yield chromium
    assert bd.console_errors(chromium) == []


def test_all_rows_sorted_by_probability(page, studies):
    assert len(bd.visible_rows(page)) == N_STUDIES
    assert bd.count_text(page) == f"{N_STUDIES} of {N_STUDIES} studies"
    expected = sorted(range(N_STUDIES), key=lambda i: -studies[i].prob)
    assert bd.visible_indices(page) == expected
    assert bd.visible_study_ids(page) == [studies[i].study_id for i in expected]


def test_filters(page, studies):
    bd.set_filter(page, errors=True)
    errors = [i for i, s in enumerate(studies) if not s.correct]
    assert 0 < len(errors) < N_STUDIES
    assert sorted(bd.visible_indices(page)) == errors
    assert bd.count_text(page) == f"{len(errors)} of {N_STUDIES} studies"

    bd.set_filter(page, group="XR_ELBOW")
    elbow_errors = [i for i in errors if studies[i].group == "XR_ELBOW"]
    assert sorted(bd.visible_indices(page)) == elbow_errors
    assert len(bd.visible_rows(page)) == len(elbow_errors)

    bd.set_filter(page, errors=False, group="", referred=True, setsize=2)
    expected = [i for i, s in enumerate(studies) if s.referred and len(s.conformal_set) == 2]
    assert sorted(bd.visible_indices(page)) == expected

    bd.reset_filters(page)
    assert len(bd.visible_rows(page)) == N_STUDIES


def test_select_study_loads_images(page, studies):
    first = bd.visible_indices(page)[0]
    assert page.find_elements("css selector", "#views img") == []  # nothing loaded up front
    bd.select_study(page, first)
    images = bd.view_images(page)
    views = studies[first].views
    assert len(images) == 3 * len(views)  # original, overlay's base and its heatmap
    assert all(i["complete"] and i["naturalWidth"] > 0 for i in images)
    assert page.find_element("css selector", "#study-id").text == studies[first].study_id

    page.find_element("css selector", '#method input[value="ig"]').click()
    bd.wait_images_loaded(page)
    heat = page.find_elements("css selector", "#views img.heat")
    assert [h.get_attribute("src").rsplit("-", 1)[-1] for h in heat] == ["1.png"] * len(views)


def test_arrow_keys_move_through_visible_rows(page):
    from selenium.webdriver.common.keys import Keys

    bd.set_filter(page, group="XR_WRIST")
    order = bd.visible_indices(page)
    bd.select_study(page, order[0])
    bd.press(page, Keys.ARROW_DOWN)
    bd.press(page, Keys.ARROW_DOWN)
    assert bd.selected_index(page) == order[2]
    bd.press(page, Keys.ARROW_UP)
    assert bd.selected_index(page) == order[1]
    bd.wait_images_loaded(page)


def test_sort_toggles(page, studies):
    header = page.find_element("css selector", '#worklist th[data-key="prob"]')
    assert header.get_attribute("aria-sort") == "descending"
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert bd.visible_indices(page) == sorted(range(N_STUDIES), key=lambda i: studies[i].prob)
    header.click()
    assert bd.visible_indices(page)[0] == max(range(N_STUDIES), key=lambda i: studies[i].prob)

    page.find_element("css selector", '#worklist th[data-key="group"]').click()
    groups = [studies[i].group for i in bd.visible_indices(page)]
    assert groups == sorted(groups)


def test_summary_panel(page):
    page.find_element("css selector", "#tab-summary").click()
    rows = page.find_elements("css selector", "#metrics tbody tr")
    assert [r.text for r in rows][0] == "study kappa 0.917 [0.875, 0.956]"
    assert len(page.find_elements("css selector", "#notes li")) == 2
    bd.wait_for(
        page,
        "const imgs = document.querySelectorAll('#plots img');"
        "return imgs.length === 3 && Array.from(imgs).every(i => i.complete && i.naturalWidth > 0)",
    )


def test_screenshot(page, studies):
    bd.set_filter(page, referred=True)
    bd.select_study(page, bd.visible_indices(page)[1])
    path = bd.screenshot(page, os.path.join(bd.artifacts_dir(), "study_browser.png"))
    assert os.path.getsize(path) > 10_000
    assert bd.viewport(page) == bd.WINDOW
    with Image.open(path) as image:
        assert image.size == bd.WINDOW


def test_no_groups_no_sets_no_views(chromium, tmp_path):
    studies = bd.synthetic_studies(6, seed=3, groups=(None,), methods=())
    studies = [dataclasses.replace(s, conformal_set=()) for s in studies]
    studies[0] = dataclasses.replace(studies[0], views=[])
    index = write_browser(str(tmp_path / "browser"), studies, Summary("plain", [], {}))
    bd.load(chromium, index)
    headers = [th.get_attribute("data-key") for th in chromium.find_elements("css selector", "th")]
    assert "group" not in headers and "set" not in headers
    assert not chromium.find_element("css selector", "#filter-group").is_displayed()
    assert not chromium.find_element("css selector", "#filter-setsize").is_displayed()
    assert len(bd.visible_rows(chromium)) == 6
    bd.select_study(chromium, 1)  # views without heatmaps: the originals only
    assert len(bd.view_images(chromium)) == len(studies[1].views)
    chromium.find_element("css selector", '#worklist tr[data-index="0"]').click()
    assert (
        chromium.find_element("css selector", "#views .empty").text == "No images for this study."
    )
    assert bd.console_errors(chromium) == []
