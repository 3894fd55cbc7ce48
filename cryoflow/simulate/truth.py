"""Ground truth written beside a simulated dataset, and the pipeline's input STAR file.

Files (paths relative to the dataset folder):

``micrographs.star``
    RELION 3.1 ``data_optics`` + ``data_micrographs`` with ``rlnMicrographName`` (relative
    paths such as ``GridSquare_<n>/Data/FoilHole_<m>_Data_<k>.mrc``): what a user would
    give the next step (``cryoflow ctf micrographs.star``). It holds no truth.
``truth/micrographs_truth.star``
    ``data_optics`` + ``data_micrographs``, one row per micrograph: ``rlnMicrographName``,
    ``rlnDefocusU``/``rlnDefocusV`` (Å, positive is underfocus), ``rlnDefocusAngle``
    (degrees, RELION's astigmatism angle), ``rlnPhaseShift`` (degrees), ``rlnCtfBfactor``
    (Å²), and cryoflow's truth columns (:data:`MICROGRAPH_COLUMNS`): ice thickness (nm),
    label (``good``/``bad``), reason, grid square and foil hole ids, stage x/y (µm),
    number of particles and of junk objects, dose (e/Å²).
``truth/particles_truth.star``
    ``data_optics`` + ``data_particles``, one row per object placed (particles and
    junk): ``rlnMicrographName``, ``rlnCoordinateX``/``Y`` (pixels: x is the column, y the
    row of the stored array, as the simulator reports them), ``rlnAngleRot``/
    ``Tilt``/``Psi`` (degrees, RELION ZYZ), ``rlnDefocusU``/``V``/``Angle`` (the particle's
    own defocus, offset by its height in the ice), ``cfSpecies``, ``cfIsJunk`` (0/1),
    ``cfJunkKind``, ``cfHeight`` (Å above the ice mid-plane), ``cfDiameter`` (Å) and
    ``cfMembers`` (particles in an aggregate). Angles are NaN for objects that are not one
    projection of a species (ice chips, contaminants, aggregates).
``truth/squares_truth.star``
    ``data_squares``: one row per grid square (id, quality, stage x/y µm, mean ice nm,
    number and fraction of bad micrographs, its low-magnification image).
``dataset.json``
    Every parameter: the preset, the overrides, the seed, the cryoflow version, the
    species, the grid layout and each micrograph's full simulation parameters. It holds
    no time stamp, so the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.io import StarTable, make_optics, read_table, write_blocks, write_table
from cryoflow.io.atomic import write_text

TRUTH_DIR = "truth"
MICROGRAPHS_STAR = "micrographs.star"
MICROGRAPHS_TRUTH = f"{TRUTH_DIR}/micrographs_truth.star"
PARTICLES_TRUTH = f"{TRUTH_DIR}/particles_truth.star"
SQUARES_TRUTH = f"{TRUTH_DIR}/squares_truth.star"
DATASET_JSON = "dataset.json"

#: cryoflow's truth columns of ``micrographs_truth.star`` (besides the RELION ones).
MICROGRAPH_COLUMNS = {
    "cfIceThickness": "ice thickness, nm",
    "cfLabel": "good or bad",
    "cfReason": "why bad (good for good ones): empty, no_particles, thick_ice, crystalline_ice, "
    "contamination, carbon, crack, drift, aggregation, crowding, astigmatism",
    "cfGridSquare": "EPU grid square id",
    "cfFoilHole": "EPU foil hole id",
    "cfStageX": "stage x of the exposure centre, µm",
    "cfStageY": "stage y of the exposure centre, µm",
    "cfParticleCount": "particles placed (junk excluded)",
    "cfJunkCount": "junk objects placed",
    "cfDose": "total dose, e/Å²",
}
#: cryoflow's truth columns of ``particles_truth.star``.
PARTICLE_COLUMNS = {
    "cfSpecies": "species name",
    "cfIsJunk": "1 for junk (broken particle, ice chip, contaminant, aggregate), else 0",
    "cfJunkKind": "kind of junk (empty for particles)",
    "cfHeight": "height above the ice mid-plane, Å (adds to the defocus)",
    "cfDiameter": "diameter of the object, Å",
    "cfMembers": "particles in the object (more than 1 for aggregates)",
}
REQUIRED_MICROGRAPH_COLUMNS = (
    "rlnMicrographName",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    *MICROGRAPH_COLUMNS,
)
REQUIRED_PARTICLE_COLUMNS = (
    "rlnMicrographName",
    "rlnCoordinateX",
    "rlnCoordinateY",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    *PARTICLE_COLUMNS,
)


def optics_table(pixel_size: float, voltage: float, cs: float, amplitude_contrast: float) -> pd.DataFrame:
    """The dataset's one optics group (``data_optics``), pixel size in Å."""
    return make_optics(pixel_size, voltage, cs, amplitude_contrast, kind="micrographs", name="simulated")


def micrographs_table(optics: pd.DataFrame, rows: list[dict]) -> StarTable:
    """``micrographs_truth.star`` from one dict per micrograph (keys: the column names)."""
    table = pd.DataFrame(rows)
    table.insert(1, "rlnOpticsGroup", 1)
    return StarTable(optics=optics, table=table, kind="micrographs")


def particles_table(optics: pd.DataFrame, frames: list[pd.DataFrame]) -> StarTable:
    """``particles_truth.star`` from per-micrograph DataFrames with the truth columns."""
    columns = list(REQUIRED_PARTICLE_COLUMNS)
    frames = [f for f in frames if len(f)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in columns})
    table = table[columns].copy()
    table.insert(1, "rlnOpticsGroup", 1)
    # RELION readers expect something in every string cell
    table["cfJunkKind"] = table["cfJunkKind"].fillna("").replace("", "none")
    return StarTable(optics=optics, table=table, kind="particles")


def write_truth(
    out_dir: str | os.PathLike,
    optics: pd.DataFrame,
    micrograph_rows: list[dict],
    particle_frames: list[pd.DataFrame],
    square_rows: list[dict],
    dataset: dict,
) -> dict[str, Path]:
    """Write every truth file and ``micrographs.star`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    (out / TRUTH_DIR).mkdir(parents=True, exist_ok=True)
    mics = micrographs_table(optics, micrograph_rows)
    paths = {
        "micrographs_truth": write_table(out / MICROGRAPHS_TRUTH, mics),
        "particles_truth": write_table(out / PARTICLES_TRUTH, particles_table(optics, particle_frames)),
        "squares_truth": write_blocks(out / SQUARES_TRUTH, {"squares": pd.DataFrame(square_rows)}),
    }
    public = StarTable(
        optics=optics, table=mics.table[["rlnMicrographName", "rlnOpticsGroup"]].copy(), kind="micrographs"
    )
    paths["micrographs"] = write_table(out / MICROGRAPHS_STAR, public)
    paths["dataset"] = write_text(out / DATASET_JSON, json.dumps(_jsonable(dataset), indent=2, sort_keys=False) + "\n")
    return paths


def _jsonable(value):
    """Plain JSON types (numpy scalars and arrays, tuples, paths converted; NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:  # torch scalar
        return _jsonable(value.item())
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def read_truth(dataset_dir: str | os.PathLike) -> tuple[StarTable, StarTable]:
    """Read ``(micrographs_truth, particles_truth)`` of a simulated dataset folder."""
    folder = Path(dataset_dir)
    return (
        read_table(folder / MICROGRAPHS_TRUTH, kind="micrographs"),
        read_table(folder / PARTICLES_TRUTH, kind="particles"),
    )
