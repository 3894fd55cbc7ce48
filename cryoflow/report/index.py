"""The index page of a run folder: one link per step report found, with its key figures."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from cryoflow.errors import CryoflowError
from cryoflow.io.atomic import write_text
from cryoflow.report.render import render

# Pipeline order; steps not listed come after, alphabetically.
STEP_ORDER = [
    "simulate",
    "info",
    "ctf",
    "micassess",
    "pick",
    "extract",
    "classify2d",
    "classassess",
    "particles",
    "feedback",
]


def find_step_reports(run_dir: str | os.PathLike) -> list[dict]:
    """Step reports in ``run_dir``: every sub-folder (one level down) holding a ``report.html``.

    Returns dicts with ``step``, ``folder``, ``href`` (relative link) and ``summary`` (the
    folder's ``summary.json`` or ``{}``), in pipeline order.
    """
    run_dir = Path(run_dir)
    found = []
    for report in sorted(run_dir.glob("*/report.html")):
        folder = report.parent
        summary = {}
        if (folder / "summary.json").exists():
            try:
                summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                summary = {"error": "summary.json is not valid JSON"}
        step = str(summary.get("step", folder.name))
        found.append({"step": step, "folder": folder.name, "href": f"{folder.name}/report.html", "summary": summary})
    rank = {name: i for i, name in enumerate(STEP_ORDER)}
    return sorted(found, key=lambda r: (rank.get(r["step"], len(rank)), r["folder"]))


def _headline(summary: dict, limit: int = 6) -> list[tuple[str, str]]:
    """The first few scalar entries of a summary, for the index table."""
    rows = []
    for key, value in summary.items():
        if key == "step" or isinstance(value, dict | list):
            continue
        rows.append((key, f"{value:.4g}" if isinstance(value, float) else str(value)))
        if len(rows) == limit:
            break
    return rows


def write_index(run_dir: str | os.PathLike, title: str = "cryoflow run") -> Path:
    """Write ``index.html`` in ``run_dir`` linking every step report found; return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CryoflowError(run_dir, "run folder not found")
    steps = find_step_reports(run_dir)
    if not steps:
        raise CryoflowError(run_dir, "no step reports found (expected <step>/report.html in sub-folders)")
    for step in steps:
        step["headline"] = _headline(step["summary"])
    html = render(
        "index.html.j2",
        title=title,
        run=run_dir.name,
        steps=steps,
        created=_dt.datetime.now().isoformat(timespec="seconds"),
    )
    return write_text(run_dir / "index.html", html)
