"""SerialEM navigator files (``.nav``, the autodoc text format, version 2.00): read and flag items.

A navigator is a list of items ``[Item = <label>]`` with ``key = value`` lines. The keys used
here: ``Type`` (0 point, 1 polygon, 2 map), ``StageXYZ`` (µm), ``MapID`` (a map's id),
``DrawnID`` (the ``MapID`` of the map a point was drawn on: for a hole, its square's map),
``Acquire`` (1: acquire at this item), ``Color`` (0 red, 1 green, 2 blue, 3 yellow, 4
magenta) and ``Note``. Every other line is kept as it was, so a flagged navigator opens in
SerialEM with everything else unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cryoflow.errors import CryoflowError

_ITEM = re.compile(r"^\[Item\s*=\s*(.*?)\]\s*$")
GREEN, RED = "1", "0"


@dataclass
class NavItem:
    """One navigator item: its label and its ``key = value`` pairs in file order."""

    label: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def type(self) -> int:
        return int(float(self.fields.get("Type", "0")))

    @property
    def stage(self) -> tuple[float, float]:
        """Stage x, y in µm."""
        x, y = self.fields.get("StageXYZ", "nan nan").split()[:2]
        return float(x), float(y)


@dataclass
class Navigator:
    """A navigator file: the header lines before the first item, then the items."""

    header: list[str]
    items: list[NavItem]

    def points(self) -> list[NavItem]:
        """Point items (``Type = 0``): acquisition targets such as holes."""
        return [i for i in self.items if i.type == 0]

    def map_labels(self) -> dict[str, str]:
        """``{MapID: label}`` of the map items (square or atlas maps)."""
        return {i.fields["MapID"]: i.label for i in self.items if i.type == 2 and "MapID" in i.fields}


def read_nav(path: str | Path) -> Navigator:
    """Parse a SerialEM ``.nav`` text file (the XML variant is not read)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise CryoflowError(path, f"cannot read the navigator ({exc.strerror})") from None
    if lines and lines[0].lstrip().startswith("<"):
        raise CryoflowError(path, "is an XML navigator; save it in SerialEM's text format (.nav, AdocVersion 2.00)")
    header, items = [], []
    for line in lines:
        m = _ITEM.match(line.strip())
        if m:
            items.append(NavItem(m.group(1)))
        elif items:
            if "=" in line:
                key, value = line.split("=", 1)
                items[-1].fields[key.strip()] = value.strip()
        else:
            header.append(line)
    if not items:
        raise CryoflowError(path, "holds no navigator items ([Item = ...])")
    for item in items:
        if "StageXYZ" not in item.fields:
            raise CryoflowError(path, f"item {item.label!r} has no StageXYZ")
    return Navigator(header, items)


def flag_items(nav: Navigator, decisions: dict[str, tuple[bool, str]]) -> Navigator:
    """A copy of ``nav`` whose points in ``decisions`` (``{label: (acquire, note)}``) are flagged.

    ``Acquire`` becomes 1 or 0, ``Color`` green or red, and the note is prefixed with
    ``cryoflow: <note>`` (an earlier cryoflow prefix is replaced, the user's note kept).
    """
    items = []
    for item in nav.items:
        fields = dict(item.fields)
        if item.label in decisions:
            acquire, note = decisions[item.label]
            fields["Acquire"] = "1" if acquire else "0"
            fields["Color"] = GREEN if acquire else RED
            old = fields.get("Note", "")
            old = old.split(" | ", 1)[1] if old.startswith("cryoflow:") and " | " in old else old
            old = "" if old.startswith("cryoflow:") else old
            fields["Note"] = f"cryoflow: {note}" + (f" | {old}" if old else "")
        items.append(NavItem(item.label, fields))
    return Navigator(list(nav.header), items)


def nav_text(nav: Navigator) -> str:
    """The navigator in SerialEM's text format."""
    out = list(nav.header) or ["AdocVersion = 2.00", ""]
    for item in nav.items:
        if out and out[-1].strip():
            out.append("")
        out.append(f"[Item = {item.label}]")
        out.extend(f"{k} = {v}" for k, v in item.fields.items())
    return "\n".join(out) + "\n"


def make_nav(squares: list[tuple[str, float, float]], holes: list[tuple[str, str, float, float]]) -> Navigator:
    """A navigator with one map item per square and one point per hole (simulations, tests).

    ``squares``: ``(label, x_um, y_um)``; ``holes``: ``(label, square_label, x_um, y_um)``.
    """
    items, ids = [], {}
    for n, (label, x, y) in enumerate(squares, start=1):
        ids[label] = str(1000 + n)
        fields = {"Color": "2", "StageXYZ": f"{x:.3f} {y:.3f} 0.000", "NumPts": "1", "Regis": "1", "Type": "2"}
        fields.update({"MapID": ids[label], "MapFile": f"{label}.mrc", "Acquire": "0"})
        items.append(NavItem(label, fields))
    for label, square, x, y in holes:
        fields = {"Color": "0", "StageXYZ": f"{x:.3f} {y:.3f} 0.000", "NumPts": "1", "Regis": "1", "Type": "0"}
        fields.update({"DrawnID": ids[square], "Acquire": "0", "PtsX": f"{x:.3f}", "PtsY": f"{y:.3f}"})
        items.append(NavItem(label, fields))
    return Navigator(["AdocVersion = 2.00", ""], items)
