"""Named dataset presets: ``tiny`` (unit tests), ``demo`` (the demo run), ``realistic``.

A :class:`Preset` holds every parameter of a dataset that is not drawn at random; the
per-micrograph values (defocus, astigmatism, ice thickness, number of particles, defect)
are drawn from these ranges by :mod:`cryoflow.simulate.dataset` with the dataset's seed.

Units: pixel size in Å, defocus and astigmatism in Å (positive is underfocus, as in
RELION), voltage in kV, Cs in mm, dose in e/Å², B-factor in Å², ice thickness in nm,
diameters in Å.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SpeciesSpec:
    """One particle species of a dataset.

    ``kind``: ``"reference"`` (PDB 7DDO, shipped), ``"procedural"`` (a protein-like
    blob of ``diameter`` Å and ``shape``), or ``"file"`` (a PDB/mmCIF model or an MRC map
    at ``path``). ``weight``: relative abundance among the particles. ``seed``: the procedural
    species' seed (fixed per preset, so every dataset of a preset has the same species
    whatever the dataset seed). ``name``: the label written in the truth (defaults to the
    structure's own name).
    """

    kind: str
    weight: float = 1.0
    diameter: float = 120.0
    shape: str = "globular"
    seed: int = 1
    path: str | None = None
    name: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Preset:
    """Fixed parameters of a simulated dataset (see the module docstring for units)."""

    name: str
    description: str
    n_micrographs: int
    shape: tuple[int, int]  # (H, W) pixels
    pixel_size: float  # Å/pixel
    species: tuple[SpeciesSpec, ...]
    squares: tuple[str, ...]  # one quality per square: good, medium, bad
    particles: tuple[int, int]  # particles per good micrograph (min, max)
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.07
    defocus: tuple[float, float] = (8000.0, 25000.0)  # Å, mean defocus range
    astigmatism: float = 400.0  # Å, largest |U - V| of a good micrograph ("astigmatism" ones: see defects)
    b_factor: tuple[float, float] = (40.0, 100.0)  # Å²
    dose: float = 40.0  # e/Å² over the whole exposure
    junk_fraction: float = 0.08  # fraction of picked-size objects that are junk
    detector: str = "falcon4"
    phase_shift: float | None = None  # degrees (phase plate), None for none
    shots_per_hole: int = 1
    hole_diameter: float = 2.0  # µm
    hole_pitch: float = 3.0  # µm
    thick_ice_threshold: float = 100.0  # nm
    square_image: int = 512  # pixels of the low-magnification square images (0: none)
    extra: dict = field(default_factory=dict)

    def replace(self, **changes) -> Preset:
        """A copy with some fields changed (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        return out


TINY = Preset(
    name="tiny",
    description="A handful of small micrographs for unit tests (the whole dataset in under a second).",
    n_micrographs=6,
    shape=(256, 256),
    pixel_size=3.0,
    species=(
        SpeciesSpec("reference", weight=0.6),
        SpeciesSpec("procedural", weight=0.4, diameter=120.0, shape="elongated", name="rod120"),
    ),
    squares=("good", "bad"),
    particles=(10, 16),
    defocus=(10000.0, 20000.0),
    square_image=128,
)

DEMO = Preset(
    name="demo",
    description="About 30 micrographs of 1024² at 1.5 Å/px over 3 squares, two species (7DDO and a "
    "procedural one), junk and about 25% bad micrographs.",
    n_micrographs=30,
    shape=(1024, 1024),
    pixel_size=1.5,
    species=(
        SpeciesSpec("reference", weight=0.6),
        SpeciesSpec("procedural", weight=0.4, diameter=180.0, shape="globular", name="complex180"),
    ),
    squares=("good", "medium", "bad"),
    particles=(50, 90),
)

REALISTIC = Preset(
    name="realistic",
    description="Full-size 4096² micrographs at 0.83 Å/px (a Falcon 4 at 150 kx), two exposures per "
    "hole over 4 squares, two species, about 300 particles per micrograph.",
    n_micrographs=24,
    shape=(4096, 4096),
    pixel_size=0.83,
    species=(
        SpeciesSpec("reference", weight=0.6),
        SpeciesSpec("procedural", weight=0.4, diameter=180.0, shape="globular", name="complex180"),
    ),
    squares=("good", "good", "medium", "bad"),
    particles=(250, 350),
    dose=50.0,
    shots_per_hole=2,
    defocus=(6000.0, 22000.0),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (TINY, DEMO, REALISTIC)}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``tiny``, ``demo`` or ``realistic``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (one of {', '.join(PRESETS)})") from None
