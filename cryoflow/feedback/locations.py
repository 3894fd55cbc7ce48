"""Where each micrograph was taken (grid, square, hole, stage x/y) and which holes remain.

Sources, in order of precedence (a later one fills what an earlier one left empty):

1. a user CSV (``--locations``): columns ``micrograph`` (file name or path) and any of
   ``grid``, ``square``, ``hole``, ``x_um``, ``y_um`` (stage position, µm);
2. SerialEM ``.mdoc`` files (``--mdoc``): stage position and navigator label (the hole);
3. a SerialEM navigator (``--nav``): a micrograph's hole is its ``NavigatorLabel`` (from the
   mdoc) or the nearest point within one hole radius; the hole's square is the map the
   point was drawn on (``DrawnID``);
4. the file name: EPU or Leginon (:mod:`cryoflow.feedback.names`);
5. stage positions in EPU's metadata (``<micrograph>.xml`` beside the image, metres) or,
   for a simulated run, ``RUN/simulate/truth/micrographs_truth.star`` (only its
   ``cfGridSquare``/``cfFoilHole``/``cfStageX``/``cfStageY`` columns, which stand in for
   EPU's metadata; the labels there are never read).

Targets (holes that may be acquired, imaged or not) come from the navigator's points,
a targets CSV (``--targets``: ``square``, ``hole``, ``x_um``, ``y_um``, optional ``grid``),
or, for a simulated run, the foil lattice of each square (``RUN/simulate/dataset.json``).
Without any of these the imaged holes are the only targets.

A micrograph that no source places (a plain name like ``mic_0001.mrc`` and no CSV, mdoc or
navigator) is not an error: it goes to the square :data:`UNPLACED`, as a hole of its own,
so its scores still count for the grid and the report, and ``sources["unplaced"]`` says
how many there were and how to place them. That square is never planned (all its holes
are imaged) and its decision reads "unknown location".
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.errors import CryoflowError
from cryoflow.feedback.names import micrograph_key, parse_name
from cryoflow.feedback.navigator import Navigator

COLUMNS = ("grid", "square", "hole", "x_um", "y_um")
UNPLACED = "unplaced"  # the square of micrographs no source could place


@dataclass
class Layout:
    """Micrograph locations and the grid's targets.

    ``micrographs``: ``key``, ``grid``, ``square``, ``hole`` (strings), ``x_um``, ``y_um``.
    ``targets``: one row per hole: ``grid``, ``square``, ``hole``, ``x_um``, ``y_um``,
    ``nav_label`` (or ``""``). ``squares``: ``grid``, ``square``, ``x_um``, ``y_um`` (centre),
    ``image`` (path of its low-magnification image or ``""``). ``sources``: what was read.
    """

    micrographs: pd.DataFrame
    targets: pd.DataFrame
    squares: pd.DataFrame
    sources: dict


def _blank(keys) -> pd.DataFrame:
    df = pd.DataFrame({"key": list(keys)})
    for c in ("grid", "square", "hole"):
        df[c] = ""
    df["x_um"] = np.nan
    df["y_um"] = np.nan
    return df


def _fill(df: pd.DataFrame, other: pd.DataFrame, columns) -> int:
    """Fill empty cells of ``df`` from ``other`` (both keyed by ``key``); return rows touched."""
    other = other.drop_duplicates("key").set_index("key")
    hit = df["key"].isin(other.index)
    for c in columns:
        if c not in other:
            continue
        values = df.loc[hit, "key"].map(other[c])
        empty = df.loc[hit, c].isna() | (df.loc[hit, c].astype(str) == "")
        idx = empty[empty].index
        df.loc[idx, c] = values.loc[idx].astype(df[c].dtype if c in ("x_um", "y_um") else str)
    return int(hit.sum())


def read_locations_csv(path: str | Path) -> pd.DataFrame:
    """A user's location CSV (see the module docstring) keyed by micrograph key."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CryoflowError(path, f"not a readable CSV ({type(exc).__name__})") from None
    if "micrograph" not in df:
        raise CryoflowError(path, "has no 'micrograph' column")
    if not any(c in df for c in COLUMNS):
        raise CryoflowError(path, f"needs at least one of the columns {', '.join(COLUMNS)}")
    out = pd.DataFrame({"key": [micrograph_key(m) for m in df["micrograph"]]})
    for c in COLUMNS:
        if c in df:
            out[c] = pd.to_numeric(df[c], errors="coerce") if c in ("x_um", "y_um") else df[c].fillna("")
    return out


def epu_xml_stage(image: Path) -> tuple[float, float] | None:
    """Stage x, y (µm) from EPU's ``<image>.xml`` metadata beside ``image`` (None if absent)."""
    xml = image.with_suffix(".xml")
    if not xml.exists():
        return None
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError:
        raise CryoflowError(xml, "not readable XML (EPU metadata)") from None
    pos = root.find(".//{*}stage/{*}Position")
    if pos is None:
        return None
    x, y = pos.find("{*}X"), pos.find("{*}Y")
    if x is None or y is None:
        return None
    return float(x.text) * 1e6, float(y.text) * 1e6


def _simulated(run: Path) -> tuple[pd.DataFrame | None, dict | None]:
    """Positions from a simulated run's truth (stand-in for EPU metadata) and its grid layout."""
    truth = run / "simulate" / "truth" / "micrographs_truth.star"
    dataset = run / "simulate" / "dataset.json"
    table = None
    if truth.exists():
        from cryoflow.io import read_table

        t = read_table(truth, "micrographs").table
        if {"cfGridSquare", "cfFoilHole", "cfStageX", "cfStageY"} <= set(t.columns):
            table = pd.DataFrame(
                {
                    "key": [micrograph_key(n) for n in t["rlnMicrographName"]],
                    "grid": "1",
                    "square": t["cfGridSquare"].astype(str),
                    "hole": t["cfFoilHole"].astype(str),
                    "x_um": t["cfStageX"].astype(float),
                    "y_um": t["cfStageY"].astype(float),
                }
            )
    grid = None
    if dataset.exists():
        try:
            grid = json.loads(dataset.read_text(encoding="utf-8")).get("grid")
        except json.JSONDecodeError:
            raise CryoflowError(dataset, "is not valid JSON") from None
    return table, grid


def lattice_targets(grid: dict, open_half_um: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every foil-lattice hole of each square of a simulated grid layout (``dataset.json`` ``grid``).

    Imaged holes keep their EPU id; the others are named ``<square>_<i>_<j>`` (lattice
    indices). Returns ``(targets, squares)``.
    """
    from cryoflow.simulate.grid import GRID_BAR_PITCH_UM, GRID_BAR_WIDTH_UM

    pitch = float(grid["hole_pitch_um"])
    half = open_half_um if open_half_um is not None else (GRID_BAR_PITCH_UM - GRID_BAR_WIDTH_UM) / 2 - pitch
    lattice = np.arange(-half, half + 1e-9, pitch)
    squares = pd.DataFrame(
        {
            "grid": "1",
            "square": [str(s["cfGridSquare"]) for s in grid["squares"]],
            "x_um": [float(s["cfStageX"]) for s in grid["squares"]],
            "y_um": [float(s["cfStageY"]) for s in grid["squares"]],
            "image": [s.get("cfSquareImage", "none") for s in grid["squares"]],
        }
    )
    squares["image"] = squares["image"].where(squares["image"] != "none", "")
    imaged = {(h["square_index"], round(h["stage_x"], 1), round(h["stage_y"], 1)): h for h in grid.get("holes", [])}
    rows = []
    for index, sq in squares.iterrows():
        for i, dy in enumerate(lattice):
            for j, dx in enumerate(lattice):
                x, y = sq["x_um"] + dx, sq["y_um"] + dy
                h = imaged.get((index, round(x, 1), round(y, 1)))
                hole = str(h["hole_id"]) if h else f"{sq['square']}_{i}_{j}"
                rows.append({"grid": "1", "square": sq["square"], "hole": hole, "x_um": x, "y_um": y, "nav_label": ""})
    return pd.DataFrame(rows), squares


def _nav_targets(nav: Navigator) -> tuple[pd.DataFrame, pd.DataFrame]:
    maps = nav.map_labels()
    by_label = {i.label: i for i in nav.items}
    rows = []
    for p in nav.points():
        x, y = p.stage
        square = maps.get(p.fields.get("DrawnID", ""), "")
        rows.append({"grid": "1", "square": square, "hole": p.label, "x_um": x, "y_um": y, "nav_label": p.label})
    targets = pd.DataFrame(rows, columns=["grid", "square", "hole", "x_um", "y_um", "nav_label"])
    sq_rows = []
    for square in sorted(set(targets["square"])):
        item = by_label.get(square)
        if item is not None:
            x, y = item.stage
        else:
            x, y = targets.loc[targets["square"] == square, ["x_um", "y_um"]].mean()
        sq_rows.append({"grid": "1", "square": square, "x_um": x, "y_um": y, "image": ""})
    return targets, pd.DataFrame(sq_rows, columns=["grid", "square", "x_um", "y_um", "image"])


def _nearest_points(xy: np.ndarray, targets: pd.DataFrame, radius: float) -> list[str]:
    """Label of the nearest navigator point within ``radius`` µm of each position ("" if none)."""
    pts = targets[["x_um", "y_um"]].to_numpy(float)
    out = []
    for x, y in xy:
        if not np.isfinite(x) or not len(pts):
            out.append("")
            continue
        d = np.hypot(pts[:, 0] - x, pts[:, 1] - y)
        k = int(np.argmin(d))
        out.append(str(targets["nav_label"].iloc[k]) if d[k] <= radius else "")
    return out


def locate(
    scores: pd.DataFrame,
    run: Path,
    locations_csv: str | Path | None = None,
    mdoc: str | Path | None = None,
    nav: Navigator | None = None,
    targets_csv: str | Path | None = None,
    hole_radius_um: float = 1.5,
) -> Layout:
    """Locate every micrograph of ``scores`` (``key``, ``name``) and list the grid's targets.

    Micrographs no source places go to the square :data:`UNPLACED` (see the module doc).
    """
    df = _blank(scores["key"])
    sources: dict[str, str] = {}
    if locations_csv:
        n = _fill(df, read_locations_csv(locations_csv), COLUMNS)
        sources["locations_csv"] = f"{locations_csv} ({n} micrographs)"
    mdocs = None
    if mdoc:
        from cryoflow.feedback.mdoc import read_mdocs

        mdocs = read_mdocs(mdoc)
        n = _fill(df, mdocs, ("x_um", "y_um"))
        sources["mdoc"] = f"{mdoc} ({n} micrographs)"
    xml = []
    for key, name in zip(scores["key"], scores["name"], strict=True):
        stage = epu_xml_stage(Path(name))
        if stage:
            xml.append({"key": key, "x_um": stage[0], "y_um": stage[1]})
    if xml:
        _fill(df, pd.DataFrame(xml), ("x_um", "y_um"))
        sources["epu_xml"] = f"EPU metadata beside {len(xml)} micrographs"
    sim, grid = _simulated(run)
    if sim is not None:
        n = _fill(df, sim, ("x_um", "y_um"))
        if n:
            sources["simulated"] = "simulate/truth stage positions (stand-in for EPU metadata)"
    targets = squares = None
    if nav is not None:
        targets, squares = _nav_targets(nav)
        labels = [""] * len(df)
        if mdocs is not None:
            known = mdocs.dropna(subset=["nav_label"]).drop_duplicates("key").set_index("key")["nav_label"]
            labels = [known.get(k, "") for k in df["key"]]
        nearest = _nearest_points(df[["x_um", "y_um"]].to_numpy(float), targets, hole_radius_um)
        by_label = targets.set_index("nav_label")
        for i, label in enumerate(labels):
            label = label if label in by_label.index else nearest[i]
            if label and not df.at[i, "hole"]:
                df.at[i, "hole"] = label
                df.at[i, "square"] = df.at[i, "square"] or by_label.at[label, "square"]
        sources["nav"] = "navigator points (holes) and maps (squares)"
    named = [parse_name(n) for n in scores["name"]]
    conventions = {p.convention for p in named if p}
    parsed = pd.DataFrame(
        [
            {"key": k, "grid": p.grid, "square": p.square, "hole": p.hole}
            for k, p in zip(scores["key"], named, strict=True)
            if p
        ]
    )
    if len(parsed):
        _fill(df, parsed, ("grid", "square", "hole"))
        sources["names"] = " and ".join(sorted(conventions)) + " file names"
    if sim is not None:
        _fill(df, sim, COLUMNS)
    df["grid"] = df["grid"].replace("", "1")
    missing = (df["square"] == "") | (df["hole"] == "")
    if missing.any():
        df.loc[missing, "square"] = UNPLACED
        df.loc[missing, "hole"] = df.loc[missing, "key"].astype(str)
        first = scores.loc[missing[missing].index[0], "name"]
        sources["unplaced"] = (
            f"{int(missing.sum())} micrograph(s) with no location (e.g. {Path(str(first)).name}: not an EPU or "
            "Leginon name, not in --locations, --mdoc or --nav); counted for the grid, not placed on it"
        )
    if targets is None and targets_csv:
        targets, squares = _targets_csv(targets_csv)
        sources["targets"] = str(targets_csv)
    if targets is None and grid is not None and grid.get("squares"):
        targets, squares = lattice_targets(grid)
        sources["targets"] = "foil lattice of the simulated squares (dataset.json)"
    imaged = _imaged_holes(df)
    if targets is None:
        targets = imaged.assign(nav_label="")
        sources["targets"] = "imaged holes only (no --nav, --targets or simulated layout)"
    else:  # imaged holes the target list does not hold are added
        have = set(zip(targets["square"], targets["hole"], strict=True))
        extra = imaged[[(s, h) not in have for s, h in zip(imaged["square"], imaged["hole"], strict=True)]]
        targets = pd.concat([targets, extra.assign(nav_label="")], ignore_index=True)
    squares = _complete_squares(squares, targets)
    return Layout(df, targets.reset_index(drop=True), squares, sources)


def _imaged_holes(df: pd.DataFrame) -> pd.DataFrame:
    return df.groupby(["grid", "square", "hole"], sort=False)[["x_um", "y_um"]].mean().reset_index()


def _complete_squares(squares: pd.DataFrame | None, targets: pd.DataFrame) -> pd.DataFrame:
    """Squares table covering every square of ``targets`` (centre: mean of its holes when unknown)."""
    known = squares if squares is not None else pd.DataFrame(columns=["grid", "square", "x_um", "y_um", "image"])
    centres = targets.groupby(["grid", "square"], sort=False)[["x_um", "y_um"]].mean().reset_index()
    centres["image"] = ""
    missing = centres[~centres["square"].isin(set(known["square"]))]
    out = pd.concat([known, missing], ignore_index=True) if len(missing) else known.copy()
    return out.reset_index(drop=True)


def _targets_csv(path: str | Path) -> tuple[pd.DataFrame, None]:
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"grid": str, "square": str, "hole": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CryoflowError(path, f"not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in ("square", "hole", "x_um", "y_um") if c not in df]
    if missing:
        raise CryoflowError(path, f"targets CSV is missing column(s): {', '.join(missing)}")
    df["grid"] = df["grid"].fillna("1") if "grid" in df else "1"
    df["nav_label"] = ""
    return df[["grid", "square", "hole", "x_um", "y_um", "nav_label"]], None
