"""The study browser: a self-contained static HTML page of a model's studies.

`write_browser(directory, studies, summary)` writes `index.html` with its scripts, styles and
images into `directory`: a worklist of the studies (sortable, filterable by body part, errors,
referral and conformal set size), each study's views beside their heatmap overlays, and a
summary panel of metrics and plots. It needs no network and opens from file://.
"""

from murajax.browser.page import Study, Summary, View
from murajax.browser.writer import MARKER, write_browser

__all__ = ["MARKER", "Study", "Summary", "View", "write_browser"]
