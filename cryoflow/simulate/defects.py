"""Micrograph defects and particle-level junk for the micrograph simulator.

A *defect* makes a whole micrograph bad for one labelled reason, each with the signature
a real one shows:

============== =====================================================================
reason          what is simulated (signature)
============== =====================================================================
empty           no ice (vacuum): counts = dose·a², no Thon rings, only shot noise
no_particles    vitreous ice, no particles (rings from the ice, nothing to pick)
thick_ice       ice ≥ 1.25x the thick-ice threshold: fewer counts (exp(-t/λ)), rings
                damped at high frequency by the defocus spread through the ice
crystalline_ice powder rings at 3.90/3.67/3.44 Å (hexagonal ice) plus a few crystals'
                spots, and grains of diffraction contrast (visible at any pixel size)
contamination   ethane/ice balls: large dark round blobs (150-600 nm thick at the centre)
carbon          the hole's carbon edge crosses the field: strong Thon rings, darker,
                a Fresnel fringe at the edge, particles crowding along the edge
crack           one or two thin gaps in the ice: bright (vacuum) wavy lines
drift           uncorrected drift: the signal blurred by a line kernel (anisotropic
                Thon-ring damping along the drift direction)
aggregation     most particles (85%) clumped into aggregates of 6-16, larger than the
                2-5-particle junk aggregates a good micrograph may hold; at least one
                whole aggregate in the field, lying over and beside other particles
crowding        particles covering the field, overlapping
astigmatism     |DefocusU - DefocusV| of several thousand Å
============== =====================================================================

Particle-level *junk* (``junk_kind``): ``broken`` (a particle cut by a plane: part of it
missing), ``ice_chip`` (a faceted flake of ice on the surface), ``contaminant`` (a small
dense blob) and ``aggregate`` (a clump of 2-5 particles).

All randomness comes from a ``torch.Generator`` passed in. Lengths: pixels unless the
name says Å or nm.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

DEFECTS = (
    "empty",
    "no_particles",
    "thick_ice",
    "crystalline_ice",
    "contamination",
    "carbon",
    "crack",
    "drift",
    "aggregation",
    "crowding",
    "astigmatism",
)
JUNK_KINDS = ("broken", "ice_chip", "contaminant", "aggregate")

THICK_ICE_NM = 100.0  # ice thicker than this is labelled thick_ice (as the dataset presets)
ASTIGMATISM_A = 1500.0  # |U - V| above this (Å) is labelled astigmatism

# Documented defaults of each defect's parameters (``MicrographSpec.defect_params``
# overrides them). A pair (lo, hi) is drawn uniformly per micrograph.
DEFECT_DEFAULTS: dict[str, dict] = {
    "empty": {},
    "no_particles": {},
    "thick_ice": {"thickness_nm": (130.0, 220.0)},  # used when the spec's ice is thinner than THICK_ICE_NM
    "crystalline_ice": {
        "kind": "hexagonal",  # or "cubic"
        "fraction": 1.0,  # crystalline fraction of the ice
        "n_crystals": (1, 4),  # large crystals whose spots show (hexagonal (100) at 3.90 Å)
        "grain_size_A": (400.0, 1500.0),  # grains of diffraction contrast
        "grain_contrast": 0.12,  # std of the transmission change between grains
    },
    "contamination": {"n": (2, 6), "radius_A": (300.0, 2000.0), "thickness_nm": (150.0, 600.0)},
    "carbon": {
        "coverage": (0.2, 0.45),  # fraction of the field on carbon
        "thickness_nm": (8.0, 15.0),
        "hole_radius_A": 10000.0,  # 2 µm holes: the edge is an arc of this radius
        "edge_fraction": 0.5,  # fraction of the particles within ~2 diameters of the edge
    },
    "crack": {"n": (1, 2), "width_A": (15.0, 80.0)},
    "drift": {"length_A": (8.0, 25.0), "angle_deg": (0.0, 180.0)},  # residual blur of the sum
    # aggregates larger than the junk aggregates (2-5) of good micrographs, so the label can be seen
    "aggregation": {"fraction": 0.85, "size": (6, 16)},
    "crowding": {"coverage": (1.0, 1.6)},  # summed particle area / field area
    "astigmatism": {"astigmatism_A": (3000.0, 6000.0)},
}


def _uniform(gen: torch.Generator, lo: float, hi: float, n: int | None = None):
    u = torch.rand(1 if n is None else n, generator=gen, dtype=torch.float64)
    v = lo + (hi - lo) * u
    return float(v[0]) if n is None else v


def _draw(value, gen: torch.Generator, integer: bool = False):
    """A parameter value: pairs (lo, hi) are drawn uniformly, anything else returned as is."""
    if isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        if integer:
            return int(torch.randint(int(value[0]), int(value[1]) + 1, (1,), generator=gen))
        return _uniform(gen, float(value[0]), float(value[1]))
    return value


@dataclass
class DefectPlan:
    """The resolved (drawn) parameters of one micrograph's defect and its effect on the spec.

    ``reason``: truth label reason. ``ice_thickness`` nm, ``defocus_u/v`` Å,
    ``n_objects``: objects to place, ``overlap``: overlap allowed. ``details``: what the
    truth reports about the defect (JSON-friendly: floats, lists).
    """

    reason: str
    ice_thickness: float
    defocus_u: float
    defocus_v: float
    defocus_angle: float
    n_objects: int
    overlap: bool
    details: dict = field(default_factory=dict)


def plan_defect(spec, gen: torch.Generator) -> DefectPlan:
    """Draw the defect's parameters for ``spec`` (a ``MicrographSpec``) and the effective values.

    Without a defect the reason is derived from the parameters: ``no_particles`` if no
    objects, ``thick_ice`` above :data:`THICK_ICE_NM`, ``astigmatism`` above
    :data:`ASTIGMATISM_A`, else ``good``.
    """
    name = spec.defect
    params = dict(DEFECT_DEFAULTS.get(name, {})) if name else {}
    params.update(spec.defect_params or {})
    h, w = spec.shape
    apix = spec.pixel_size
    plan = DefectPlan(
        reason=name or "good",
        ice_thickness=float(spec.ice_thickness),
        defocus_u=float(spec.defocus_u),
        defocus_v=float(spec.defocus_v),
        defocus_angle=float(spec.defocus_angle),
        n_objects=int(spec.n_particles),
        overlap=spec.min_distance is not None and spec.min_distance <= 0,
    )
    d = plan.details
    if name is None:
        if plan.n_objects == 0:
            plan.reason = "no_particles"
        elif plan.ice_thickness > THICK_ICE_NM:
            plan.reason = "thick_ice"
        elif abs(plan.defocus_u - plan.defocus_v) > ASTIGMATISM_A:
            plan.reason = "astigmatism"
        return plan
    if name == "empty":
        plan.ice_thickness = 0.0
        plan.n_objects = 0
    elif name == "no_particles":
        plan.n_objects = 0
    elif name == "thick_ice":
        if plan.ice_thickness <= THICK_ICE_NM:
            plan.ice_thickness = float(_draw(params["thickness_nm"], gen))
    elif name == "crystalline_ice":
        d["kind"] = params["kind"]
        d["fraction"] = float(params["fraction"])
        n_cryst = int(_draw(params["n_crystals"], gen, integer=True))
        d["crystal_angles_deg"] = [float(a) for a in _uniform(gen, 0.0, 60.0, n_cryst)] if n_cryst else []
        d["grain_size_A"] = float(_draw(params["grain_size_A"], gen))
        d["grain_contrast"] = float(params["grain_contrast"])
        d["reflections_A"] = [r[0] for r in _reflections(params["kind"])]
    elif name == "contamination":
        n = int(_draw(params["n"], gen, integer=True))
        lo, hi = params["radius_A"]
        radii = _uniform(gen, lo / apix, hi / apix, n)
        # a ball much larger than the field would only darken it all: keep 4-25% of the field
        field = min(h, w)
        radii = radii.clamp(0.04 * field, 0.25 * field)
        cy = _uniform(gen, 0.0, float(h), n)
        cx = _uniform(gen, 0.0, float(w), n)
        lo, hi = params["thickness_nm"]
        thick = _uniform(gen, lo, hi, n)
        d["centres_yx"] = [[float(a), float(b)] for a, b in zip(cy, cx, strict=True)]
        d["radii_px"] = [float(r) for r in radii]
        d["thickness_nm"] = [float(t) for t in thick]  # at the centre of each ball
    elif name == "carbon":
        coverage = float(_draw(params["coverage"], gen))
        angle = _uniform(gen, 0.0, 2 * math.pi)
        normal = (math.sin(angle), math.cos(angle))  # (y, x), pointing into the carbon
        radius = float(params["hole_radius_A"]) / apix
        # offset e of the edge from the frame centre along the normal giving that coverage
        yy = torch.linspace(0, h, 65, dtype=torch.float64)[:, None] - h / 2
        xx = torch.linspace(0, w, 65, dtype=torch.float64)[None, :] - w / 2
        proj = (yy * normal[0] + xx * normal[1]).flatten()
        e = float(torch.quantile(proj, 1.0 - coverage))
        centre = (h / 2 + normal[0] * (e - radius), w / 2 + normal[1] * (e - radius))
        d.update(
            coverage=coverage,
            thickness_nm=float(_draw(params["thickness_nm"], gen)),
            hole_centre_yx=[float(centre[0]), float(centre[1])],
            hole_radius_px=radius,
            edge_point_yx=[h / 2 + normal[0] * e, w / 2 + normal[1] * e],
            edge_normal_yx=[normal[0], normal[1]],
            edge_fraction=float(params["edge_fraction"]),
        )
    elif name == "crack":
        n = int(_draw(params["n"], gen, integer=True))
        cracks = []
        for _ in range(n):
            ang = _uniform(gen, 0.0, math.pi)
            cracks.append(
                {
                    "point_yx": [_uniform(gen, 0.2 * h, 0.8 * h), _uniform(gen, 0.2 * w, 0.8 * w)],
                    "angle_deg": math.degrees(ang),
                    "width_px": float(_draw(params["width_A"], gen)) / apix,
                    "wobble_px": _uniform(gen, 2.0, 0.02 * max(h, w) + 2.0),
                    "wobble_period_px": _uniform(gen, 0.3, 1.5) * max(h, w),
                }
            )
        d["cracks"] = cracks
    elif name == "drift":
        d["length_A"] = float(_draw(params["length_A"], gen))
        d["angle_deg"] = float(_draw(params["angle_deg"], gen))
    elif name == "aggregation":
        d["fraction"] = float(params["fraction"])
        d["size"] = list(params["size"])
        # at least one whole aggregate: enough particles for the largest one (an aggregated
        # sample concentrates protein; a field of 3-8 particles otherwise drew none), and
        # aggregates may overlap other particles in projection (they are 3D clumps in the ice)
        plan.n_objects = max(plan.n_objects, math.ceil(d["size"][1] / d["fraction"]))
        plan.overlap = True
    elif name == "crowding":
        d["coverage"] = float(_draw(params["coverage"], gen))
        plan.overlap = True
    elif name == "astigmatism":
        astig = float(_draw(params["astigmatism_A"], gen))
        if abs(plan.defocus_u - plan.defocus_v) < astig:
            mean = (plan.defocus_u + plan.defocus_v) / 2
            plan.defocus_u, plan.defocus_v = mean + astig / 2, mean - astig / 2
        d["astigmatism_A"] = abs(plan.defocus_u - plan.defocus_v)
    else:  # pragma: no cover - validated by the spec
        raise ValueError(f"unknown defect {name!r}")
    return plan


def _reflections(kind: str):
    from cryoflow.simulate.physics import ICE_REFLECTIONS

    return ICE_REFLECTIONS[kind]


# --- masks and thickness maps ---------------------------------------------------------
def _yx(shape: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = shape
    y = torch.arange(h, device=device, dtype=torch.float32).reshape(-1, 1)
    x = torch.arange(w, device=device, dtype=torch.float32).reshape(1, -1)
    return y, x


def smooth_field(shape: tuple[int, int], cell_px: float, gen: torch.Generator, device) -> torch.Tensor:
    """A smooth random field ``(H, W)`` of zero mean and ~unit std, correlation length ~``cell_px``.

    Unit normal values on a coarse grid spanning the frame, bilinear upsampling (cheap at
    any size; std ~0.7 between the nodes).
    """
    h, w = shape
    gh, gw = max(2, math.ceil(h / cell_px) + 1), max(2, math.ceil(w / cell_px) + 1)
    coarse = torch.randn(1, 1, gh, gw, generator=gen).to(device)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)[0, 0]


def carbon_mask(shape: tuple[int, int], details: dict, device) -> torch.Tensor:
    """Soft mask (0..1) of the carbon side of the hole edge, ``(H, W)`` float32."""
    y, x = _yx(shape, device)
    cy, cx = details["hole_centre_yx"]
    r = torch.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    return torch.sigmoid((r - details["hole_radius_px"]) / 1.5)


def crack_mask(shape: tuple[int, int], details: dict, device) -> torch.Tensor:
    """Soft mask (0..1) of the cracks (gaps in the ice), ``(H, W)`` float32."""
    y, x = _yx(shape, device)
    out = torch.zeros(shape, device=device)
    for c in details["cracks"]:
        a = math.radians(c["angle_deg"])
        py, px = c["point_yx"]
        along = (x - px) * math.cos(a) + (y - py) * math.sin(a)
        across = -(x - px) * math.sin(a) + (y - py) * math.cos(a)
        across = across - c["wobble_px"] * torch.sin(2 * math.pi * along / c["wobble_period_px"])
        # the gap narrows towards its ends, like a crack running out
        length = 0.8 * max(shape)
        taper = torch.clamp(1.0 - (along / length) ** 2, min=0.0)
        half = 0.5 * c["width_px"] * taper
        out = torch.maximum(out, torch.sigmoid((half - across.abs()) / 0.7) * (taper > 0))
    return out


def contamination_thickness(shape: tuple[int, int], details: dict, device) -> torch.Tensor:
    """Thickness (nm) of the contamination balls, ``(H, W)`` float32.

    Each ball has the profile of a sphere, ``t0 · √(1 - r²/R²)``, with its centre
    thickness ``t0`` (nm) and radius ``R`` (px) from ``details`` (balls larger than the
    field are drawn smaller but keep their thickness: dark, nearly opaque).
    """
    y, x = _yx(shape, device)
    out = torch.zeros(shape, device=device)
    for (cy, cx), rad, t0 in zip(details["centres_yx"], details["radii_px"], details["thickness_nm"], strict=True):
        r2 = ((y - cy) ** 2 + (x - cx) ** 2) / rad**2
        out = out + t0 * torch.sqrt(torch.clamp(1.0 - r2, min=0.0))
    return out


def crystal_grains(shape: tuple[int, int], grain_px: float, gen: torch.Generator, device) -> torch.Tensor:
    """Voronoi grains of crystalline ice: a zero-mean unit-std value per grain, ``(H, W)``.

    Computed on a grid 8x coarser and upsampled (nearest), so cheap at 4096².
    """
    h, w = shape
    step = 8
    ch, cw = math.ceil(h / step), math.ceil(w / step)
    n = max(4, int(h * w / grain_px**2))
    seeds = torch.rand(n, 2, generator=gen).to(device) * torch.tensor([ch, cw], device=device)
    values = torch.randn(n, generator=gen).to(device)
    yy, xx = torch.meshgrid(
        torch.arange(ch, device=device, dtype=torch.float32),
        torch.arange(cw, device=device, dtype=torch.float32),
        indexing="ij",
    )
    pts = torch.stack([yy.flatten(), xx.flatten()], 1)
    nearest = torch.empty(pts.shape[0], dtype=torch.long, device=device)
    for s in range(0, pts.shape[0], 65536):  # chunks bound the memory of the distance matrix
        nearest[s : s + 65536] = torch.cdist(pts[s : s + 65536], seeds).argmin(1)
    coarse = values[nearest].reshape(1, 1, ch, cw)
    return torch.nn.functional.interpolate(coarse, scale_factor=step, mode="nearest")[0, 0, :h, :w]


def crystal_spots_psd(
    fy: torch.Tensor, fx: torch.Tensor, pixel_size: float, angles_deg: list[float], width: float = 0.002
) -> torch.Tensor:
    """Relative power of the hexagonal (100) spots (3.90 Å) of crystals viewed down c.

    ``fy, fx`` cycles/px (rfft2 grid), ``width`` the spot's std in Å⁻¹. Six spots per
    crystal at its in-plane angle; returned on the grid of ``fy * fx`` broadcast.
    """
    ky, kx = fy / pixel_size, fx / pixel_size
    out = torch.zeros(torch.broadcast_shapes(ky.shape, kx.shape), device=ky.device)
    k0 = 1.0 / 3.90
    for a0 in angles_deg:
        for j in range(6):
            a = math.radians(a0 + 60.0 * j)
            d2 = (ky - k0 * math.sin(a)) ** 2 + (kx - k0 * math.cos(a)) ** 2
            out = out + torch.exp(-0.5 * d2 / width**2)
    return out


# --- particle-level junk -----------------------------------------------------------------
def ice_chip_images(n: int, box: int, pixel_size: float, size_A: torch.Tensor, gen: torch.Generator, device):
    """Projected potential (V·Å) of ``n`` faceted ice flakes, ``(n, box, box)``, centred box//2.

    Each is a random convex polygon (5-8 facets) of diameter ``size_A`` (Å, ``(n,)``),
    100-300 Å thick, at the mean inner potential of ice (lying on the ice surface).
    """
    from cryoflow.simulate.physics import ICE_MEAN_INNER_POTENTIAL

    if n == 0:
        return torch.zeros(0, box, box, device=device)
    m = 8
    y = (torch.arange(box, device=device, dtype=torch.float32) - box // 2).reshape(1, 1, -1, 1)
    x = (torch.arange(box, device=device, dtype=torch.float32) - box // 2).reshape(1, 1, 1, -1)
    angles = torch.rand(n, m, generator=gen).to(device) * 2 * math.pi
    radius = (size_A.to(device) / pixel_size / 2).reshape(n, 1)
    dist = radius * (0.6 + 0.4 * torch.rand(n, m, generator=gen).to(device))
    # facets 6..8: unused ones pushed far out
    n_facets = torch.randint(5, m + 1, (n, 1), generator=gen).to(device)
    dist = torch.where(torch.arange(m, device=device).reshape(1, m) < n_facets, dist, torch.full_like(dist, 1e6))
    margin = dist.reshape(n, m, 1, 1) - (
        x * torch.cos(angles).reshape(n, m, 1, 1) + y * torch.sin(angles).reshape(n, m, 1, 1)
    )
    inside = torch.sigmoid(margin.min(dim=1).values / 0.7)
    thickness = 100.0 + 200.0 * torch.rand(n, 1, 1, generator=gen).to(device)
    return inside * thickness * ICE_MEAN_INNER_POTENTIAL


def contaminant_images(n: int, box: int, pixel_size: float, size_A: torch.Tensor, device, potential: float = 12.0):
    """Projected potential (V·Å) of ``n`` small dense spheres of diameter ``size_A`` (Å), ``(n, box, box)``.

    ``potential`` (V) is the sphere's mean inner potential above the ice.
    """
    if n == 0:
        return torch.zeros(0, box, box, device=device)
    y = (torch.arange(box, device=device, dtype=torch.float32) - box // 2).reshape(1, -1, 1)
    x = (torch.arange(box, device=device, dtype=torch.float32) - box // 2).reshape(1, 1, -1)
    r = (size_A.to(device) / pixel_size / 2).reshape(n, 1, 1)
    chord = 2.0 * torch.sqrt(torch.clamp(r**2 - y**2 - x**2, min=0.0))
    return chord * pixel_size * potential


def broken_species(species, gen: torch.Generator):
    """A copy of ``species`` with part of it missing: the volume cut by a random plane.

    The plane's normal is random and it passes 0-30% of the radius from the centre, so
    30-50% of the particle is removed (soft edge of 1.5 voxels). ``species`` is the
    ``structures.Species`` dataclass; the copy is made with :func:`dataclasses.replace`.
    """
    vol = species.volume
    d = vol.shape[-1]
    normal = torch.randn(3, generator=gen, dtype=torch.float64)
    normal = (normal / normal.norm()).to(vol.device, torch.float32)
    offset = float(_uniform(gen, 0.0, 0.3)) * species.diameter / species.pixel_size / 2
    c = torch.arange(d, device=vol.device, dtype=torch.float32) - d // 2
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    signed = zz * normal[0] + yy * normal[1] + xx * normal[2] - offset
    keep = torch.sigmoid(-signed / 1.5)
    return dataclasses.replace(species, volume=vol * keep)


def aggregate_offsets(n: int, size: torch.Tensor, spacing_px: float, gen: torch.Generator) -> torch.Tensor:
    """Member offsets (px, ``(n, max_size, 2)`` y, x; NaN beyond each aggregate's ``size``).

    Members attach one after another to a random earlier member at ``spacing_px`` (about
    one diameter) in a random direction: compact, branched clumps.
    """
    m = int(size.max()) if n else 0
    out = torch.zeros(n, max(m, 1), 2, dtype=torch.float64)
    for j in range(1, m):  # loop over member rank (≤ 10), vectorised over aggregates
        parent = (torch.rand(n, generator=gen, dtype=torch.float64) * j).long()
        ang = torch.rand(n, generator=gen, dtype=torch.float64) * 2 * math.pi
        step = spacing_px * (0.85 + 0.15 * torch.rand(n, generator=gen, dtype=torch.float64))
        base = out[torch.arange(n), parent]
        out[:, j, 0] = base[:, 0] + step * torch.sin(ang)
        out[:, j, 1] = base[:, 1] + step * torch.cos(ang)
    if n:
        out = out - out[:, :1]  # keep the centroid near the object's position below
        valid = torch.arange(max(m, 1)).reshape(1, -1) < size.reshape(-1, 1)
        centroid = (out * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        out = out - centroid[:, None, :]
        out[~valid] = float("nan")
    return out
