"""Pick particles on every micrograph of a micrographs STAR, choosing every parameter from the data.

Inputs: ``micrographs_good.star`` (micassess) or ``micrographs_ctf.star`` (ctf): optics +
micrographs with rlnMicrographName and the CTF (rlnDefocusU/V, rlnDefocusAngle; optional
rlnPhaseShift). Micrograph files are found as RELION finds them, else under ``images``.

The picker (:mod:`cryoflow.picking.filters`): CTF phase flip, 20 Å low-pass and a
centre-surround disk filter at the particle's size, scores in noise standard deviations;
peaks at least :data:`search.MIN_DISTANCE` diameters apart (duplicates; a peak on a stronger
one's flank, e.g. a particle touching a stronger one, only when it scores at least
:data:`search.FLANK_MIN_RELATIVE_SCORE` times the median pick, :mod:`cryoflow.picking.peaks`),
not within :data:`search.EDGE_MARGIN` diameters of the edge, not on contamination, carbon,
holes or thick ice (:mod:`cryoflow.picking.mask`), not scoring more than
:data:`search.MAX_RELATIVE_SCORE` times the median pick (ice crystals and dense
contaminants scatter far more than protein); diameter and threshold chosen from the data
(:mod:`cryoflow.picking.search`) unless given. With ``picker="cnn"`` (and ``auto``), every
candidate peak is then re-centred and re-scored by a small CNN trained positive-unlabelled on
this dataset's confident picks (:mod:`cryoflow.picking.cnn_pick`). Last, per-pick junk tests
(:mod:`cryoflow.picking.pick_junk`) reject picks whose density is an outlier against the
median pick's: light (broken particles), heavy (aggregates, ice chips), dense (contaminants),
each counted under its reason in ``summary.json`` (``junk_tests``).

Outputs in ``out`` (built in a temporary folder and renamed when complete):

- ``coordinates/<micrograph name without extension>_autopick.star``: one table
  (rlnCoordinateX/Y in pixels of the micrograph as stored, x the column, y the row;
  rlnAutopickFigureOfMerit, the score in noise standard deviations), as RELION's AutoPick
  writes them, so RELION's Extract and cryoSPARC's import read them;
- ``coordinates.star``: block ``coordinate_files`` (rlnMicrographName,
  rlnMicrographCoordinates relative to the pick folder);
- ``self_template.mrcs``: for elongated particles, the oriented template they were picked
  with (give it as ``templates`` with ``filter_diameter`` to pick more micrographs the same way);
- ``picker_state.pt`` (when a CNN was trained or a self-template made): the network's weights
  and the template, which with ``summary.json``'s ``fixed`` record let a later run pick other
  micrographs exactly as this run would have (``parameters``, ``cryoflow pick --parameters``);
- ``summary.json``: the chosen diameter (``diameter_A``, the particle's largest extent, which
  sets extraction's box; ``filter_diameter_A``, the size the filter and minimum distance use:
  the same for a globular particle, nearer the width for an elongated one), threshold,
  distances and masks, with the evidence
  (diameter response curve, its maxima tried and whether the one taken is confirmed by
  enough strong picks, picks and expected noise picks above each threshold), and
  ``fixed``: every decision taken over the whole set at full precision (diameter, filter
  diameter, threshold, the median pick's score that sets the ceiling and the flank floor, the
  CNN's logit threshold, the junk tests' spreads and medians);
- ``report.html`` + ``figures/``.

Given ``parameters`` (an earlier pick folder, e.g. a parameter search on a sample of the set),
nothing is decided over the micrographs given: each is picked with that folder's ``fixed``
decisions and ``picker_state.pt``, so its picks do not depend on which other micrographs
are picked with it. That is how the workflows scatter picking over batches of micrographs
(:mod:`cryoflow.batches`): one search, then one job per batch; the batches' picks equal those
of one job over all of them, and, when the search ran on the whole set, the search's own.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch

from cryoflow.errors import CryoflowError
from cryoflow.picking import search
from cryoflow.picking.filters import CtfParams, bin_factor, prepare, score_map
from cryoflow.picking.mask import exclusion_mask
from cryoflow.picking.peaks import find_peaks

COORDINATE_DIR = "coordinates"
COORDINATES_STAR = "coordinates.star"
#: the oriented template made for elongated particles, written for later runs (--templates)
SELF_TEMPLATE = "self_template.mrcs"
#: what a later run needs beyond summary.json's ``fixed`` to pick exactly as this one (``parameters``):
#: the CNN picker's weights and the self-template, at full precision (torch.save of a dict of tensors)
PICKER_STATE = "picker_state.pt"
#: micrographs (evenly spread over the set) used for the diameter search
SEARCH_MICROGRAPHS = 4
#: micrographs shown with their picks in the report
OVERLAYS = 6
#: run the per-pick junk tests (:mod:`cryoflow.picking.pick_junk`) on the picks
JUNK_TESTS = True
#: the pickers of ``picker``, and what ``auto`` runs (measured with ``cryoflow bench pick``)
PICKERS = ("auto", "blob", "cnn")
AUTO_PICKER = "cnn"
AUTO_WHY = (
    "auto: the CNN picker (cryoflow bench pick, diameter searched: mean F1 0.982 against 0.933 for the filter "
    "alone, min 0.974 against 0.838; junk 1.2% against 2.3% of picks)"
)


@dataclass
class MicrographPicks:
    """Candidate picks of one micrograph (positions in micrograph pixels [y, x], scores)."""

    name: str
    yx: np.ndarray
    scores: np.ndarray
    null: np.ndarray
    excluded: dict[str, float]
    shape: tuple[int, int]
    pixel_size: float
    thumbnail: np.ndarray | None = None
    thumbnail_bin: int = 1
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: the density image (float16, :func:`cnn.density_image`: the CNN's input before clipping; the
    #: junk tests measure it) and its pixels per micrograph pixel; for the CNN picker, peaks inside
    #: the exclusion mask (micrograph px) and the picks' logits
    density: torch.Tensor | None = None
    cnn_factor: float = 1.0
    excluded_yx: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    cnn_scores: np.ndarray | None = None
    #: per candidate: True for a peak on a stronger peak's flank (:func:`peaks.find_peaks`)
    flank: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: per candidate: why the junk tests rejected it ("" when they did not, :mod:`pick_junk`)
    junk: np.ndarray | None = None

    @property
    def cnn_image(self) -> torch.Tensor | None:
        """The CNN's input (:func:`cnn.cnn_input`): the density image clipped."""
        from cryoflow.picking.cnn import CLIP

        return None if self.density is None else self.density.clamp(-CLIP, CLIP)

    def to_density(self, yx: np.ndarray) -> np.ndarray:
        """Micrograph pixel positions ``(n, 2)`` to pixels of the density image."""
        return (np.asarray(yx, dtype=np.float64).reshape(-1, 2) + 0.5) * self.cnn_factor - 0.5

    def select(self, which: np.ndarray) -> None:
        """Keep only the candidates ``which`` (bool ``(n,)``) in every per-candidate array."""
        self.yx, self.scores, self.flank = self.yx[which], self.scores[which], self.flank[which]
        self.extra = {k: np.asarray(v)[which] for k, v in self.extra.items()}
        if len(self.kept) == len(which):
            self.kept = self.kept[which]
        if self.cnn_scores is not None:
            self.cnn_scores = self.cnn_scores[which]


def coordinate_file(name: str) -> str:
    """``coordinates/<name without extension>_autopick.star`` (a relative, POSIX path)."""
    pure = PurePosixPath(str(name).replace("\\", "/"))
    parts = [p for p in pure.parts if p not in ("/", "..", ".")]
    stem = PurePosixPath(*parts).with_suffix("") if parts else PurePosixPath("micrograph")
    return f"{COORDINATE_DIR}/{stem}_autopick.star"


def ctf_params(row: pd.Series, optics: pd.Series) -> CtfParams | None:
    """The CTF of one micrograph row (None when the row has no fit)."""
    values = [float(row.get(c, np.nan)) for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")]
    if not np.isfinite(values).all():
        return None
    phase = float(row.get("rlnPhaseShift", 0.0))
    return CtfParams(
        *values,
        voltage=float(optics["rlnVoltage"]),
        cs=float(optics["rlnSphericalAberration"]),
        amplitude_contrast=float(optics["rlnAmplitudeContrast"]),
        phase_shift=phase if np.isfinite(phase) else 0.0,
    )


class _Micrographs:
    """The micrographs of a STAR file: names, pixel sizes, CTFs, and their images on demand."""

    def __init__(self, star_path: Path, images: Path | None, loaded: dict[str, np.ndarray] | None = None):
        from cryoflow.picking.extract import micrograph_table

        self.star_path = star_path
        self.images = images
        self.loaded = loaded or {}
        self.table = micrograph_table(star_path)
        self.names = [str(n) for n in self.table.table["rlnMicrographName"]]
        self.pixel_sizes = np.asarray(self.table.pixel_size(), dtype=float)
        self.optics = self.table.optics_for_rows()
        self._bases: list[Path] = []

    def __len__(self) -> int:
        return len(self.names)

    def ctf(self, i: int) -> CtfParams | None:
        return ctf_params(self.table.table.iloc[i], self.optics.iloc[i])

    def image(self, i: int) -> np.ndarray:
        from cryoflow.io import find_image, read_micrograph

        path = find_image(self.names[i], self.star_path, self.images, self._bases)
        if not path.is_file():
            raise CryoflowError(path, f"micrograph {self.names[i]!r} of {self.star_path} not found (use --images DIR)")
        image = self.loaded.get(os.path.realpath(path))
        if image is None:
            image, _ = read_micrograph(path, pixel_size=float(self.pixel_sizes[i]))
        return image


def _prepare(mics: _Micrographs, i: int, binning: int, device) -> tuple:
    image = mics.image(i)
    with warnings.catch_warnings():  # read-only memory map, never written
        warnings.simplefilter("ignore", UserWarning)
        prep = prepare(image, float(mics.pixel_sizes[i]), binning, mics.ctf(i), device=device)
    return prep, image.shape


class _BinnedCache:
    """Micrograph ``i`` prepared at any bin factor, each computed once."""

    def __init__(self, mics: _Micrographs, i: int, device):
        self.image, self.apix, self.ctf, self.device = mics.image(i), float(mics.pixel_sizes[i]), mics.ctf(i), device
        self.cache: dict = {}

    def __call__(self, binning: int):
        if binning not in self.cache:
            with warnings.catch_warnings():  # read-only memory map, never written
                warnings.simplefilter("ignore", UserWarning)
                self.cache[binning] = prepare(self.image, self.apix, binning, self.ctf, device=self.device)
        return self.cache[binning]


def search_diameter(mics: _Micrographs, device="cpu", n: int = SEARCH_MICROGRAPHS) -> tuple:
    """The particle diameter from the scale-space response of up to ``n`` micrographs, and
    the strong picks' cores measured on them: ``(DiameterSearch, Cores)``."""
    picks = np.unique(np.linspace(0, len(mics) - 1, min(n, len(mics))).round().astype(int))
    cached = [_BinnedCache(mics, int(i), device) for i in picks]
    curves = [search.scale_response(c, c.apix) for c in cached]
    try:
        result = search.choose_diameter(curves)
    except ValueError as exc:
        raise CryoflowError(mics.star_path, f"diameter search failed: {exc}; give --diameter") from None
    tried = []
    for sphere in result.candidates[: search.MAX_CANDIDATES]:  # the curve's maxima, highest first
        cores = search.Cores()
        for c in cached:
            cores.extend(search.measure_cores(c(bin_factor(c.apix, sphere)), sphere))
        tried.append((sphere, cores))
        if cores.strong >= search.CORE_MIN_COUNT:  # a filter matched to the particles finds many strong picks
            result.confirmed = True
            break
    else:  # no maximum is: the highest is kept
        sphere, cores = tried[0]
        print(
            f"cryoflow pick: warning: the diameter search found {sphere:g} Å, but its filter finds only "
            f"{cores.strong} strong picks (fewer than {search.CORE_MIN_COUNT}; few particles?); check the search "
            "curve in the report or give --diameter",
            file=sys.stderr,
        )
    result.sphere_diameter = result.diameter = sphere
    result.core_axes, result.elongation = cores.long, cores.elongation
    refined = search.diameter_from_cores(result.core_axes, result.elongation)
    if refined is not None:
        result.diameter = refined
    return result, cores


def candidates(
    mics: _Micrographs,
    i: int,
    diameter: float,
    device="cpu",
    thumbnail: bool = False,
    bank=None,
    cnn_diameter: float | None = None,
    cnn_negatives: bool = False,
) -> MicrographPicks:
    """Every peak above :data:`search.MIN_THRESHOLD` on micrograph ``i``, with its noise null and mask.

    ``bank``: a :class:`templates.TemplateBank` to score with instead of the blob filter;
    ``cnn_diameter``: the particle diameter (Å) for which to keep the density image (the CNN
    picker's input and what the junk tests measure); ``cnn_negatives``: also keep the peaks
    inside the exclusion mask (the CNN's negatives).
    """
    t0 = time.perf_counter()
    binning = bin_factor(float(mics.pixel_sizes[i]), diameter)
    prep, shape = _prepare(mics, i, binning, device)
    d_px = diameter / prep.pixel_size
    distance, margin = search.MIN_DISTANCE * d_px, search.EDGE_MARGIN * d_px
    allowed, excluded = exclusion_mask(prep, diameter)
    if bank is None:
        score = lambda p: score_map(p, diameter)  # noqa: E731
        z, best = score(prep), None
    else:
        score = lambda p: bank.score(p)[0]  # noqa: E731
        z, best = bank.score(prep)
    yx, scores, flank = find_peaks(z, distance, margin, floor=search.MIN_THRESHOLD, mask=allowed, flanks=True)
    density, cnn_factor, excluded_yx = None, 1.0, np.zeros((0, 2))
    if cnn_diameter is not None:
        from cryoflow.picking.cnn import density_image

        image, scale = density_image(prep, cnn_diameter)
        density, cnn_factor = image.half().cpu(), scale / binning
    if cnn_negatives:
        peaks, _ = find_peaks(z, distance, margin, floor=search.MIN_THRESHOLD, mask=~allowed)
        excluded_yx = prep.to_micrograph(peaks)
    null = search.null_peaks(prep, score, distance, margin, seed=i)
    null = null[null > search.MIN_THRESHOLD]
    extra = {}
    if best is not None:
        index = best[
            torch.as_tensor(np.round(yx[:, 0]), dtype=torch.long), torch.as_tensor(np.round(yx[:, 1]), dtype=torch.long)
        ]
        classes, angles = bank.class_and_angle(index.cpu().numpy())
        extra = {"rlnClassNumber": classes, "rlnAnglePsi": angles}
    return MicrographPicks(
        name=mics.names[i],
        yx=prep.to_micrograph(yx),
        scores=scores,
        null=null,
        excluded=excluded,
        shape=tuple(int(s) for s in shape),
        pixel_size=float(mics.pixel_sizes[i]),
        thumbnail=prep.image.cpu().numpy() if thumbnail else None,
        thumbnail_bin=binning,
        seconds=time.perf_counter() - t0,
        extra=extra,
        density=density,
        cnn_factor=cnn_factor,
        excluded_yx=excluded_yx,
        flank=flank,
    )


def _coordinate_table(p: MicrographPicks) -> pd.DataFrame:
    yx = p.yx[p.kept]
    table = pd.DataFrame(
        {
            "rlnCoordinateX": np.round(yx[:, 1], 2),
            "rlnCoordinateY": np.round(yx[:, 0], 2),
            "rlnAutopickFigureOfMerit": np.round(p.scores[p.kept], 3),
        }
    )
    if p.cnn_scores is not None:  # the CNN's logit is the figure of merit; the filter's score is kept beside it
        table["rlnAutopickFigureOfMerit"] = np.round(p.cnn_scores[p.kept], 3)
        table["cfBlobScore"] = np.round(p.scores[p.kept], 3)
    for column, values in p.extra.items():
        table[column] = np.asarray(values)[p.kept]
    return table


def read_parameters(folder: str | os.PathLike) -> tuple[dict, dict]:
    """The ``fixed`` record of a pick folder's summary.json and its :data:`PICKER_STATE`
    (``{"cnn": PickerNet or None, "template": tensor or None, "template_pixel_size": Å}``)."""
    import json

    folder = Path(folder)
    path = folder / "summary.json"
    if not path.is_file():
        raise CryoflowError(folder, "not a pick folder (no summary.json); --parameters takes a pick step's folder")
    try:
        fixed = json.loads(path.read_text(encoding="utf-8")).get("fixed")
    except json.JSONDecodeError:
        raise CryoflowError(path, "is not valid JSON") from None
    if not fixed:
        raise CryoflowError(path, "has no 'fixed' record (made by an older cryoflow pick); pick that folder again")
    state: dict = {}
    if fixed.get("state"):
        if not (folder / fixed["state"]).is_file():
            raise CryoflowError(folder / fixed["state"], "missing: the pick folder is incomplete")
        state = torch.load(folder / fixed["state"], map_location="cpu", weights_only=True)
        if state.get("cnn") is not None:
            from cryoflow.picking.cnn import WIDTH
            from cryoflow.picking.cnn_net import PickerNet

            net = PickerNet(WIDTH)
            net.load_state_dict(state["cnn"])
            state["cnn"] = net.eval()
    return fixed, state


def _fixed_training(fixed: dict, parameters) -> object:
    """The CNN's training record of a run with ``parameters``: trained there, not here."""
    from cryoflow.picking.cnn import Training

    cnn_fixed = fixed["cnn"]
    return Training(
        trained=bool(cnn_fixed["trained"]),
        reason=cnn_fixed["reason"],
        positive_source=f"the network of {Path(parameters).name} (not trained here)",
    )


def run_pick(
    micrographs: str | os.PathLike,
    out: str | os.PathLike,
    diameter: float | None = None,
    threshold: float | None = None,
    images: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    report: bool = True,
    templates: str | os.PathLike | None = None,
    template_classes: list[int] | None = None,
    filter_diameter: float | None = None,
    picker: str = "auto",
    train_coordinates: str | os.PathLike | None = None,
    seed: int = 0,
    loaded: dict[str, np.ndarray] | None = None,
    parameters: str | os.PathLike | None = None,
) -> dict:
    """Pick every micrograph of ``micrographs`` into ``out`` (see the module doc); return the summary.

    ``diameter``: particle diameter in Å (searched when None); ``threshold``: score threshold
    in noise standard deviations (chosen from the data when None); ``templates``: class
    averages (a ``.mrcs`` stack or a classify2d folder) to pick by template matching instead
    of the blob filter, ``template_classes`` the 1-based classes of it to use;
    ``filter_diameter``: the filter's size in Å when it differs from ``diameter`` (an earlier
    run's ``filter_diameter_A``, e.g. for elongated particles; with its ``self_template.mrcs``
    as ``templates`` a later batch picks exactly as the first); ``picker``: ``blob`` (the
    filter's or templates' picks), ``cnn`` (those candidates re-scored by a CNN trained on
    the fly, :mod:`cryoflow.picking.cnn_pick`) or ``auto`` (:data:`AUTO_PICKER`);
    ``train_coordinates``: a particles STAR whose particles are the CNN's positives
    (e.g. classassess's particles_selected.star); ``seed``: the CNN's training seed;
    ``loaded``: micrographs already read (``os.path.realpath`` of the file -> image, as
    ``run_ctf`` fills it), used instead of reading those files again; ``parameters``: a pick
    folder whose ``fixed`` decisions (and ``picker_state.pt``) are used instead of deciding
    over these micrographs (see the module doc; then no ``diameter``, ``threshold``,
    ``filter_diameter`` or ``train_coordinates``, and ``templates`` only as that run had them).
    ``out`` must not exist or be empty.
    """
    from cryoflow.io import atomic_dir, write_blocks
    from cryoflow.progress import progress

    star_path, out = Path(micrographs), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "output folder exists and is not empty; choose another --out (nothing was written)")
    if diameter is not None and not (10 <= diameter <= 2000):
        raise CryoflowError(None, f"--diameter must be a particle diameter in Å between 10 and 2000, got {diameter:g}")
    if threshold is not None and not (0 < threshold < 1000):
        raise CryoflowError(None, f"--threshold must be a positive score (noise standard deviations), got {threshold}")
    if picker not in PICKERS:
        raise CryoflowError(None, f"--picker must be one of {', '.join(PICKERS)}, not {picker!r}")
    if train_coordinates is not None and picker == "blob":
        raise CryoflowError(None, "--train-coordinates trains the CNN picker; it needs --picker cnn or auto")
    if train_coordinates is not None and not Path(train_coordinates).is_file():
        raise CryoflowError(train_coordinates, "training coordinates STAR not found")
    use_cnn = (AUTO_PICKER if picker == "auto" else picker) == "cnn"
    device = torch.device(device)
    fixed, state = None, {}
    if parameters is not None:
        if diameter is not None or threshold is not None or filter_diameter is not None or train_coordinates:
            raise CryoflowError(None, "--parameters fixes diameter, threshold and the CNN; give none of them with it")
        fixed, state = read_parameters(parameters)
        diameter, filter_diameter, threshold = fixed["diameter_A"], fixed["filter_diameter_A"], fixed["threshold"]
        use_cnn = fixed["cnn"] is not None
        if (fixed["templates"] is None) != (templates is None):
            raise CryoflowError(
                parameters, "--templates must be given exactly when the run that fixed the parameters had them"
            )
    mics = _Micrographs(star_path, Path(images) if images else None, loaded)
    bank, self_templated = None, False
    if fixed is not None and fixed["self_template"]:
        from cryoflow.picking.templates import TemplateBank

        bank = TemplateBank(state["template"].numpy(), state["template_pixel_size"])
        self_templated = True
    if templates is not None:
        from cryoflow.picking.templates import TemplateBank, read_templates

        stack, template_pixel = read_templates(templates, template_classes)
        bank = TemplateBank(stack, template_pixel, classes=template_classes)  # mask set once the diameter is known
    t0 = time.perf_counter()

    evidence = None
    if filter_diameter is not None and diameter is None:
        raise CryoflowError(None, "a filter diameter needs the particle diameter too")
    filter_diameter = filter_diameter or diameter
    if diameter is None:
        evidence, cores = search_diameter(mics, device)
        diameter = evidence.diameter
        # the filter matches the particle's rotationally averaged size, which for an elongated
        # particle is nearer its width than its length (the length sets the box)
        filter_diameter = min(evidence.sphere_diameter, diameter)
        if bank is None and cores.elongation >= search.ELONGATED and len(cores.long) >= search.CORE_MIN_COUNT:
            # elongated particles: a round filter splits them; match an oriented template made of their own cores
            from cryoflow.picking.templates import TemplateBank

            bank = TemplateBank(search.self_template(cores)[None], cores.pixel_size)
            self_templated = True
    if bank is not None:
        from cryoflow.picking.templates import MASK_FACTOR

        bank.mask_diameter = MASK_FACTOR * diameter
    t_search = time.perf_counter() - t0

    overlay = set(np.linspace(0, len(mics) - 1, min(OVERLAYS, len(mics))).round().astype(int).tolist())
    picks = [
        candidates(
            mics,
            i,
            filter_diameter,
            device,
            thumbnail=i in overlay,
            bank=bank,
            cnn_diameter=diameter,
            cnn_negatives=use_cnn,
        )
        for i in progress(range(len(mics)), desc="pick", unit="mic")
    ]
    # the threshold and the median pick from the peaks that are the maximum of their
    # neighbourhood (as the noise null's); peaks on a stronger one's flank join when they score like particles
    scores = np.concatenate([p.scores[~p.flank] for p in picks]) if picks else np.zeros(0)
    null = np.concatenate([p.null for p in picks]) if picks else np.zeros(0)
    choice = search.choose_threshold(scores, null)
    used = float(threshold) if threshold is not None else choice.threshold
    above = scores[scores >= used]
    median = float(np.median(above)) if len(above) else np.inf
    if fixed is not None:  # the median pick of the run that fixed the parameters
        median = np.inf if fixed["median_score"] is None else float(fixed["median_score"])
    ceiling = search.MAX_RELATIVE_SCORE * median
    flank_floor = max(used, search.FLANK_MIN_RELATIVE_SCORE * median)
    flank_dropped = 0
    for p in picks:
        weak_flank = p.flank & (p.scores < flank_floor)
        flank_dropped += int(weak_flank.sum())
        p.select(~weak_flank)
        p.kept = (p.scores >= used) & (p.scores <= ceiling)
    too_strong = int(sum(int(((p.scores >= used) & (p.scores > ceiling)).sum()) for p in picks))
    blob_picks = int(sum(int(p.kept.sum()) for p in picks))
    training = None
    if use_cnn and picks:
        from cryoflow.picking.cnn_pick import rescore

        given = None
        if fixed is not None:
            given = (state.get("cnn"), fixed["cnn"]["logit_threshold"], _fixed_training(fixed, parameters))
            if given[0] is not None:
                given[0].to(device)
        training = rescore(
            picks, used, ceiling, seed=seed, device=device, train_coordinates=train_coordinates, fixed=given
        )
    cnn_ran = training is not None and training.trained
    from cryoflow.picking.pick_junk import reject_junk

    run_junk = JUNK_TESTS if fixed is None else fixed["junk"] is not None
    junk = reject_junk(picks, fixed["junk"] if fixed is not None else None) if run_junk else None

    summary = {
        "micrographs": len(mics),
        "particles": int(sum(int(p.kept.sum()) for p in picks)),
        # what leaves the step, for the run's index: micrographs with at least one pick, picks
        "stage": {
            "micrographs": int(sum(1 for p in picks if p.kept.any())),
            "particles": int(sum(int(p.kept.sum()) for p in picks)),
        },
        "diameter_A": float(diameter),
        "diameter_source": "searched" if evidence else ("fixed" if fixed is not None else "given"),
        "filter_diameter_A": float(filter_diameter),
        "picker": "self-template" if self_templated else ("templates" if bank is not None else "blob"),
        "picker_choice": {
            "requested": picker,
            "ran": "cnn" if cnn_ran else "blob",
            "why": (AUTO_WHY if picker == "auto" else "given")
            + ("" if cnn_ran or not use_cnn else f"; the CNN was not trained: {training.reason}"),
        },
        "cnn": (
            training.to_dict()
            | {
                "blob_picks": blob_picks,
                "kept": int(sum(int(p.kept.sum()) for p in picks)),
                "seed": seed,
            }
        )
        if training is not None
        else None,
        "templates": {
            "source": f"the strong picks' cores, aligned ({SELF_TEMPLATE})" if self_templated else str(templates),
            "count": len(bank.templates),
            "rotations": len(bank.angles),
        }
        if bank is not None
        else None,
        "threshold": used,
        "threshold_source": "fixed" if fixed is not None else ("given" if threshold is not None else "chosen"),
        "parameters_from": str(parameters) if parameters is not None else None,
        "ceiling": round(ceiling, 3) if np.isfinite(ceiling) else None,
        "rejected_too_strong": too_strong,
        "junk_tests": junk.to_dict() if junk is not None else None,
        "flank_peaks": {
            "rule": f"a peak on a stronger peak's flank (within the minimum distance along both axes: touching "
            f"particles, or a bump between particles) is a candidate when it scores at least "
            f"{search.FLANK_MIN_RELATIVE_SCORE:g} x the median pick",
            "floor": round(flank_floor, 3) if np.isfinite(flank_floor) else None,
            "kept": int(sum(int(p.flank.sum()) for p in picks)),
            "dropped": flank_dropped,
        },
        "min_distance_A": round(search.MIN_DISTANCE * filter_diameter, 1),
        "edge_margin_A": round(search.EDGE_MARGIN * filter_diameter, 1),
        "picks_per_micrograph": {p.name: int(p.kept.sum()) for p in picks},
        "excluded_fraction": {p.name: round(p.excluded["dark"] + p.excluded["bright"], 4) for p in picks},
        "threshold_search": choice.to_dict(),
        "diameter_search": evidence.to_dict() if evidence else None,
        "seconds": {
            "diameter_search": round(t_search, 3),
            "per_micrograph_median": round(float(np.median([p.seconds for p in picks])), 3) if picks else 0.0,
            "total": round(time.perf_counter() - t0, 3),
        },
        # every decision taken over the set, at full precision: what --parameters reads
        "fixed": {
            "diameter_A": float(diameter),
            "filter_diameter_A": float(filter_diameter),
            "threshold": used,
            "median_score": median if np.isfinite(median) else None,
            "self_template": self_templated,
            "templates": None if templates is None else str(templates),
            "cnn": {
                "trained": cnn_ran,
                "logit_threshold": float(training.threshold) if cnn_ran else None,
                "reason": training.reason,
            }
            if training is not None
            else None,
            "junk": junk.fixed() if junk is not None else None,
            "state": PICKER_STATE if cnn_ran or self_templated else None,
        },
    }
    with atomic_dir(out) as tmp:
        index = []
        for p in picks:
            rel = coordinate_file(p.name)
            write_blocks(tmp / rel, {"": _coordinate_table(p)})
            index.append({"rlnMicrographName": p.name, "rlnMicrographCoordinates": rel})
        write_blocks(tmp / COORDINATES_STAR, {"coordinate_files": pd.DataFrame(index)})
        if self_templated:
            from cryoflow.io import write_mrc

            write_mrc(tmp / SELF_TEMPLATE, bank.templates.numpy(), bank.pixel_size)
        if cnn_ran or self_templated:
            torch.save(
                {
                    "cnn": {k: v.cpu() for k, v in training.net.state_dict().items()} if cnn_ran else None,
                    "template": bank.templates.cpu() if self_templated else None,
                    "template_pixel_size": bank.pixel_size if self_templated else None,
                },
                tmp / PICKER_STATE,
            )
        if report:
            from cryoflow.picking.pick_report import write_pick_report

            write_pick_report(tmp, summary, picks, evidence, choice)
        else:
            from cryoflow.report.builder import write_summary

            write_summary(tmp / "summary.json", summary)
    return summary
