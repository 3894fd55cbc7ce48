"""The index page of a run folder: the pipeline graph, counts at each stage, timings, step links.

Works on any run folder: every sub-folder holding a ``report.html`` is a step (a new step needs
no change here). What the page shows about each step comes from its ``summary.json``:

- micrographs and particles leaving the step: the summary's ``"stage"`` entry
  (``{"micrographs": N, "particles": M}``, the convention for steps' summaries), else the first
  of :data:`MICROGRAPH_KEYS` / :data:`PARTICLE_KEYS` present (how the existing steps name them);
- its key figures: the first few scalar entries.

``RUN/run.json`` (written by ``cryoflow demo``) adds the workflow's name, whose picture
(``docs/graphs/NAME.png``, installed with the CWL files) is copied beside the index, and each
step's wall time and peak memory from cwltool's log. Without it the page lists the steps alone.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path

from cryoflow.errors import CryoflowError
from cryoflow.io.atomic import write_text
from cryoflow.report.render import render

# Pipeline order (a folder name, else the step its summary names); steps not listed come after, alphabetically.
STEP_ORDER = [
    "simulate",
    "info",
    "ctf",
    "micassess",
    "pick",
    "extract",
    "classify2d",
    "classassess",
    "particles_model",  # the particle classifier's training (its folder; its summary says "particles")
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
    return sorted(found, key=lambda r: (rank.get(r["folder"], rank.get(r["step"], len(rank))), r["folder"]))


# What leaves a step, when its summary has no "stage" entry: the first of these keys present.
MICROGRAPH_KEYS = ("micrographs_out", "good", "micrographs_with_particles", "fitted", "n_micrographs", "micrographs")
PARTICLE_KEYS = ("particles_out", "particles_selected", "n_particles", "particles", "n_picked", "picked")
GRAPH = "pipeline.png"  # the workflow's picture, copied beside index.html


def _count(summary: dict, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = summary.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return None


def stage_counts(summary: dict) -> tuple[int | None, int | None]:
    """(micrographs, particles) leaving a step, from its summary.json (None: not stated)."""
    stage = summary.get("stage")
    if isinstance(stage, dict):
        return _count(stage, ("micrographs",)), _count(stage, ("particles",))
    return _count(summary, MICROGRAPH_KEYS), _count(summary, PARTICLE_KEYS)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def read_run(run_dir: Path) -> dict:
    """``run_dir/run.json`` (workflow, timings) or ``{}`` when absent or unreadable."""
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


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
    """Write ``index.html`` in ``run_dir`` over every step report found; return its path.

    Also copies the workflow's picture to ``run_dir/pipeline.png`` when ``run.json`` names a
    workflow that has one.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CryoflowError(run_dir, "run folder not found")
    steps = find_step_reports(run_dir)
    if not steps:
        raise CryoflowError(run_dir, "no step reports found (expected <step>/report.html in sub-folders)")
    info = read_run(run_dir)
    timings = dict(info.get("steps") or {})
    matched = {step["folder"]: timings.pop(step["folder"], None) or timings.pop(step["step"], None) for step in steps}
    for step in steps:
        step["headline"] = _headline(step["summary"])
        step["micrographs"], step["particles"] = stage_counts(step["summary"])
        timing = matched[step["folder"]] or {}
        # workflow steps that made this folder together: FOLDER_x, e.g. ctf_split and ctf_batches
        # (the CTF scattered over batches of micrographs) before ctf (the merge)
        parts = {n: timings.pop(n) for n in list(timings) if n.startswith(step["folder"] + "_") and n not in matched}
        seconds = [t.get("seconds") for t in (*parts.values(), timing) if isinstance(t.get("seconds"), int | float)]
        step["time"] = _duration(sum(seconds) if seconds else None)
        if parts:
            shown = {**parts, step["folder"]: timing}
            step["time"] += " (" + ", ".join(f"{n} {_duration(t.get('seconds'))}" for n, t in shown.items()) + ")"
        statuses = {t.get("status", "") for t in (*parts.values(), timing) if t}
        step["status"] = next((s for s in ("failed", "running", "interrupted") if s in statuses), "")
        step["status"] = step["status"] or ("cached" if statuses == {"cached"} else timing.get("status", ""))
        memory = [t.get("max_memory_mib") for t in (*parts.values(), timing)]
        memory = [m for m in memory if isinstance(m, int | float)]
        step["memory"] = f"{max(memory):.0f} MiB" if memory else ""
        if step["folder"] in STEP_ORDER:  # two folders of one step (particles_model, particles): by folder
            step["step"] = step["folder"]
    # timed steps that wrote no report (still listed, so no time goes unaccounted)
    unreported = [
        {"step": name, "time": _duration(t.get("seconds")), "status": t.get("status", "")}
        for name, t in timings.items()
    ]
    graph = None
    if info.get("workflow"):
        from cryoflow.cwl import graph as workflow_graph

        picture = workflow_graph(str(info["workflow"]))
        if picture is not None:
            shutil.copyfile(picture, run_dir / GRAPH)
            graph = {"src": GRAPH, "workflow": f"{info['workflow']}.cwl"}
    times = [t.get("seconds") for t in (info.get("steps") or {}).values()]
    total = (
        sum(t for t in times if isinstance(t, int | float)) if any(isinstance(t, int | float) for t in times) else None
    )
    html = render(
        "index.html.j2",
        title=title,
        run=run_dir.name,
        steps=steps,
        unreported=unreported,
        graph=graph,
        workflow=info.get("workflow"),
        engine=info.get("engine"),
        total=_duration(total),
        created=_dt.datetime.now().isoformat(timespec="seconds"),
    )
    return write_text(run_dir / "index.html", html)
