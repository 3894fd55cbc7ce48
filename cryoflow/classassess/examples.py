"""Labelled class averages made by the project: simulated stacks through ``classify2d``.

:func:`simulate_classified` draws one dataset from :class:`Ranges` (species, pixel size,
junk share and kinds, SNR, views, number of classes), simulates its particle stack with
the truth (:func:`cryoflow.simulate.simulate_stack`), classifies it with
:func:`cryoflow.classify2d.run_classify2d` and keeps the classification folder (the
particle images are deleted; ``particles.star`` keeps the truth columns).

:func:`class_truth` labels each class from that truth: the share of its particles that
are junk (``cfIsJunk``); a class is good when most of its particles are true particles
(junk share < 0.5, the rule of :func:`cryoflow.classify2d.truth.score_classes`).

:func:`collect` builds (or extends) a cache folder of such datasets; training and the
benchmark read the folders back through the same reader as prediction.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.classassess.inputs import ClassSet

GOOD_BELOW_JUNK = 0.5


@dataclass(frozen=True)
class Ranges:
    """Parameter ranges of simulated datasets (uniform unless said otherwise)."""

    n: tuple[int, int] = (1200, 3000)
    classes: tuple[int, int] = (8, 36)
    box: int = 64
    pixel_size: tuple[float, float] = (1.8, 3.6)
    species: tuple[int, int] = (1, 3)
    diameter_fraction: tuple[float, float] = (0.45, 0.8)  # of the box's field of view
    reference_probability: float = 0.3  # chance that PDB 7DDO is one of the species
    junk_fraction: tuple[float, float] = (0.1, 0.5)
    snr_low: tuple[float, float] = (0.02, 0.05)
    snr_span: tuple[float, float] = (0.02, 0.06)
    views: tuple = (3, 5, 8, None)
    species_seed_offset: int = 0


TRAIN = Ranges()
# held out: other species seeds, other pixel sizes and box, 30% junk as in the target
HELD_OUT = Ranges(
    n=(3000, 4000),
    classes=(20, 30),
    box=72,
    pixel_size=(2.0, 3.0),
    junk_fraction=(0.3, 0.3),
    species_seed_offset=7_000_000,
)


def draw(ranges: Ranges, seed: int) -> dict:
    """The parameters of dataset ``seed`` (a plain dict, stored beside the result)."""
    rng = np.random.default_rng(seed)
    u = lambda r: float(rng.uniform(*r))  # noqa: E731
    apix = u(ranges.pixel_size)
    field = ranges.box * apix
    n_species = int(rng.integers(ranges.species[0], ranges.species[1] + 1))
    species = []
    for i in range(n_species):
        if i == 0 and rng.random() < ranges.reference_probability:
            species.append({"shape": "7DDO"})
        else:
            species.append(
                {
                    "shape": str(rng.choice(["globular", "elongated", "ring", "multimer"])),
                    "diameter": round(u(ranges.diameter_fraction) * field, 1),
                    "seed": int(ranges.species_seed_offset + seed * 10 + i),
                }
            )
    kinds = rng.dirichlet(np.ones(5))
    low = u(ranges.snr_low)
    n = int(rng.integers(ranges.n[0], ranges.n[1] + 1))
    views = ranges.views[int(rng.integers(len(ranges.views)))]
    return {
        "seed": int(seed),
        "n": n,
        "classes": int(rng.integers(ranges.classes[0], ranges.classes[1] + 1)),
        "box": ranges.box,
        "pixel_size": round(apix, 3),
        "species": species,
        "junk_fraction": round(u(ranges.junk_fraction), 3),
        "junk_kinds": dict(
            zip(("noise", "blob", "ice", "offcentre", "aggregate"), kinds.round(3).tolist(), strict=True)
        ),
        "snr": (round(low, 4), round(low + u(ranges.snr_span), 4)),
        "views": views,
    }


def _species(params: dict) -> list:
    from cryoflow.simulate.structures import procedural_species, reference_species

    out = []
    for s in params["species"]:
        if s["shape"] == "7DDO":
            out.append(reference_species(params["pixel_size"], box=params["box"]))
        else:
            out.append(
                procedural_species(s["diameter"], params["pixel_size"], s["seed"], s["shape"], box=params["box"])
            )
    return out


def _simulate(stack_dir: Path, params: dict):
    from cryoflow.simulate.stack import simulate_stack

    return simulate_stack(
        stack_dir,
        n=params["n"],
        box=params["box"],
        pixel_size=params["pixel_size"],
        species=_species(params),
        views_per_species=params["views"],
        junk_fraction=params["junk_fraction"],
        junk_kinds=params["junk_kinds"],
        snr=tuple(params["snr"]),
        seed=params["seed"],
    )


def restore_images(folder: str | os.PathLike) -> Path:
    """Put the particle images of a dataset made by :func:`simulate_classified` back (the
    simulator is deterministic: the same parameters write the same bytes); returns the stack folder."""
    import json

    folder = Path(folder)
    stack_dir = folder / "stack"
    if not (stack_dir / "Particles").is_dir():
        params = json.loads((folder / "params.json").read_text())
        params["snr"] = tuple(params["snr"])
        tmp = folder / "restore"
        shutil.rmtree(tmp, ignore_errors=True)
        _simulate(tmp, params)
        (tmp / "Particles").rename(stack_dir / "Particles")
        shutil.rmtree(tmp)
    return stack_dir


def simulate_classified(folder: str | os.PathLike, params: dict, log=None) -> Path:
    """Simulate the dataset ``params`` (see :func:`draw`) and classify it; returns the classify2d folder."""
    import json

    from cryoflow.classify2d.run import Settings, run_classify2d

    folder = Path(folder)
    stack_dir = folder / "stack"
    c2d = folder / "classify2d"
    if (c2d / "model.star").is_file():
        return c2d
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params, indent=1))
    _simulate(stack_dir, params)
    settings = Settings(classes=params["classes"], seed=params["seed"])
    run_classify2d(stack_dir / "particles.star", c2d, settings, log=log or (lambda *a, **k: None))
    shutil.rmtree(stack_dir / "Particles", ignore_errors=True)
    return c2d


def class_truth(cs: ClassSet) -> pd.DataFrame:
    """Per class: ``junk`` (share of junk particles), ``good`` (junk < 0.5), ``particles``."""
    if cs.particles is None or "cfIsJunk" not in cs.particles.table:
        raise ValueError(f"{cs.path}: no truth columns (cfIsJunk) in the particles")
    t = cs.particles.table
    k = t["rlnClassNumber"].to_numpy(int)
    junk = t["cfIsJunk"].to_numpy(float)
    n = np.bincount(k, minlength=len(cs) + 1)[1:]
    share = np.bincount(k, weights=junk, minlength=len(cs) + 1)[1:] / np.maximum(n, 1)
    share = np.where(n > 0, share, 1.0)
    return pd.DataFrame(
        {"class": np.arange(1, len(cs) + 1), "particles": n, "junk": share, "good": share < GOOD_BELOW_JUNK}
    )


def collect(cache: str | os.PathLike, count: int, ranges: Ranges = TRAIN, first_seed: int = 0, log=print) -> list[Path]:
    """Make sure ``cache/set_<seed>/classify2d`` exists for ``count`` datasets; returns the folders."""
    import time

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    folders = []
    for seed in range(first_seed, first_seed + count):
        t0 = time.perf_counter()
        params = draw(ranges, seed)
        done = (cache / f"set_{seed:04d}" / "classify2d" / "model.star").is_file()
        folders.append(simulate_classified(cache / f"set_{seed:04d}", params))
        if not done:
            log(
                f"classassess examples: set {seed} ({params['n']} particles, {params['classes']} classes, "
                f"junk {params['junk_fraction']:.2f}) in {time.perf_counter() - t0:.0f} s"
            )
    return folders


__all__ = ["HELD_OUT", "TRAIN", "Ranges", "class_truth", "collect", "draw", "restore_images", "simulate_classified"]
