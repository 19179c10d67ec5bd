"""Helpers for the study browser's tests: synthetic studies, and headless Chromium via
selenium (Debian's `chromium` and `chromium-driver`; `make browser-test-deps` installs them).

A test module starts one driver (`start_driver`, after `require_chromium`), loads a browser
with `load`, and drives it with `visible_rows`, `set_filter`, `select_study`, ... Selenium is
imported only inside the functions that need it, so the browser-less tests import this too.
"""

import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from murajax.browser import Study, Summary, View

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROWS = "#worklist tbody tr.study-row"
VISIBLE_ROWS = ROWS + ":not([hidden])"
WINDOW = (1400, 900)
TIMEOUT_S = 10.0


# ---- synthetic data ----


def synthetic_view(rng: np.random.Generator, name: str, methods: Sequence[str]) -> View:
    """A random radiograph-like view (a bright blob on noise) with random heatmaps."""
    height, width = int(rng.integers(180, 400)), int(rng.integers(180, 400))
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    blob = np.exp(-(((yy - cy) / (0.3 * height)) ** 2 + ((xx - cx) / (0.2 * width)) ** 2))
    image = np.clip(40 + 180 * blob + rng.normal(0, 12, (height, width)), 0, 255)
    heatmaps = {}
    for method in methods:
        h, w = int(rng.integers(7, 32)), int(rng.integers(7, 32))
        gy, gx = np.mgrid[0:h, 0:w]
        py, px = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        peak = np.exp(-(((gy - py) / (0.2 * h)) ** 2 + ((gx - px) / (0.2 * w)) ** 2))
        heatmap = np.clip(peak + rng.uniform(0.0, 0.15, (h, w)), 0.0, 1.0)
        heatmaps[method] = heatmap.astype(np.float32)
    return View(name=name, image=image.astype(np.uint8), heatmaps=heatmaps)


def synthetic_studies(
    n: int = 40,
    *,
    seed: int = 0,
    groups: Sequence[str | None] = ("XR_WRIST", "XR_ELBOW", "XR_SHOULDER"),
    methods: Sequence[str] = ("gradcam", "ig", "occlusion"),
    max_views: int = 3,
) -> list[Study]:
    """`n` seeded random two-class studies with 1..`max_views` views each."""
    rng = np.random.default_rng(seed)
    classes = ("normal", "abnormal")
    studies = []
    for i in range(n):
        group = groups[i % len(groups)]
        prob = float(rng.uniform())
        label = classes[int(rng.uniform() < 0.4)]
        decision = classes[int(prob >= 0.5)]
        conformal_set = tuple(c for c, p in zip(classes, (1 - prob, prob), strict=True) if p > 0.2)
        views = [
            synthetic_view(rng, f"image{j + 1}.png", methods)
            for j in range(int(rng.integers(1, max_views + 1)))
        ]
        studies.append(
            Study(
                study_id=f"{group or 'study'}/patient{i:05d}/study1_{label}",
                group=group,
                label=label,
                prob=prob,
                decision=decision,
                conformal_set=conformal_set,
                referred=abs(prob - 0.5) < 0.15,
                correct=decision == label,
                views=views,
            )
        )
    return studies


def synthetic_summary(plot_dir: str, title: str = "synthetic — validation, step 0") -> Summary:
    """A summary with three small PNG plots written into `plot_dir`."""
    from PIL import Image

    plots = {}
    for k, caption in enumerate(("ROC with operating points", "Referral", "Reliability")):
        path = os.path.join(plot_dir, f"plot{k}.png")
        shade = np.linspace(80 + 40 * k, 255, 320, dtype=np.float32)
        Image.fromarray(np.tile(shade, (240, 1)).astype(np.uint8)).save(path)
        plots[caption] = path
    return Summary(
        title=title,
        metrics=[
            ("study kappa", 0.917, (0.875, 0.956)),
            ("study AUC", 0.953, (0.931, 0.972)),
            ("studies", 40.0, None),
        ],
        plots=plots,
        notes=["operating point: Youden's J (threshold 0.48)", "conformal alpha 0.1"],
    )


# ---- Chromium ----


def missing_tools() -> list[str]:
    """What the real-browser tests lack: selenium, chromium or chromedriver (empty if none)."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"chromium ({CHROMIUM})")
    if not os.access(CHROMEDRIVER, os.X_OK):
        missing.append(f"chromedriver ({CHROMEDRIVER})")
    return missing


def require_chromium() -> None:
    """Fails (when $CI is set: CI must run the browser tests) or skips the calling test, in one
    line, when selenium, Chromium or chromedriver is missing."""
    missing = missing_tools()
    if not missing:
        return
    message = f"the study browser's tests need {', '.join(missing)}: make browser-test-deps"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def start_driver(width: int = WINDOW[0], height: int = WINDOW[1]) -> Any:
    """A headless Chromium driver (window `width` x `height`) that records the console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--allow-file-access-from-files",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        set_viewport(driver, width, height)
    except BaseException:
        driver.quit()
        raise
    return driver


def viewport(driver: Any) -> tuple[int, int]:
    """The page's viewport (innerWidth, innerHeight): what a screenshot shows."""
    size = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    return int(size[0]), int(size[1])


def set_viewport(driver: Any, width: int, height: int) -> None:
    """Resizes the window so that the viewport is `width` x `height` (headless Chromium's
    window includes room for browser chrome)."""
    driver.set_window_size(width, height)
    inner_width, inner_height = viewport(driver)
    driver.set_window_size(2 * width - inner_width, 2 * height - inner_height)


def load(driver: Any, index_html: str) -> None:
    """Opens `index_html` (a path) from file:// and waits for the page's script to finish."""
    from pathlib import Path

    driver.get(Path(os.path.abspath(index_html)).as_uri())
    wait_for(driver, "return document.body.dataset.ready === 'true'")


def open_browser(index_html: str) -> Any:
    """A new driver with `index_html` loaded (the caller quits it)."""
    driver = start_driver()
    try:
        load(driver, index_html)
    except BaseException:
        driver.quit()
        raise
    return driver


def wait_for(driver: Any, script: str, timeout: float = TIMEOUT_S) -> Any:
    """Waits until the JavaScript `script` returns something truthy; returns it."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))


def visible_rows(driver: Any) -> list[Any]:
    """The worklist's visible study rows (WebElements), in their displayed order."""
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, VISIBLE_ROWS)


def visible_indices(driver: Any) -> list[int]:
    """The study indices (into the written studies) of the visible rows, in displayed order."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), r => Number(r.dataset.index))",
        VISIBLE_ROWS,
    )


def visible_study_ids(driver: Any) -> list[str]:
    """The study ids of the visible rows, in displayed order."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), r => r.dataset.studyId)",
        VISIBLE_ROWS,
    )


def count_text(driver: Any) -> str:
    """The count line, e.g. "12 of 40 studies"."""
    return driver.find_element("css selector", "#count").text


def set_filter(
    driver: Any,
    *,
    group: str | None = None,
    errors: bool | None = None,
    referred: bool | None = None,
    setsize: int | str | None = None,
) -> None:
    """Sets the filters given (None leaves one as it is) as a user does: `group` "" is all,
    `setsize` "" is any."""
    from selenium.webdriver.support.ui import Select

    if group is not None:
        Select(driver.find_element("css selector", "#filter-group")).select_by_value(group)
    if setsize is not None:
        Select(driver.find_element("css selector", "#filter-setsize")).select_by_value(str(setsize))
    for selector, wanted in (("#filter-errors", errors), ("#filter-referred", referred)):
        box = driver.find_element("css selector", selector)
        if wanted is not None and box.is_selected() != wanted:
            box.click()


def reset_filters(driver: Any) -> None:
    """All studies shown."""
    set_filter(driver, group="", errors=False, referred=False, setsize="")


def select_study(driver: Any, index: int) -> None:
    """Clicks the row of study `index` and waits for its view images to load."""
    row = driver.find_element("css selector", f'{ROWS}[data-index="{index}"]')
    driver.execute_script("arguments[0].scrollIntoView({block: 'nearest'})", row)
    row.click()
    wait_for(
        driver,
        f"return document.querySelector('#study-panel:not([hidden])') && "
        f"document.querySelector('tr.selected')?.dataset.index === '{index}'",
    )
    wait_images_loaded(driver)


def selected_index(driver: Any) -> int | None:
    """The selected study's index, or None."""
    value = driver.execute_script("return document.querySelector('tr.selected')?.dataset.index")
    return None if value is None else int(value)


def view_images(driver: Any) -> list[dict[str, Any]]:
    """Each image of the views panel: its src, complete and naturalWidth."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#views img'), i => "
        "({src: i.getAttribute('src'), complete: i.complete, naturalWidth: i.naturalWidth}))"
    )


def wait_images_loaded(driver: Any, timeout: float = TIMEOUT_S) -> None:
    """Waits until every image of the views panel has loaded (`complete`, non-zero size)."""
    wait_for(
        driver,
        "const imgs = document.querySelectorAll('#views img');"
        "return imgs.length > 0 && Array.from(imgs).every(i => i.complete && i.naturalWidth > 0)",
        timeout,
    )


def press(driver: Any, key: str) -> None:
    """Sends one key (e.g. selenium's Keys.ARROW_DOWN) to the page."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The browser console's SEVERE entries since the last call (reading drains the log)."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def artifacts_dir() -> str:
    """Where tests save artifacts: $MURAJAX_ARTIFACTS, else tests/artifacts/ (created)."""
    path = os.environ.get("MURAJAX_ARTIFACTS") or os.path.join(
        os.path.dirname(__file__), "artifacts"
    )
    os.makedirs(path, exist_ok=True)
    return path


def screenshot(driver: Any, path: str) -> str:
    """Saves a PNG of the window to `path` (its folder created); returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not driver.save_screenshot(path):
        raise RuntimeError(f"the screenshot {path} was not written")
    return path


def chromium_version() -> str:
    """Chromium's version line (for reports)."""
    import subprocess

    chromium = shutil.which("chromium") or CHROMIUM
    return subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
