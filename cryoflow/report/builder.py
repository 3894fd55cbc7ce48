"""Building blocks of a step report and the writer (see :mod:`cryoflow.report`)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryoflow.io.atomic import atomic_path, write_text
from cryoflow.report.render import render

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``_.-``)."""
    return _SLUG.sub("_", text).strip("_")[:80] or "item"


@dataclass
class Metric:
    """One number with its unit and what it means for a newcomer."""

    name: str
    value: Any
    unit: str = ""
    explanation: str = ""

    @property
    def text(self) -> str:
        value = self.value
        if isinstance(value, float | np.floating):
            value = float(value)
            if math.isnan(value):
                return "n/a"
            value = f"{value:.4g}"
        return f"{value} {self.unit}".strip()


@dataclass
class Item:
    """An element of a section: kind is text, metrics, figure, gallery or table."""

    kind: str
    data: dict


@dataclass
class Section:
    """A titled part of a report; add elements in the order they should appear."""

    title: str
    intro: str = ""
    items: list[Item] = field(default_factory=list)
    _report: Report | None = field(default=None, repr=False)

    @property
    def anchor(self) -> str:
        return slug(self.title).lower()

    def text(self, paragraph: str) -> Section:
        """A paragraph of plain text (escaped; blank lines separate paragraphs)."""
        self.items.append(Item("text", {"paragraphs": [p.strip() for p in paragraph.split("\n\n") if p.strip()]}))
        return self

    def metric(self, name: str, value: Any, unit: str = "", explanation: str = "") -> Section:
        """One metric row; consecutive metrics share one table."""
        metric = Metric(name, value, unit, explanation)
        if self.items and self.items[-1].kind == "metrics":
            self.items[-1].data["metrics"].append(metric)
        else:
            self.items.append(Item("metrics", {"metrics": [metric]}))
        return self

    def figure(self, fig, caption: str = "", name: str | None = None, dpi: int = 110) -> Section:
        """A matplotlib figure, saved as PNG beside the report and closed."""
        assert self._report is not None
        path = self._report._add_figure(fig, name or caption or self.title, dpi)
        self.items.append(Item("figure", {"src": path, "caption": caption}))
        return self

    def gallery(self, images, captions, name: str | None = None, size: int = 192, cmap: str = "gray") -> Section:
        """A row of images (2D arrays, shown contrast-stretched) with one caption each."""
        assert self._report is not None
        entries = []
        base = slug(name or self.title)
        for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
            path = self._report._add_image(np.asarray(image), f"{base}_{i:03d}", cmap)
            entries.append({"src": path, "caption": caption})
        self.items.append(Item("gallery", {"entries": entries, "size": size}))
        return self

    def table(self, rows, columns: list[str] | None = None, caption: str = "", max_rows: int = 200) -> Section:
        """A data table from a pandas DataFrame or a list of dicts (first ``max_rows`` rows)."""
        if hasattr(rows, "to_dict"):
            columns = columns or [str(c) for c in rows.columns]
            rows = rows.to_dict("records")
        rows = list(rows)
        columns = columns or (list(rows[0]) if rows else [])
        shown = [[_cell(row.get(c, "")) for c in columns] for row in rows[:max_rows]]
        self.items.append(
            Item(
                "table", {"columns": columns, "rows": shown, "caption": caption, "hidden": max(0, len(rows) - max_rows)}
            )
        )
        return self


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if math.isnan(float(value)) else f"{float(value):.4g}"
    return str(value)


def _json_default(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean_json(value: Any) -> Any:
    """Replace NaN/Inf (not valid JSON) by None, recursively."""
    if isinstance(value, dict):
        return {str(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None
    return value


def write_summary(path: str | os.PathLike, summary: dict) -> Path:
    """Write ``summary.json`` (machine-readable key metrics) atomically; NaN becomes null."""
    text = json.dumps(_clean_json(json.loads(json.dumps(summary, default=_json_default))), indent=2, allow_nan=False)
    return write_text(path, text + "\n")


class Report:
    """An HTML evaluation report of one step.

    Parameters
    ----------
    title: heading of the page, e.g. ``"CTF estimation"``.
    step: the step's name (``ctf``, ``micassess``, ...), used by the index page.
    intro: what the step does, in plain language, shown under the title.
    """

    FIGURES = "figures"

    def __init__(self, title: str, step: str, intro: str = ""):
        self.title = title
        self.step = step
        self.intro = intro
        self.sections: list[Section] = []
        self._files: dict[str, bytes] = {}  # figure files, relative path -> PNG bytes

    def section(self, title: str, intro: str = "") -> Section:
        """Start a new section and return it."""
        section = Section(title, intro, _report=self)
        self.sections.append(section)
        return section

    def _unique(self, name: str) -> str:
        stem, n = slug(name), 1
        path = f"{self.FIGURES}/{stem}.png"
        while path in self._files:
            n += 1
            path = f"{self.FIGURES}/{stem}_{n}.png"
        return path

    def _add_figure(self, fig, name: str, dpi: int) -> str:
        import io

        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        path = self._unique(name)
        self._files[path] = buffer.getvalue()
        return path

    def _add_image(self, image: np.ndarray, name: str, cmap: str) -> str:
        import io

        import matplotlib.image

        buffer = io.BytesIO()
        matplotlib.image.imsave(buffer, contrast_stretch(image), cmap=cmap, vmin=0, vmax=1, format="png")
        path = self._unique(name)
        self._files[path] = buffer.getvalue()
        return path

    def html(self) -> str:
        """The report page as a string."""
        return render(
            "step.html.j2",
            report=self,
            created=_dt.datetime.now().isoformat(timespec="seconds"),
        )

    def write(self, out_dir: str | os.PathLike, summary: dict | None = None) -> Path:
        """Write ``report.html``, ``figures/*.png`` and ``summary.json`` into ``out_dir``.

        Every file is written atomically; the page is written last, so a report that
        exists is complete. Returns the path of ``report.html``.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for rel, data in self._files.items():
            with atomic_path(out_dir / rel) as tmp:
                tmp.write_bytes(data)
        summary = dict(summary or {})
        summary.setdefault("step", self.step)
        write_summary(out_dir / "summary.json", summary)
        return write_text(out_dir / "report.html", self.html())


def contrast_stretch(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map ``image`` to [0, 1] between its ``low`` and ``high`` percentiles (for display)."""
    image = np.asarray(image, dtype=np.float32)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        hi = lo + 1
    return np.clip((np.nan_to_num(image, nan=lo) - lo) / (hi - lo), 0, 1)
