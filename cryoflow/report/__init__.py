"""HTML evaluation reports: every step explains its numbers to a newcomer.

A step builds a :class:`Report` from sections (metric tables with a plain-language
explanation of each metric, matplotlib figures, image galleries, data tables) and calls
:meth:`Report.write`, which writes ``report.html``, its figures (``figures/*.png``) and
``summary.json`` into the step's output folder. Reports are self-contained: no CDN, no
external font or script; they open from disk offline. Names are escaped by Jinja2's
autoescaping, so a micrograph called ``<script>.mrc`` is shown, not run.

:func:`write_index` links the step reports found in a run folder.

Example::

    report = Report("CTF estimation", step="ctf")
    section = report.section("Defocus", "Defocus is how far the objective lens is focused ...")
    section.metric("Median defocus", 1.52, "µm", "Typical range for single particle work: 0.8-2.5 µm.")
    section.figure(fig, "Histogram of fitted defocus")
    report.write(out_dir, summary={"median_defocus_um": 1.52})
"""

from cryoflow.report.builder import Report, Section
from cryoflow.report.index import find_step_reports, write_index

__all__ = ["Report", "Section", "find_step_reports", "write_index"]
