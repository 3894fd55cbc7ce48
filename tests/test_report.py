"""The report framework: self-contained pages, escaping, summaries, the run index."""

from __future__ import annotations

import json
import re

import matplotlib
import numpy as np
import pytest

from cryoflow.errors import CryoflowError
from cryoflow.report import Report, write_index

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//|ftp:)|url\(\s*["']?(?:https?:|//)|@import""", re.I)


def build(tmp_path, name="<script>alert(1)</script>.mrc"):
    report = Report("Step <b>test</b>", step="ctf", intro="What this step does.")
    section = report.section("Numbers", "Plain-language explanation.")
    section.metric("Median defocus", 1.52, "µm", "How far from focus the images were taken.")
    section.metric("Nothing", float("nan"), "", "A value that could not be measured.")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    section.figure(fig, caption=f"Profile of {name}")
    section.gallery([np.random.default_rng(0).normal(size=(40, 40))] * 2, [name, "second"], name="thumbs")
    section.table([{"micrograph": name, "score": 0.25}], caption="Scores")
    return report.write(tmp_path / "ctf", summary={"median_defocus_um": 1.52, "bad": float("nan")})


def test_report_is_offline_and_escaped(tmp_path):
    page = build(tmp_path)
    html = page.read_text()
    assert not EXTERNAL.search(html), "the report references an external resource"
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.mrc" in html
    assert "<b>test</b>" not in html
    # every image the page shows was written beside it
    for src in re.findall(r'src="([^"]+)"', html):
        assert (page.parent / src).is_file(), src


def test_summary_json_is_valid(tmp_path):
    build(tmp_path)
    summary = json.loads((tmp_path / "ctf" / "summary.json").read_text())
    assert summary == {"median_defocus_um": 1.52, "bad": None, "step": "ctf"}


def test_index_links_step_reports(tmp_path):
    build(tmp_path)
    (tmp_path / "notes").mkdir()
    index = write_index(tmp_path)
    html = index.read_text()
    assert 'href="ctf/report.html"' in html and "median_defocus_um" in html
    assert not EXTERNAL.search(html)
    with pytest.raises(CryoflowError, match="no step reports"):
        write_index(tmp_path / "notes")
