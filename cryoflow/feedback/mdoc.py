"""Stage positions from SerialEM ``.mdoc`` files (read with the ``mdocfile`` package).

SerialEM writes one ``.mdoc`` beside each saved image (``name.mrc.mdoc`` or, for frames,
``name.tif.mdoc``). Each section gives ``StagePosition`` (x y, µm) and, when the image was
taken at a navigator item, ``NavigatorLabel`` (the item's label: the hole). The image
shift of multi-shot exposures (``ImageShift``, in image-shift units) is not converted, so
every shot of a hole gets the hole's stage position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.errors import CryoflowError
from cryoflow.feedback.names import micrograph_key


def mdoc_files(source: str | Path) -> list[Path]:
    """``source`` itself if it is a file, else every ``*.mdoc`` below the folder (sorted)."""
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        return sorted(source.rglob("*.mdoc"))
    raise CryoflowError(source, "mdoc file or folder not found")


def read_mdocs(source: str | Path) -> pd.DataFrame:
    """One row per image: ``key`` (the image's micrograph key), ``x_um``, ``y_um``, ``nav_label``."""
    import mdocfile

    rows = []
    for path in mdoc_files(source):
        try:
            df = mdocfile.read(path)
        except Exception as exc:  # mdocfile raises parser and validation errors of several kinds
            raise CryoflowError(path, f"not a readable mdoc file ({type(exc).__name__})") from None
        if "StagePosition" not in df:
            raise CryoflowError(path, "has no StagePosition")
        image = path.name[: -len(".mdoc")] if path.name.endswith(".mdoc") else path.name
        for _, row in df.iterrows():
            x, y = row["StagePosition"] if isinstance(row["StagePosition"], tuple) else (np.nan, np.nan)
            frames = row.get("SubFramePath")
            has_frames = frames is not None and str(frames) not in ("", "nan", "None")
            key = micrograph_key(str(frames) if len(df) > 1 and has_frames else image)
            label = row.get("NavigatorLabel")
            rows.append(
                {"key": key, "x_um": float(x), "y_um": float(y), "nav_label": None if label is None else str(label)}
            )
    if not rows:
        raise CryoflowError(source, "no mdoc sections found")
    return pd.DataFrame(rows)
