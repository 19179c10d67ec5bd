"""Reports written from what a workdir holds, never from a trainer's state:

murajax.report.run        `report.md` of one run (`write_report`)
murajax.report.sweep      a sweep's summary: sweep.csv, sweep.md, sweep_roc.png (`summarise`)
murajax.report.markdown   the markdown helpers both use
"""

from murajax.report.run import write_report  # noqa: F401  (the package's entry point)
