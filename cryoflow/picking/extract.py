"""Cut picked particles out of micrographs: ``.mrcs`` stacks, ``particles.star`` (RELION 3.1) and a cryoSPARC ``.cs``.

Inputs
------
``micrographs``: a micrographs STAR (``micrographs_ctf.star`` of the CTF step or
``micrographs_good.star`` of micassess): ``data_optics`` (rlnVoltage kV,
rlnSphericalAberration mm, rlnAmplitudeContrast, rlnMicrographPixelSize Å) and
``data_micrographs`` (rlnMicrographName, rlnDefocusU/V Å, rlnDefocusAngle °, optional
rlnPhaseShift °, rlnCtfMaxResolution Å, ...). Micrograph files are found as RELION finds
them, else under ``images`` (:func:`cryoflow.io.find_image`).

``coordinates``: a pick folder holding ``coordinates.star``, that file itself (block
``coordinate_files``: rlnMicrographName + rlnMicrographCoordinates, the per-micrograph file
relative to ``coordinates.star``'s folder), or one particle STAR with rlnMicrographName and
rlnCoordinateX/Y (RELION ``particles.star``, the simulator's ``truth/particles_truth.star``).
Coordinates are pixels of the micrograph as stored (x = column, y = row). Micrographs are
matched by name: the full relative name first, then the base name without extension.
``rlnAutopickFigureOfMerit`` and every ``cf*``/``cryoflow*`` column are carried to the output.

Choices (written to ``summary.json`` and explained in the report)
-----------------------------------------------------------------
- Box: ``box`` output pixels if given, else :data:`particle_images.BOX_FACTOR` (1.5) x the
  particle diameter (``diameter`` Å, else ``diameter_A`` of the pick step's ``summary.json``),
  rounded up to an even size whose prime factors are 2, 3, 5.
- ``binning`` F: a window of ``box * F`` micrograph pixels (rounded to even) is the particle's
  extent; the whole micrograph is Fourier-cropped by ``window / box`` once and ``box``-pixel
  boxes are cut from it, centred within half a binned pixel of the coordinate; the image pixel
  size is ``micrograph pixel * window / box``.
- Contrast inverted (particles white); background = outside a circle of diameter 0.75 x box
  (RELION's default ``bg_radius``), ramp removed, mean 0 and std 1 there.
- ``phase_flip``: multiply by ``sign(CTF)`` of the micrograph's CTF (rlnCtfDataArePhaseFlipped 1).
- A particle whose window leaves the micrograph is dropped and counted per micrograph; the
  picks of a micrograph without a CTF fit (NaN defocus, which micassess may still call good
  on its looks) are skipped and counted (``skipped_no_ctf``): 2D and 3D need the defocus.

Speed
-----
Every micrograph is checked first (headers, CTF, box inside), so a bad one fails the step
before any work. Then micrographs are cut in parallel, one per CPU thread (torch's thread
count, at most :data:`MAX_WORKERS`; one on a GPU), each thread reading its micrograph
(memory-mapped; the kernel is asked to read each file ahead when its micrograph is queued,
:func:`cryoflow.io.prefetch`) and streaming its particles a few MiB at a time
(:func:`particle_images.particle_chunks`): each chunk is cut, flipped, normalized and added to
the report's average (on the CPU in two passes compiled by numba, which also give the chunk's
sum and sum of squares: :mod:`cryoflow.picking.cpu_kernels`), written to the stack file
(:func:`cryoflow.io.mrc_writer`, whose header statistics take those sums and read a float32
chunk only for its min and max) and sampled for its gallery while it is in cache, so no stack
is ever held whole. A box holding NaN or Inf fails the step naming the micrograph: it makes
the stack's statistics non-finite, checked once per micrograph instead of a pass over every
box; so does a normalized value beyond float16's range in float16 stacks, with its own
message. Large temporaries (the binned micrograph's spectra, the chunk) are kept from
micrograph to micrograph, and from one extraction to the next in the same process
(:class:`particle_images.Workspace`, one per thread). The main thread only gathers each
micrograph's counts, sum and gallery as it finishes (it shares the cores with the workers)
and builds ``particles.star``'s table at once at the end. ``cryoflow bench extract`` measures
particles/s.

On a GPU the same steps run in torch, one micrograph at a time, each chunk copied to the host
to be written. That is slower than the CPU path: on an H100 machine with 16 cores (24
micrographs of 4096², ``bench extract``'s data) the CPU path gave 9,128 particles/s for box
288 and the CUDA path 2,620 (3,590 with 4 MiB chunks); with ``--bin 2`` 6,317 against 4,267.
So ``cryoflow extract --device auto`` runs on the CPU; ``--device cuda`` asks for the GPU.

Outputs in ``out`` (built in a temporary folder and renamed when complete)
---------------------------------------------------------------------------
``Particles/<micrograph name without extension>.mrcs`` (float32, or float16 with ``float16``;
pixel size in the header),
``particles.star``, ``particles.cs``, ``summary.json``, ``report.html`` + ``figures/``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch

from cryoflow.errors import CryoflowError
from cryoflow.picking import particle_images as pim

MICROGRAPH_COLUMNS = ("rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfMaxResolution")
OPTIONAL_CTF = ("rlnCtfBfactor", "rlnCtfScalefactor", "rlnCtfFigureOfMerit")
COORDINATES_STAR = "coordinates.star"
PICK_SUMMARY = "summary.json"
STACK_DIR = "Particles"
GALLERY = 48  # particles kept for the report
MAX_WORKERS = 8  # micrographs cut at once (one per CPU thread; each holds its own buffers)


def is_carried(column: str) -> bool:
    """Coordinate columns copied into particles.star: the figure of merit and cryoflow's own (cf*, cryoflow*)."""
    return column == "rlnAutopickFigureOfMerit" or column.startswith(("cf", "cryoflow"))


@dataclass
class Coordinates:
    """Picked positions: ``table`` has rlnMicrographName, rlnCoordinateX/Y (px) and carried columns.

    ``source``: the file read; ``pick_summary``: the pick step's summary.json (``{}`` if none).
    """

    table: pd.DataFrame
    source: Path
    pick_summary: dict = field(default_factory=dict)


def _read_pick_summary(folder: Path) -> dict:
    path = folder / PICK_SUMMARY
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CryoflowError(path, f"not a readable JSON file ({exc})") from None


def _coordinate_block(path: Path) -> pd.DataFrame:
    """The one table of a per-micrograph coordinate file (empty when the file has no picks)."""
    import starfile

    if not path.is_file():
        raise CryoflowError(path, "coordinate file not found")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise CryoflowError(path, f"not a readable STAR file ({type(exc).__name__}: {exc})") from None
    tables = [b for b in blocks.values() if isinstance(b, pd.DataFrame) and "rlnCoordinateX" in b]
    if not tables:
        if all(isinstance(b, pd.DataFrame) and b.empty for b in blocks.values()):
            return pd.DataFrame(columns=["rlnCoordinateX", "rlnCoordinateY"])
        raise CryoflowError(path, "has no table with rlnCoordinateX/rlnCoordinateY")
    return tables[0]


def read_coordinates(path: str | os.PathLike) -> Coordinates:
    """Read picks from a pick folder, its ``coordinates.star`` or a particle STAR (see the module doc)."""
    from cryoflow.io import read_blocks, require_columns

    path = Path(path)
    if path.is_dir():
        star = path / COORDINATES_STAR
        if not star.is_file():
            raise CryoflowError(path, f"folder holds no {COORDINATES_STAR} (give a pick folder or a STAR file)")
        path = star
    blocks = read_blocks(path)
    summary = _read_pick_summary(path.parent)
    if "coordinate_files" in blocks:
        index = blocks["coordinate_files"]
        require_columns(index, ["rlnMicrographName", "rlnMicrographCoordinates"], path, "coordinate_files")
        frames = []
        for name, rel in zip(index["rlnMicrographName"], index["rlnMicrographCoordinates"], strict=True):
            picks = _coordinate_block(path.parent / str(rel))
            require_columns(picks, ["rlnCoordinateX", "rlnCoordinateY"], path.parent / str(rel), "coordinates")
            keep = ["rlnCoordinateX", "rlnCoordinateY"] + [c for c in picks.columns if is_carried(c)]
            frames.append(picks[keep].assign(rlnMicrographName=str(name)))
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if table.empty:
            table = pd.DataFrame(columns=["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"])
    else:
        candidates = [n for n in ("particles", *blocks) if n in blocks and n != "optics"]
        block = next((n for n in candidates if "rlnCoordinateX" in blocks[n]), candidates[0] if candidates else None)
        if block is None:
            raise CryoflowError(path, "has no coordinate_files block and no particle table")
        table = blocks[block]
        require_columns(table, ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"], path, block or "particles")
        keep = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"] + [c for c in table.columns if is_carried(c)]
        table = table[keep]
    table = table.reset_index(drop=True)
    xy = table[["rlnCoordinateX", "rlnCoordinateY"]].apply(pd.to_numeric, errors="coerce")
    if not np.isfinite(xy.to_numpy(dtype=float)).all():
        raise CryoflowError(path, "rlnCoordinateX/rlnCoordinateY hold values that are not finite numbers")
    table[["rlnCoordinateX", "rlnCoordinateY"]] = xy.astype(float)
    table["rlnMicrographName"] = table["rlnMicrographName"].astype(str)
    return Coordinates(table=table, source=path, pick_summary=summary)


def _stem_key(name: str) -> str:
    return PurePosixPath(str(name).replace("\\", "/")).stem


def _name_key(name: str) -> str:
    return os.path.normpath(str(name).replace("\\", "/"))


def match_micrographs(names: list[str], coordinate_names: pd.Series) -> tuple[np.ndarray, dict[str, int]]:
    """Row of ``names`` for each coordinate's micrograph name (-1 if none) and the unmatched counts.

    The full (normalized) relative name is tried first, then the base name without extension
    (only where it is unique among ``names``).
    """
    full = {_name_key(n): i for i, n in enumerate(names)}
    stems: dict[str, int] = {}
    for i, n in enumerate(names):
        stems[_stem_key(n)] = -2 if _stem_key(n) in stems else i  # -2: ambiguous
    lookup = {}
    for name in coordinate_names.unique():
        row = full.get(_name_key(name))
        if row is None:
            row = stems.get(_stem_key(name), -1)
            row = -1 if row == -2 else row
        lookup[name] = row
    rows = coordinate_names.map(lookup).to_numpy(dtype=int)
    unmatched = coordinate_names[rows < 0].value_counts().to_dict()
    return rows, {str(k): int(v) for k, v in unmatched.items()}


def stack_name(micrograph_name: str) -> str:
    """``Particles/<name without extension>.mrcs`` (a path relative to the output folder; ``..`` and roots removed)."""
    parts = [p for p in PurePosixPath(str(micrograph_name).replace("\\", "/")).parts if p not in ("/", "..", ".")]
    rel = PurePosixPath(*parts) if parts else PurePosixPath("micrograph")
    return str(PurePosixPath(STACK_DIR) / rel.with_suffix(".mrcs"))


@dataclass
class BoxChoice:
    """The box, window and pixel sizes chosen, and why."""

    box: int  # output pixels
    window: int  # micrograph pixels cut before binning
    binning: float  # requested factor
    diameter_A: float | None
    diameter_source: str
    reason: str


def choose_box(
    box: int | None, binning: float, diameter: float | None, pick_summary: dict, pixel_size: float, source: Path
) -> BoxChoice:
    """Decide the output box (pixels) from ``box``, else the diameter (Å) given or found by the pick step."""
    if not (isinstance(binning, int | float) and math.isfinite(binning) and binning >= 1):
        raise CryoflowError(None, f"--bin must be a number >= 1 (1: no binning), got {binning}")
    source_name = "--diameter"
    if diameter is None and pick_summary.get("diameter_A") is not None:
        try:
            diameter, source_name = float(pick_summary["diameter_A"]), f"pick summary ({source.parent / PICK_SUMMARY})"
        except (TypeError, ValueError):
            raise CryoflowError(source.parent / PICK_SUMMARY, "diameter_A is not a number") from None
    if diameter is not None and not (math.isfinite(diameter) and diameter > 0):
        raise CryoflowError(None, f"the particle diameter must be a positive number of Å, got {diameter}")
    if box is None:
        if diameter is None:
            raise CryoflowError(
                source,
                "no box size: give --box (pixels) or --diameter (Å), or a pick folder whose summary.json has diameter_A",
            )
        out_apix = pixel_size * binning
        box = pim.auto_box(diameter, out_apix)
        reason = (
            f"{pim.BOX_FACTOR:g} x the particle diameter ({diameter:.1f} Å from {source_name}) = "
            f"{pim.BOX_FACTOR * diameter / out_apix:.1f} px at {out_apix:.4g} Å/px, rounded up to {box}, the next even "
            "size whose prime factors are 2, 3 and 5 (fast FFTs)"
        )
    else:
        if isinstance(box, float) and not box.is_integer():
            raise CryoflowError(None, f"--box must be a whole number of pixels, got {box}")
        box = int(box)
        if box < 8 or box % 2:
            raise CryoflowError(None, f"--box must be an even number of pixels >= 8, got {box}")
        reason = "given (--box)"
        if diameter is not None and box * pixel_size * binning < diameter:
            print(
                f"cryoflow extract: warning: box {box} px ({box * pixel_size * binning:.0f} Å) is smaller than the "
                f"particle diameter ({diameter:.0f} Å)",
                file=sys.stderr,
            )
    window = pim.window_size(box, binning)
    return BoxChoice(
        box=box,
        window=window,
        binning=float(binning),
        diameter_A=diameter,
        diameter_source=source_name if diameter is not None else "",
        reason=reason,
    )


def micrograph_table(path: Path):
    """The micrographs STAR (optics + micrographs) with the columns picking and extraction need."""
    from cryoflow.io import read_table, require_columns

    mics = read_table(path, "micrographs")
    if mics.table.empty:
        raise CryoflowError(path, "data_micrographs holds no micrographs")
    require_columns(mics.table, MICROGRAPH_COLUMNS, path, "micrographs")
    for column in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if column not in mics.optics:
            raise CryoflowError(path, f"data_optics is missing required column: {column}")
    return mics


def _particle_table(
    jobs: list[_Work], table: pd.DataFrame, group_rows: np.ndarray, picks: pd.DataFrame
) -> pd.DataFrame:
    """The rows of ``particles.star`` for the micrographs cut (``jobs``, in order), built at once.

    Image names (``000001@Particles/<micrograph>.mrcs``), micrograph name, coordinates, the
    micrograph's CTF (``table``, rlnPhaseShift 0 when absent) and optics group (``group_rows``),
    and the carried columns of ``picks`` (the coordinates table)."""
    counts = [len(job.rows) for job in jobs]
    mic = np.repeat([job.index for job in jobs], counts)  # each particle's row of the micrographs table
    rows = np.concatenate([job.rows for job in jobs])  # ... and of the coordinates table
    columns = {  # one DataFrame from all its columns: a third of the time of adding them one by one
        "rlnImageName": [
            f"{j + 1:06d}@{rel}" for job in jobs for rel in [stack_name(job.name)] for j in range(len(job.rows))
        ],
        "rlnMicrographName": np.repeat([job.name for job in jobs], counts),
        "rlnCoordinateX": picks["rlnCoordinateX"].to_numpy(float)[rows],
        "rlnCoordinateY": picks["rlnCoordinateY"].to_numpy(float)[rows],
    }
    for c in CTF_COLUMNS + OPTIONAL_CTF:
        if c in table:
            columns[c] = table[c].to_numpy()[mic]
        elif c == "rlnPhaseShift":
            columns[c] = np.zeros(len(mic))
    columns["rlnOpticsGroup"] = group_rows[mic]
    columns.update({c: picks[c].to_numpy()[rows] for c in picks.columns if is_carried(c)})
    return pd.DataFrame(columns)


def _optics_out(mics, groups, pixel_sizes: dict, choice: BoxChoice, phase_flip: bool) -> pd.DataFrame:
    """RELION 3.1 particle ``data_optics``: one row per optics group used."""
    rows = []
    for g in groups:
        src = mics.optics[mics.optics["rlnOpticsGroup"] == g].iloc[0]
        apix = pixel_sizes[g]
        original = float(src["rlnMicrographOriginalPixelSize"]) if "rlnMicrographOriginalPixelSize" in src else apix
        rows.append(
            {
                "rlnOpticsGroup": int(g),
                "rlnOpticsGroupName": str(src.get("rlnOpticsGroupName", f"opticsGroup{g}")),
                "rlnVoltage": float(src["rlnVoltage"]),
                "rlnSphericalAberration": float(src["rlnSphericalAberration"]),
                "rlnAmplitudeContrast": float(src["rlnAmplitudeContrast"]),
                "rlnMicrographOriginalPixelSize": original,
                "rlnImagePixelSize": round(apix * choice.window / choice.box, 6),
                "rlnImageSize": choice.box,
                "rlnImageDimensionality": 2,
                "rlnCtfDataArePhaseFlipped": int(phase_flip),
            }
        )
    return pd.DataFrame(rows)


@dataclass
class _Work:
    """One micrograph with particles to cut, as checked before any is read."""

    index: int  # row of the micrographs table
    name: str
    path: Path
    apix: float
    defocus: list[float]
    record: dict  # its entry of summary["per_micrograph"]
    rows: np.ndarray  # rows of the coordinates table whose window lies inside
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class _Cut:
    """What a worker hands back for one micrograph (its stack is already written)."""

    n: int  # particles
    total: torch.Tensor  # (box, box) float32 sum of the particle images (the report's average; float64 over all)
    first: np.ndarray  # the first few particle images (the report's gallery)


def _not_finite(image: np.ndarray, job: _Work, window: int, float16: bool) -> str:
    """Why a micrograph's particles hold NaN or Inf (their sum is not finite): the error message.

    Only called on failure, so the boxes are read again: a NaN or Inf in one of them, else values
    that normalization made too large for the stack's dtype (a background with almost no
    variation, e.g. noise-free or blank regions; float16 ends at 65,504)."""
    x0 = pim.box_starts(job.x, window).tolist()
    y0 = pim.box_starts(job.y, window).tolist()
    if any(not np.isfinite(image[b : b + window, a : a + window]).all() for a, b in zip(x0, y0, strict=True)):
        return "data contain NaN or Inf values (in the particles' boxes)"
    dtype = "float16 (at most 65,504; write float32 stacks: no --float16)" if float16 else "float32"
    return (
        "normalized particle values exceed the range of "
        f"{dtype}: a particle's background (outside the circle) is almost constant"
    )


#: Workspaces of finished extractions, for the next one in this process (:func:`_kept_workspaces`).
_SPARE_WORKSPACES: list[pim.Workspace] = []
_SPARE_LOCK = threading.Lock()


@contextlib.contextmanager
def _kept_workspaces() -> Iterator[list[pim.Workspace]]:
    """The list of workspaces an extraction's threads take (:func:`_take_workspace`), kept when it ends.

    A process that extracts batch after batch (``cryoflow watch``) reuses their buffers instead
    of faulting in fresh memory for each batch (on a VM, memory touched for the first time can
    cost more than the work done in it). At most :data:`MAX_WORKERS` are kept."""
    taken: list[pim.Workspace] = []
    try:
        yield taken
    finally:
        with _SPARE_LOCK:
            _SPARE_WORKSPACES.extend(taken[: max(0, MAX_WORKERS - len(_SPARE_WORKSPACES))])


def _take_workspace(taken: list[pim.Workspace]) -> pim.Workspace:
    """A spare workspace of an earlier extraction, else a new one; recorded in ``taken``."""
    with _SPARE_LOCK:
        workspace = _SPARE_WORKSPACES.pop() if _SPARE_WORKSPACES else pim.Workspace()
        taken.append(workspace)
    return workspace


def _in_order(pool: ThreadPoolExecutor, fn, items: list, ahead: int, prepare=None):
    """``fn(item)`` for each item, run on ``pool`` with at most ``ahead`` in flight; results in order.

    ``prepare(item)``, if given, is called here as each item is submitted (``ahead`` items
    before its results are wanted). The first failure raises here and the items not yet
    started are cancelled."""
    pending: deque = deque()
    try:
        for item in items:
            if prepare is not None:
                prepare(item)
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def run_extract(
    micrographs: str | os.PathLike,
    coordinates: str | os.PathLike,
    out: str | os.PathLike,
    box: int | None = None,
    binning: float = 1.0,
    diameter: float | None = None,
    phase_flip: bool = False,
    ramp: bool = True,
    images: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    report: bool = True,
    allow_empty: bool = False,
    float16: bool = False,
) -> dict:
    """Extract every picked particle into ``out`` (see the module doc); return the summary.

    ``box``: output box in pixels (even); ``binning``: Fourier binning factor (>= 1);
    ``diameter``: particle diameter in Å (for the automatic box); ``phase_flip``: flip by the
    sign of the CTF; ``ramp``: subtract a fitted plane from the background before normalizing;
    ``seed``: seeds the cryoSPARC uids; ``allow_empty``: with no particle to extract, write an
    empty particles.star and particles.cs (optics of the micrographs' groups) instead of failing
    (a batch of a scattered extraction: ``cryoflow merge`` fails only when every batch is empty);
    ``float16``: stacks in 16-bit floats (MRC mode 12; half the disk and I/O, read by RELION 4+
    and cryoSPARC 4+, not by RELION 3.1). ``out`` must not exist or be empty.
    """
    from cryoflow.io import (
        StarTable,
        atomic_dir,
        find_image,
        mrc_writer,
        prefetch,
        read_info,
        read_micrograph,
        write_table,
    )
    from cryoflow.picking.cryosparc import particles_cs, write_cs
    from cryoflow.progress import progress

    star_path, out = Path(micrographs), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "output folder exists and is not empty; choose another --out (nothing was written)")
    device = torch.device(device)
    images = Path(images) if images else None
    mics = micrograph_table(star_path)
    coords = read_coordinates(coordinates)
    names = [str(n) for n in mics.table["rlnMicrographName"]]
    rows, unmatched = match_micrographs(names, coords.table["rlnMicrographName"])
    n_unmatched = int(sum(unmatched.values()))
    if len(coords.table) and n_unmatched == len(coords.table):
        example = next(iter(unmatched))
        raise CryoflowError(
            coords.source,
            f"no coordinate matches a micrograph of {star_path} (by name or base name), e.g. {example!r}",
        )
    if n_unmatched:
        print(
            f"cryoflow extract: warning: {n_unmatched} coordinate(s) on {len(unmatched)} micrograph(s) not in "
            f"{star_path} were skipped (e.g. {next(iter(unmatched))!r})",
            file=sys.stderr,
        )
    apix_rows = np.asarray(mics.pixel_size(), dtype=float)
    choice = choose_box(box, binning, diameter, coords.pick_summary, float(apix_rows.min()), coords.source)
    bg_radius = pim.BG_DIAMETER_FRACTION * choice.box / 2
    table = mics.table
    phase = table["rlnPhaseShift"].astype(float).to_numpy() if "rlnPhaseShift" in table else np.zeros(len(table))
    optics_rows = mics.optics_for_rows()
    group_rows = optics_rows["rlnOpticsGroup"].to_numpy().astype(int)

    t0 = time.perf_counter()
    per_mic, gallery, captions = [], [], []
    cut_jobs: list[_Work] = []  # the micrographs cut, in order
    average = torch.zeros(choice.box, choice.box, dtype=torch.float64)
    shapes: dict[str, tuple[int, int]] = {}
    bases: list[Path] = []
    used_groups: dict[int, float] = {}
    n_done = 0
    by_micrograph = pd.Series(np.arange(len(rows))).groupby(rows).indices  # micrograph row -> its picks' rows
    order = [i for i in range(len(names)) if i in by_micrograph]
    work: list[_Work] = []
    # columns as arrays: per-micrograph pandas lookups cost a millisecond each, in the timed part
    defocus_rows = table[["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]].to_numpy(float)
    pick_x = coords.table["rlnCoordinateX"].to_numpy(float)
    pick_y = coords.table["rlnCoordinateY"].to_numpy(float)
    for i in order:  # the checks first (headers only): a bad micrograph fails the step before any work
        name = names[i]
        picked = by_micrograph[i]
        record = {"micrograph": name, "picked": len(picked), "extracted": 0, "dropped_at_edges": 0, "skipped": ""}
        per_mic.append(record)
        defocus = [float(v) for v in defocus_rows[i]]
        if not np.isfinite(defocus).all():  # micassess may pass a micrograph it could not fit
            record["skipped"] = "no CTF fit (2D classification and 3D need each particle's defocus)"
            continue
        path = find_image(name, star_path, images, bases)
        if not path.is_file():
            raise CryoflowError(path, f"micrograph {name!r} of {star_path} not found (use --images DIR)")
        info = read_info(path)
        if len(info.shape) != 2 and not (len(info.shape) == 3 and info.shape[0] == 1):
            raise CryoflowError(path, f"holds {info.shape[0]} images; expected one micrograph")
        shape = tuple(int(s) for s in info.shape[-2:])
        shapes[name] = shape
        if choice.window > min(shape):
            raise CryoflowError(
                None,
                f"the box ({choice.box} px x bin {choice.binning:g} = {choice.window} micrograph px) is larger than "
                f"micrograph {name} ({shape[1]}x{shape[0]} px); choose a smaller --box or --bin",
            )
        x, y = torch.from_numpy(pick_x[picked]), torch.from_numpy(pick_y[picked])
        x0, y0 = pim.box_starts(x, choice.window), pim.box_starts(y, choice.window)
        keep = pim.inside(x0, y0, choice.window, shape)
        record["dropped_at_edges"] = int((~keep).sum())
        if keep.any():
            work.append(
                _Work(i, name, path, float(apix_rows[i]), defocus, record, picked[keep.numpy()], x[keep], y[keep])
            )

    take = max(1, GALLERY // max(len(order), 1))  # gallery images per micrograph
    np_dtype = np.float16 if float16 else np.float32
    local = threading.local()

    def cut(job: _Work) -> _Cut:
        """Read, cut and write one micrograph's particles (in a worker thread)."""
        workspace = getattr(local, "workspace", None)
        if workspace is None:  # large temporaries reused from micrograph to micrograph, one set per thread
            workspace = local.workspace = _take_workspace(taken)
        i, apix = job.index, job.apix
        image, _ = read_micrograph(job.path, apix, mmap=True, check_finite=False)  # the boxes are checked
        with warnings.catch_warnings():  # a read-only memory map (never written to here)
            warnings.simplefilter("ignore", UserWarning)
            image_t = torch.from_numpy(image).to(device)
        flip = None
        if phase_flip:  # one micrograph CTF: the same sign map for every particle (broadcast)
            opt = optics_rows.iloc[i]
            flip = pim.ctf_sign(
                choice.box,
                apix * choice.window / choice.box,  # the window's frequencies kept by binning
                *job.defocus,
                float(opt["rlnVoltage"]),
                float(opt["rlnSphericalAberration"]),
                float(opt["rlnAmplitudeContrast"]),
                float(phase[i]) if np.isfinite(phase[i]) else 0.0,
                device=device,
            )[0]
        n, pixel_size = len(job.x), apix * choice.window / choice.box
        # the report's average, summed as the chunks are made (float32: one micrograph's)
        total = torch.zeros(choice.box, choice.box, device=device)
        first = np.empty((min(take, n), choice.box, choice.box), np.float32)  # the report's gallery
        n_first = 0
        args = (choice.box, choice.window, bg_radius, flip, ramp)
        chunks = pim.particle_chunks(image_t, job.x, job.y, *args, workspace=workspace, source=job.path, total=total)
        shape = (n, choice.box, choice.box)
        with mrc_writer(tmp / stack_name(job.name), shape, pixel_size, stack=True, dtype=np_dtype) as writer:
            for chunk in chunks:  # each written and sampled while in cache
                images = chunk.images.cpu()
                if float16:  # the values as stored (rounded), in float32 for the statistics and the gallery
                    stored = workspace.get("half", images.shape, torch.float16).copy_(images)
                    images.copy_(stored)
                    writer.write(stored.numpy(), values=images.numpy())
                else:
                    writer.write(images.numpy(), sums=(chunk.sum, chunk.squares))
                if n_first < len(first):  # copies: the chunk's buffer is reused
                    more = min(len(first) - n_first, len(images))
                    first[n_first : n_first + more] = images[:more].numpy()
                    n_first += more
            if not all(map(math.isfinite, writer.statistics())):  # a NaN or Inf in a box, a float16 overflow
                raise CryoflowError(job.path, _not_finite(image, job, choice.window, float16))
        del image, image_t
        return _Cut(n, total.cpu(), first)

    # micrographs cut in parallel, one per thread (each thread's torch work on one core), results in order
    workers = max(1, min(torch.get_num_threads(), MAX_WORKERS, len(work))) if device.type == "cpu" else 1
    threads = torch.get_num_threads()
    with (
        _kept_workspaces() as taken,  # handed back after the pool's threads have ended
        atomic_dir(out) as tmp,
        ThreadPoolExecutor(workers, thread_name_prefix="extract") as pool,
    ):
        try:
            if workers > 1:
                torch.set_num_threads(1)
            for job, done in zip(
                work,
                progress(
                    _in_order(pool, cut, work, 2 * workers, lambda job: prefetch(job.path)),
                    desc="extract",
                    unit="mic",
                    total=len(work),
                ),
                strict=True,
            ):
                used_groups[int(group_rows[job.index])] = job.apix
                average += done.total
                n_done += done.n
                job.record["extracted"] = done.n
                if len(gallery) < GALLERY:
                    first = done.first[: GALLERY - len(gallery)]
                    gallery.extend(first)
                    captions.extend(f"{Path(job.name).stem} #{j + 1}" for j in range(len(first)))
                cut_jobs.append(job)
        finally:
            torch.set_num_threads(threads)
        particle_frames = [_particle_table(cut_jobs, table, group_rows, coords.table)] if cut_jobs else []
        seconds = time.perf_counter() - t0
        if not particle_frames and allow_empty:  # the optics of the micrographs' groups, no particle
            for g, apix in zip(optics_rows["rlnOpticsGroup"], apix_rows, strict=True):
                used_groups.setdefault(int(g), float(apix))
            ctf_columns = [c for c in CTF_COLUMNS + OPTIONAL_CTF if c in table or c == "rlnPhaseShift"]
            columns = ["rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", *ctf_columns]
            empty = {c: pd.Series(dtype=object if c.endswith("Name") else float) for c in columns}
            particle_frames.append(pd.DataFrame(empty | {"rlnOpticsGroup": pd.Series(dtype=int)}))
        if not particle_frames:
            raise CryoflowError(
                coords.source,
                f"no particle could be extracted ({sum(r['picked'] for r in per_mic)} picks; "
                f"{sum(r['dropped_at_edges'] for r in per_mic)} too close to an edge for a {choice.window} px window)",
            )
        particles = pd.concat(particle_frames, ignore_index=True)
        optics = _optics_out(mics, sorted(used_groups), used_groups, choice, phase_flip)
        write_table(tmp / "particles.star", StarTable(optics, particles, "particles"))
        write_cs(tmp / "particles.cs", particles_cs(particles, optics, shapes, seed=seed))
        summary = {
            "micrographs": len(order),
            "micrographs_with_particles": int(sum(1 for r in per_mic if r["extracted"])),
            "n_picked": int(sum(r["picked"] for r in per_mic)),
            "n_particles": len(particles),
            # what leaves the step, for the run's index: micrographs with particles, particles
            "stage": {
                "micrographs": int(sum(1 for r in per_mic if r["extracted"])),
                "particles": len(particles),
            },
            "dropped_at_edges": int(sum(r["dropped_at_edges"] for r in per_mic)),
            "skipped_no_ctf": int(sum(r["picked"] for r in per_mic if r["skipped"])),
            "unmatched_coordinates": n_unmatched,
            "unmatched_micrographs": unmatched,
            "box": choice.box,
            "window": choice.window,
            "bin": choice.binning,
            "box_rule": choice.reason,
            "diameter_A": choice.diameter_A,
            "diameter_source": choice.diameter_source,
            "pixel_size": float(optics["rlnImagePixelSize"].iloc[0]),
            "micrograph_pixel_size": float(optics["rlnMicrographOriginalPixelSize"].iloc[0]),
            "bg_radius_px": bg_radius,
            "ramp_removed": ramp,
            "phase_flipped": phase_flip,
            "dtype": "float16" if float16 else "float32",
            "seconds": seconds,
            "particles_per_second": len(particles) / max(seconds, 1e-9),
            "device": str(device),
            "per_micrograph": per_mic,
            "outputs": {"particles": "particles.star", "cryosparc": "particles.cs", "stacks": STACK_DIR},
        }
        if report:
            from cryoflow.picking.extract_report import write_report

            mean = (average / max(n_done, 1)).float().numpy()
            write_report(tmp, summary, gallery, captions, mean)
        else:
            from cryoflow.report.builder import write_summary

            write_summary(tmp / "summary.json", summary)
    return summary
