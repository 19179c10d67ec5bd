"""Writes the study browser: a self-contained static folder that opens from file://.

Layout of the folder `write_browser` writes:

    index.html, app.js, style.css   the page (murajax/browser/static/), no network, no CDN
    data.js                         `window.MURAJAX_DATA = {...};` (Chromium blocks fetch()
                                    of JSON from file://, so the table is a script)
    img/<study>/<view>.png          thumbnails (longest side <= thumbnail_size)
    img/<study>/<view>-<k>.png      heatmaps (method k of the view's), colour-mapped ("jet")
                                    at the thumbnail's size: 8-bit palette PNGs whose alpha
                                    grows with strength, so weak regions stay clear
    plots/<k>.<ext>                 the summary's plots, copied
    .murajax-browser                the marker: only a folder holding it is ever replaced

Everything is written into a staging folder beside the target, which then replaces the
target whole: a reader never sees a half-written browser.
"""

import concurrent.futures
import functools
import html
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image

from murajax.browser.page import (
    Study,
    Summary,
    View,
    check_study,
    finite_or_none,
    groups_of,
    methods_of,
)

MARKER = ".murajax-browser"
"""The file that marks a folder as written by `write_browser` (and so replaceable)."""

STATIC_FILES = ("index.html", "app.js", "style.css")
TITLE_PLACEHOLDER = "__MURAJAX_TITLE__"
FORMAT_VERSION = 1
# Heatmap strength at which the overlay becomes fully opaque (before the page's slider).
FULL_ALPHA_AT = 0.5


@functools.cache
def jet_lut() -> np.ndarray:
    """matplotlib's "jet" colormap as a (256, 3) uint8 table, built once."""
    from matplotlib import colormaps  # local: matplotlib is slow to import

    rgba = colormaps["jet"](np.linspace(0.0, 1.0, 256))
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


@functools.cache
def alpha_lut() -> bytes:
    """The heatmap palette's alpha (PNG tRNS) per strength level 0..255: rising linearly to
    opaque at `FULL_ALPHA_AT`, so that weak evidence leaves the radiograph clear."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    return np.round(np.clip(levels / FULL_ALPHA_AT, 0.0, 1.0) * 255).astype(np.uint8).tobytes()


def thumbnail(image: np.ndarray, size: int) -> Image.Image:
    """`image` (uint8 (H, W) or (H, W, 1)) as a grayscale PIL image whose longest side is at
    most `size`."""
    image = np.asarray(image)
    pil = Image.fromarray(np.ascontiguousarray(image.reshape(image.shape[:2])), mode="L")
    pil.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return pil


def colour_heatmap(heatmap: np.ndarray, width: int, height: int) -> Image.Image:
    """`heatmap` (float (h, w) in [0, 1]; NaN counts as 0) resized to (width, height) as a
    palette image: 256 strength levels coloured with "jet", each with its alpha (`alpha_lut`,
    in `info["transparency"]`). An 8-bit palette PNG encodes ~10x faster than RGBA."""
    values = np.nan_to_num(np.asarray(heatmap, np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    values = np.clip(values, 0.0, 1.0)
    if values.shape != (height, width):
        resized = Image.fromarray(values, mode="F").resize(
            (width, height), Image.Resampling.BILINEAR
        )
        values = np.clip(np.asarray(resized), 0.0, 1.0)
    levels = np.round(values * 255).astype(np.uint8)
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(levels).tobytes())
    image.putpalette(jet_lut().tobytes())
    image.info["transparency"] = alpha_lut()
    return image


def view_paths(study_index: int, view_index: int, methods: Sequence[str]) -> dict[str, Any]:
    """The paths (relative to the browser folder) of a view's thumbnail and heatmaps."""
    stem = f"img/{study_index}/{view_index}"
    return {
        "thumb": f"{stem}.png",
        "heatmaps": {m: f"{stem}-{k}.png" for k, m in enumerate(methods)},
    }


def write_view(root: str, view: View, paths: dict[str, Any], size: int) -> tuple[int, int]:
    """Writes `view`'s thumbnail and heatmaps under `root`; returns the thumbnail's (w, h)."""
    thumb = thumbnail(view.image, size)
    os.makedirs(os.path.dirname(os.path.join(root, paths["thumb"])), exist_ok=True)
    thumb.save(os.path.join(root, paths["thumb"]), compress_level=3)
    for method, heatmap in view.heatmaps.items():
        coloured = colour_heatmap(heatmap, *thumb.size)
        path = os.path.join(root, paths["heatmaps"][str(method)])
        coloured.save(path, compress_level=3, transparency=alpha_lut())
    return thumb.size


def view_record(view: View, paths: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """A view's entry in data.js."""
    methods = [str(m) for m in view.heatmaps]
    return {
        "name": str(view.name),
        "thumb": paths["thumb"],
        "width": size[0],
        "height": size[1],
        "heatmaps": {m: paths["heatmaps"][m] for m in methods},
    }


def study_record(study: Study, views: list[dict[str, Any]]) -> dict[str, Any]:
    """A study's entry in data.js."""
    return {
        "id": str(study.study_id),
        "group": None if study.group is None else str(study.group),
        "label": str(study.label),
        "prob": finite_or_none(study.prob),
        "decision": str(study.decision),
        "set": [str(c) for c in study.conformal_set],
        "referred": bool(study.referred),
        "correct": bool(study.correct),
        "views": views,
    }


def summary_record(summary: Summary, plot_files: list[str]) -> dict[str, Any]:
    """The summary's entry in data.js (plots by their copied file names)."""
    metrics = []
    for name, value, ci in summary.metrics:
        interval = None if ci is None else [finite_or_none(ci[0]), finite_or_none(ci[1])]
        metrics.append({"name": str(name), "value": finite_or_none(value), "ci": interval})
    plots = [
        {"caption": str(caption), "src": src}
        for caption, src in zip(summary.plots, plot_files, strict=True)
    ]
    return {
        "title": str(summary.title),
        "metrics": metrics,
        "notes": [str(n) for n in summary.notes],
        "plots": plots,
    }


def script_json(value: Any) -> str:
    """`value` as JSON that is safe inside a <script> (no "</script>", "<!--" or line
    separators can end or bend it): <, >, & and U+2028/9 are written as \\u escapes."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escape)
    return text


def data_js(data: dict[str, Any]) -> str:
    """The text of data.js: a script that sets `window.MURAJAX_DATA`."""
    return f"window.MURAJAX_DATA = {script_json(data)};\n"


def static_text(name: str) -> str:
    """The text of one of the page's static files (package data)."""
    return resources.files("murajax.browser").joinpath("static", name).read_text("utf-8")


def is_browser_folder(directory: str) -> bool:
    """Whether `directory` may be replaced: absent, empty, or written by `write_browser`."""
    if not os.path.lexists(directory):
        return True
    if os.path.islink(directory) or not os.path.isdir(directory):
        return False
    return not os.listdir(directory) or os.path.isfile(os.path.join(directory, MARKER))


def check_target(directory: str) -> None:
    """Raises ValueError (one line) when `directory` exists and is not a browser folder."""
    if not is_browser_folder(directory):
        raise ValueError(
            f"{directory} exists and is not a study browser written by murajax (no {MARKER} "
            "file); refusing to replace it: choose another folder or remove it yourself"
        )


def copy_plots(root: str, summary: Summary) -> list[str]:
    """Copies the summary's plots into `root`/plots; returns their relative paths."""
    files = []
    for k, (caption, path) in enumerate(summary.plots.items()):
        if not os.path.isfile(path):
            raise ValueError(f"summary plot {caption!r}: {path} is not a file")
        extension = os.path.splitext(path)[1].lower() or ".png"
        files.append(f"plots/{k}{extension}")
        os.makedirs(os.path.join(root, "plots"), exist_ok=True)
        shutil.copyfile(path, os.path.join(root, files[-1]))
    return files


def write_images(
    root: str, studies: Sequence[Study], thumbnail_size: int, threads: int | None
) -> list[list[dict[str, Any]]]:
    """Writes every view's images under `root` with a thread pool (Pillow's resizing and PNG
    encoding release the GIL); returns each study's view records."""
    jet_lut(), alpha_lut()  # built once, before the threads
    jobs = []
    for i, study in enumerate(studies):
        for j, view in enumerate(study.views):
            jobs.append((i, view, view_paths(i, j, [str(m) for m in view.heatmaps])))
    workers = threads or min(32, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        sizes = list(pool.map(lambda job: write_view(root, job[1], job[2], thumbnail_size), jobs))
    records: list[list[dict[str, Any]]] = [[] for _ in studies]
    for (i, view, paths), size in zip(jobs, sizes, strict=True):
        records[i].append(view_record(view, paths, size))
    return records


def write_page(root: str, title: str) -> None:
    """Writes index.html (with `title`), app.js, style.css and the marker into `root`."""
    for name in STATIC_FILES:
        text = static_text(name)
        if name == "index.html":
            text = text.replace(TITLE_PLACEHOLDER, html.escape(title))
        with open(os.path.join(root, name), "w", encoding="utf-8") as f:
            f.write(text)
    with open(os.path.join(root, MARKER), "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT_VERSION, "writer": "murajax.browser.write_browser"}, f)


def replace_folder(staging: str, directory: str) -> None:
    """Puts the finished `staging` folder in place of `directory` (two renames; the old
    browser, if any, is removed afterwards)."""
    old = None
    if os.path.lexists(directory):
        old = tempfile.mkdtemp(
            prefix=f".{os.path.basename(directory)}.", suffix=".old", dir=os.path.dirname(directory)
        )
        os.rmdir(old)
        os.rename(directory, old)
    try:
        os.rename(staging, directory)
    except OSError:
        if old is not None:
            os.rename(old, directory)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_browser(
    directory: str,
    studies: Sequence[Study],
    summary: Summary,
    *,
    thumbnail_size: int = 256,
    threads: int | None = None,
) -> str:
    """Writes the study browser for `studies` into `directory`; returns index.html's path.

    The folder is self-contained (open index.html from file://, zip it, mail it). It is
    written into a staging folder beside `directory`, which then replaces `directory` whole.

    Args:
      directory: the browser folder; replaced when it was written by this function before.
      studies: the worklist's studies.
      summary: the summary panel's metrics, notes and plots.
      thumbnail_size: the longest side of the thumbnails and heatmaps, in pixels.
      threads: the image writers' threads (default: CPUs + 2).

    Raises:
      ValueError: `directory` exists and is not a browser folder (never deleted), a view's
        arrays have the wrong shape or type, or a plot file is missing (one line each).
    """
    if thumbnail_size < 1:
        raise ValueError(
            f"thumbnail_size must be a positive number of pixels, got {thumbnail_size}"
        )
    directory = os.path.abspath(directory)
    check_target(directory)
    for index, study in enumerate(studies):
        check_study(index, study)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(
        prefix=f".{os.path.basename(directory)}.", suffix=".partial", dir=parent
    )
    try:
        plot_files = copy_plots(staging, summary)
        views = write_images(staging, studies, thumbnail_size, threads)
        data = {
            "format": FORMAT_VERSION,
            "summary": summary_record(summary, plot_files),
            "groups": groups_of(studies),
            "methods": methods_of(studies),
            "studies": [study_record(s, v) for s, v in zip(studies, views, strict=True)],
        }
        with open(os.path.join(staging, "data.js"), "w", encoding="utf-8") as f:
            f.write(data_js(data))
        write_page(staging, summary.title)
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would keep the folder from others
        check_target(directory)  # still ours (or gone) after the writing
        replace_folder(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return os.path.join(directory, "index.html")
