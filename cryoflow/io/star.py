"""STAR files in RELION 3.1+ conventions (read and written with ``starfile``).

A micrograph or particle table is a pair of pandas DataFrames: ``optics`` (one row per
optics group: rlnOpticsGroup, rlnVoltage in kV, rlnSphericalAberration in mm,
rlnAmplitudeContrast, a pixel size in Å) and the table itself (``data_micrographs`` or
``data_particles``, each row naming its rlnOpticsGroup). Columns cryoflow does not know are
kept as they are, so a file read and written again loses nothing.

RELION 3.0 files (one block, optics columns repeated per row, pixel size from
rlnMagnification and rlnDetectorPixelSize) are accepted and upgraded to 3.1: one optics group
per distinct combination of optics values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryoflow.errors import CryoflowError
from cryoflow.io.atomic import atomic_path

FLOAT_FORMAT = "%.10g"  # enough digits that a float read and written again is unchanged
HEADER = "# written by cryoflow (RELION 3.1+ conventions)"

OPTICS_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
PIXEL_SIZE_COLUMNS = {
    "micrographs": ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize", "rlnImagePixelSize"),
    "particles": ("rlnImagePixelSize", "rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize"),
}
# RELION 3.0 per-row columns that move to data_optics on upgrade.
_OPTICS_LIKE_30 = OPTICS_COLUMNS + (
    "rlnMagnification",
    "rlnDetectorPixelSize",
    "rlnMicrographPixelSize",
    "rlnImagePixelSize",
    "rlnMicrographOriginalPixelSize",
    "rlnImageSize",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
)


@dataclass
class StarTable:
    """An optics table plus a micrograph or particle table (RELION 3.1+).

    ``kind`` is ``"micrographs"`` or ``"particles"``; ``path`` is the file it came from
    (``None`` for a table built in memory); ``upgraded`` tells that the file was RELION 3.0.
    ``extra`` holds any other data blocks of the file, kept for writing back.
    """

    optics: pd.DataFrame
    table: pd.DataFrame
    kind: str
    path: Path | None = None
    upgraded: bool = False
    extra: dict[str, pd.DataFrame] | None = None

    def pixel_size(self, group: int | None = None) -> np.ndarray | float:
        """Pixel size in Å: per row of ``table`` (array) or of one optics group (float)."""
        column = next((c for c in PIXEL_SIZE_COLUMNS[self.kind] if c in self.optics), None)
        if column is None:
            raise CryoflowError(
                self.path, f"data_optics has no pixel size column (one of {', '.join(PIXEL_SIZE_COLUMNS[self.kind])})"
            )
        sizes = self.optics.set_index("rlnOpticsGroup")[column].astype(float)
        if group is not None:
            return float(sizes.loc[group])
        return sizes.loc[self.table["rlnOpticsGroup"]].to_numpy()

    def optics_for_rows(self) -> pd.DataFrame:
        """The optics row of every table row (same index as ``table``)."""
        merged = self.table[["rlnOpticsGroup"]].merge(self.optics, on="rlnOpticsGroup", how="left")
        merged.index = self.table.index
        return merged


def read_blocks(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file as ``{name: DataFrame}`` (``name`` without ``data_``).

    A block of single values (not a loop) becomes a one-row DataFrame.
    """
    path = Path(path)
    if not path.exists():
        raise CryoflowError(path, "file not found")
    if path.is_dir():
        raise CryoflowError(path, "is a folder, expected a STAR file")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises a variety of parser errors
        raise CryoflowError(path, f"not a readable STAR file ({type(exc).__name__}: {exc})") from None
    if not blocks:
        raise CryoflowError(path, "STAR file holds no data blocks")
    out = {}
    for name, block in blocks.items():
        if isinstance(block, dict):
            block = pd.DataFrame([block])
        out[name] = block
    return out


def write_blocks(path: str | os.PathLike, blocks: dict[str, pd.DataFrame], overwrite: bool = True) -> Path:
    """Write data blocks to a STAR file atomically (write to a temporary name, then rename)."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        starfile.write(blocks, tmp, float_format=FLOAT_FORMAT, na_rep="nan")
        # starfile's first line carries the time of writing; a fixed one keeps outputs reproducible
        text = tmp.read_text(encoding="utf-8")
        if text.startswith("# Created by the starfile"):
            text = HEADER + text[text.index("\n") :]
            tmp.write_text(text, encoding="utf-8")
    return path


def require_columns(df: pd.DataFrame, columns, path: str | os.PathLike | None, block: str) -> None:
    """Raise a CryoflowError naming the file and block if any of ``columns`` is missing."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CryoflowError(path, f"data_{block} is missing required column(s): {', '.join(missing)}")


def _upgrade_30(table: pd.DataFrame, kind: str, path: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a RELION 3.0 table into (optics, table) as RELION 3.1 does."""
    table = table.copy()
    if "rlnMagnification" in table and "rlnDetectorPixelSize" in table:
        # RELION 3.0: pixel size (Å) = detector pixel (µm) * 1e4 / magnification.
        apix = table["rlnDetectorPixelSize"].astype(float) * 1e4 / table["rlnMagnification"].astype(float)
        column = "rlnImagePixelSize" if kind == "particles" else "rlnMicrographPixelSize"
        if column not in table:
            table[column] = apix.round(6)
    present = [c for c in _OPTICS_LIKE_30 if c in table]
    if present:
        optics = table[present].drop_duplicates().reset_index(drop=True)
        optics.insert(0, "rlnOpticsGroup", np.arange(1, len(optics) + 1))
        key = table[present].merge(optics, on=present, how="left")["rlnOpticsGroup"].to_numpy()
        table = table.drop(columns=present)
    else:
        optics = pd.DataFrame({"rlnOpticsGroup": [1]})
        key = np.ones(len(table), dtype=int)
    optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{i}" for i in optics["rlnOpticsGroup"]])
    table["rlnOpticsGroup"] = key
    return optics, table


def read_table(path: str | os.PathLike, kind: str | None = None) -> StarTable:
    """Read a RELION micrograph or particle STAR file (3.1+, or 3.0 upgraded).

    ``kind`` is ``"micrographs"``, ``"particles"`` or ``None`` to detect it from the block
    names (or, for a RELION 3.0 file, from rlnImageName).
    """
    path = Path(path)
    blocks = read_blocks(path)
    if kind is None:
        if "particles" in blocks:
            kind = "particles"
        elif "micrographs" in blocks:
            kind = "micrographs"
        else:
            only = next(iter(blocks.values()))
            kind = "particles" if "rlnImageName" in only else "micrographs"
    if kind not in PIXEL_SIZE_COLUMNS:
        raise ValueError(f"kind must be 'micrographs' or 'particles', not {kind!r}")
    if kind in blocks:
        table = blocks.pop(kind)
        optics = blocks.pop("optics", None)
        upgraded = optics is None
        if optics is None:
            optics, table = _upgrade_30(table, kind, path)
        else:
            require_columns(optics, ["rlnOpticsGroup"], path, "optics")
            if "rlnOpticsGroup" not in table:
                if len(optics) != 1:
                    raise CryoflowError(
                        path, f"data_{kind} has no rlnOpticsGroup column but data_optics has {len(optics)} groups"
                    )
                table = table.assign(rlnOpticsGroup=int(optics["rlnOpticsGroup"].iloc[0]))
            unknown = set(table["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
            if unknown:
                raise CryoflowError(
                    path, f"data_{kind} refers to optics group(s) {sorted(unknown)} missing from data_optics"
                )
    elif len(blocks) == 1 and "optics" not in blocks:
        # RELION 3.0: a single unnamed (or differently named) block
        name, table = blocks.popitem()
        optics, table = _upgrade_30(table, kind, path)
        upgraded = True
    else:
        names = ", ".join(f"data_{n}" for n in blocks)
        raise CryoflowError(path, f"has no data_{kind} block (found: {names})")
    return StarTable(
        optics=optics, table=table.reset_index(drop=True), kind=kind, path=path, upgraded=upgraded, extra=blocks or None
    )


def write_table(path: str | os.PathLike, table: StarTable, overwrite: bool = True) -> Path:
    """Write a :class:`StarTable` as RELION 3.1+ (``data_optics`` then ``data_<kind>``), atomically."""
    blocks = {"optics": table.optics, table.kind: table.table}
    if table.extra:
        blocks.update(table.extra)
    return write_blocks(path, blocks, overwrite=overwrite)


def make_optics(
    pixel_size: float,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    kind: str = "micrographs",
    group: int = 1,
    name: str | None = None,
    **extra,
) -> pd.DataFrame:
    """A one-group ``data_optics`` table.

    ``pixel_size`` in Å, ``voltage`` in kV, ``cs`` (spherical aberration) in mm,
    ``amplitude_contrast`` as a fraction (0.07-0.1 for cryo samples). ``extra`` columns
    (for example ``rlnImageSize``) are added as given.
    """
    row = {
        "rlnOpticsGroup": group,
        "rlnOpticsGroupName": name or f"opticsGroup{group}",
        "rlnVoltage": float(voltage),
        "rlnSphericalAberration": float(cs),
        "rlnAmplitudeContrast": float(amplitude_contrast),
        PIXEL_SIZE_COLUMNS[kind][0]: float(pixel_size),
    }
    if kind == "particles":
        row["rlnImageDimensionality"] = 2
    row.update(extra)
    return pd.DataFrame([row])


def resolve_star_path(name: str, star_path: str | os.PathLike) -> Path:
    """Resolve a file name found in a STAR file as RELION does.

    Absolute names stay as they are. RELION resolves relative names against its project
    folder, the working directory it runs in; a STAR file is also often used from outside
    that folder, so when the name does not exist there it is looked up relative to the STAR
    file's folder and each of its parents (a job folder sits two levels below the project).
    The first existing candidate wins; if none exists the working-directory reading is
    returned so the error names what RELION would have opened.
    """
    # Particle images are written "N@stack.mrcs"; keep only the file part.
    name = str(name).split("@", 1)[-1]
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate
    if candidate.exists():
        return candidate
    folder = Path(star_path).resolve().parent
    for base in (folder, *folder.parents):
        if (base / candidate).exists():
            return base / candidate
    return candidate
