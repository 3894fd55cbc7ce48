"""``feedback.json``: the decisions an acquisition program reads, schema ``cryoflow.feedback/1``.

Versioning: a reader checks ``schema``; fields are only added within version 1 (a reader
ignores fields it does not know); removing or changing the meaning of a field makes
version 2. Units are in the field names (``_um`` µm stage coordinates, ``_s`` seconds,
``_A`` Å). NaN is written as ``null``. Ids (``grid``, ``square``, ``hole``) are strings: EPU
ids, Leginon name prefixes or SerialEM navigator labels, as the input named them.

Top level (:data:`TOP`), one entry per square (:data:`SQUARE`), per hole (:data:`HOLE`,
imaged holes and remaining targets) and per planned exposure (:data:`PLAN`).
"""

from __future__ import annotations

SCHEMA = "cryoflow.feedback/1"

TOP = {
    "schema": "always 'cryoflow.feedback/1' for this version",
    "cryoflow_version": "version of cryoflow that wrote the file",
    "run": "the run folder read",
    "sources": "where scores, locations and targets came from (free text per source)",
    "quality": "what 'quality' means: the probability that an exposure there is good (micassess P(good))",
    "costs": "seconds per step: exposure_s (incl. the hole move), square_move_s, grid_move_s",
    "budget_s": "time budget of the plan, seconds",
    "long_run_rate_per_min": "good exposures per minute the plan expects from squares not yet visited",
    "grid": "grid-wide figures: micrographs, good, good_fraction, mean_quality, squares_imaged, holes_imaged, ...",
    "squares": "list of square entries (SQUARE), best first",
    "holes": "list of hole entries (HOLE)",
    "plan": "list of planned exposures (PLAN), in order",
}
SQUARE = {
    "grid": "grid id",
    "square": "square id",
    "x_um": "stage x of the square centre, µm",
    "y_um": "stage y of the square centre, µm",
    "rank": "1 for the best square by predicted quality",
    "micrographs": "micrographs taken in the square",
    "good": "micrographs called good",
    "good_fraction": "good / micrographs (null when none taken)",
    "quality": "posterior mean quality of the square (observed holes shrunk to the grid mean)",
    "ctf_resolution_A": "median CTF fit resolution, Å",
    "ice": "median relative ice thickness",
    "picks_per_micrograph": "mean particles picked per micrograph",
    "good_particles_per_micrograph": "mean particles kept by the particle classifier per micrograph (null without one)",
    "main_reason": "most common reason for bad micrographs, 'reason (k/n)'",
    "holes_imaged": "holes with at least one micrograph",
    "holes_remaining": "target holes not yet imaged",
    "holes_planned": "remaining holes the plan acquires within the budget",
    "expected_good_per_min": "good micrographs per minute expected from a visit now (move included)",
    "decision": "continue, skip or done (no target left)",
    "reason": "why, in one sentence",
}
HOLE = {
    "grid": "grid id",
    "square": "square id",
    "hole": "hole id (or navigator label)",
    "x_um": "stage x, µm",
    "y_um": "stage y, µm",
    "nav_label": "SerialEM navigator item label, '' without a navigator",
    "imaged": "true when micrographs were taken in the hole",
    "micrographs": "micrographs taken in the hole",
    "quality": "mean observed quality (null when not imaged)",
    "predicted_quality": "model prediction for the hole (imaged or not)",
    "decision": "acquire (in the plan), skip, or done (imaged)",
    "plan_order": "position in the plan (null when not planned)",
}
PLAN = {
    "order": "1, 2, ...",
    "grid": "grid id",
    "square": "square id",
    "hole": "hole id",
    "x_um": "stage x, µm",
    "y_um": "stage y, µm",
    "predicted_quality": "prediction when planned",
    "seconds": "move + exposure, s",
    "elapsed_s": "cumulative seconds from now",
}


def validate(doc: dict) -> list[str]:
    """Problems with a feedback document (an empty list when it follows this schema)."""
    problems = []
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
    for key in TOP:
        if key not in doc:
            problems.append(f"missing top-level field {key!r}")
    for name, fields in (("squares", SQUARE), ("holes", HOLE), ("plan", PLAN)):
        entries = doc.get(name)
        if not isinstance(entries, list):
            problems.append(f"{name} is not a list")
            continue
        for i, entry in enumerate(entries):
            missing = [k for k in fields if k not in entry]
            if missing:
                problems.append(f"{name}[{i}] is missing {', '.join(missing)}")
                break
    return problems


def describe() -> str:
    """The schema as Markdown (for the report and the docs)."""
    lines = [f"# {SCHEMA}", "", __doc__.strip(), ""]
    for title, fields in (("Top level", TOP), ("squares[]", SQUARE), ("holes[]", HOLE), ("plan[]", PLAN)):
        lines += [f"## {title}", ""] + [f"- `{k}`: {v}" for k, v in fields.items()] + [""]
    return "\n".join(lines)
