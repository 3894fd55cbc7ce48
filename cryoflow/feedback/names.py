"""Where a micrograph was taken, read from its file name (EPU and Leginon conventions).

EPU (Thermo Fisher) writes ``.../GridSquare_<n>/Data/FoilHole_<m>_Data_<k>_<a>_<date>_<time>.mrc``:
square ``n`` and foil hole ``m`` are session-wide ids. ``Images-Disc<d>`` in the path (EPU's
folder per cassette slot) names the grid.

Leginon writes ``<session>_<nnnnn>gr_<nnnnn>sq_v01_<nnnnn>hl_<nnnnn>ex.mrc``: each ``<n><tag>``
numbers an image of one preset (``gr`` atlas, ``sq`` square, ``hl`` hole, ``ex``/``en``
exposure) and only the chain of parents makes a hole unique, so the square and hole ids
returned here are the name up to and including their token (``..._00005sq``,
``..._00005sq_v01_00008hl``).

Both parsers return ``None`` when a name does not follow their convention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

_EPU_SQUARE = re.compile(r"GridSquare_(\d+)")
_EPU_HOLE = re.compile(r"FoilHole_(\d+)_Data_")
_EPU_DISC = re.compile(r"Images-Disc(\d+)")
_LEGINON_TOKEN = re.compile(r"_?(\d+)(gr|sq|hl|ex|en|fc|fa)(?=_|$)")


@dataclass(frozen=True)
class NamedLocation:
    """Grid, square and hole ids of a micrograph (strings; ``grid`` is ``"1"`` when unknown)."""

    grid: str
    square: str
    hole: str
    convention: str  # "epu" or "leginon"


def micrograph_key(name: str) -> str:
    """The id a micrograph is matched by across steps: its file name without folder and extension.

    Steps may write the same micrograph as an absolute or a relative path (a CWL run stages
    inputs in temporary folders), so only the final name is compared.
    """
    stem = PurePath(str(name).replace("\\", "/")).name
    for suffix in (".mrcs", ".mrc", ".tiff", ".tif", ".eer", ".jpg", ".png"):
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def parse_epu(name: str) -> NamedLocation | None:
    """Square and hole of an EPU micrograph path, e.g. ``GridSquare_7/Data/FoilHole_12_Data_3.mrc``."""
    text = str(name).replace("\\", "/")
    hole = _EPU_HOLE.search(PurePath(text).name)
    squares = _EPU_SQUARE.findall(text)
    if not hole or not squares:
        return None
    disc = _EPU_DISC.search(text)
    return NamedLocation(disc.group(1) if disc else "1", squares[-1], hole.group(1), "epu")


def parse_leginon(name: str) -> NamedLocation | None:
    """Square and hole of a Leginon image name, e.g. ``24jan01a_00002gr_00005sq_v01_00008hl_00003ex.mrc``."""
    stem = micrograph_key(name)
    tokens = list(_LEGINON_TOKEN.finditer(stem))
    kinds = [t.group(2) for t in tokens]
    if "sq" not in kinds or "hl" not in kinds:
        return None
    sq = tokens[kinds.index("sq")]
    hl = tokens[kinds.index("hl")]
    if hl.start() < sq.start():
        return None
    grid = stem[: tokens[kinds.index("gr")].end()] if "gr" in kinds else stem.split("_", 1)[0]
    return NamedLocation(grid, stem[: sq.end()], stem[: hl.end()], "leginon")


def parse_name(name: str) -> NamedLocation | None:
    """EPU first, then Leginon; ``None`` if neither convention matches."""
    return parse_epu(name) or parse_leginon(name)
