"""cryoSPARC particle metadata (``.cs``): a numpy structured array saved with ``np.save``.

Field names, dtypes and conventions are those of real cryoSPARC files (checked against
``empiar_10076_7.cs``, an import of RELION particles, and ``cryosparc_P12_J24_001_particles.cs``,
an extraction; cryoSPARC v2-v4):

==========================  =======  =============================================================
field                        dtype    value written by cryoflow
==========================  =======  =============================================================
uid                          u8       random 64-bit id per particle (seeded: same seed, same ids)
blob/path                    S<n>     stack path relative to the output folder (Particles/...mrcs)
blob/idx                     u4       0-based index in the stack (RELION's ``N@`` is 1-based)
blob/shape                   u4 (2,)  (box, box) pixels
blob/psize_A                 f4       image pixel size, Å
blob/sign                    f4       -1, what cryoSPARC writes for imported RELION stacks (white particles)
blob/import_sig              u8       one seeded 64-bit signature for the whole export
ctf/type                     S9       b"imported"
ctf/exp_group_id             u4       RELION optics group (rlnOpticsGroup)
ctf/accel_kv, cs_mm          f4       kV, mm
ctf/amp_contrast             f4       fraction
ctf/df1_A, ctf/df2_A         f4       rlnDefocusU, rlnDefocusV (Å, positive underfocus)
ctf/df_angle_rad             f4       rlnDefocusAngle in radians, same sign (5.28° <-> 0.0922 rad
                                      in the EMPIAR-10076 pair of files)
ctf/phase_shift_rad          f4       rlnPhaseShift in radians
ctf/scale, ctf/scale_const   f4       1, 0
ctf/shift_A, tilt_A,         f4 (k,)  zeros (no beam tilt / higher-order aberrations measured)
trefoil_A, tetra_A, anisomag
ctf/bfactor                  f4       0
location/micrograph_uid      u8       random 64-bit id per micrograph (seeded)
location/exp_group_id        u4       optics group
location/micrograph_path     S<n>     rlnMicrographName
location/micrograph_shape    u4 (2,)  (H, W) pixels of the micrograph
location/micrograph_psize_A  f4       micrograph pixel size, Å
location/center_x_frac       f4       rlnCoordinateX / W (x is the column)
location/center_y_frac       f4       rlnCoordinateY / H
pick_stats/ncc_score         f4       rlnAutopickFigureOfMerit (only when the picks have one)
==========================  =======  =============================================================

``np.save`` to a name ending in ``.cs`` would append ``.npy``; :func:`write_cs` writes through a
file object so the name is kept (as cryoSPARC does).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.io.atomic import atomic_path

#: (field, dtype, shape) in cryoSPARC's order; ``S`` fields get their width from the data.
FIELDS = [
    ("uid", "<u8", ()),
    ("blob/path", "S", ()),
    ("blob/idx", "<u4", ()),
    ("blob/shape", "<u4", (2,)),
    ("blob/psize_A", "<f4", ()),
    ("blob/sign", "<f4", ()),
    ("blob/import_sig", "<u8", ()),
    ("ctf/type", "S9", ()),
    ("ctf/exp_group_id", "<u4", ()),
    ("ctf/accel_kv", "<f4", ()),
    ("ctf/cs_mm", "<f4", ()),
    ("ctf/amp_contrast", "<f4", ()),
    ("ctf/df1_A", "<f4", ()),
    ("ctf/df2_A", "<f4", ()),
    ("ctf/df_angle_rad", "<f4", ()),
    ("ctf/phase_shift_rad", "<f4", ()),
    ("ctf/scale", "<f4", ()),
    ("ctf/scale_const", "<f4", ()),
    ("ctf/shift_A", "<f4", (2,)),
    ("ctf/tilt_A", "<f4", (2,)),
    ("ctf/trefoil_A", "<f4", (2,)),
    ("ctf/tetra_A", "<f4", (4,)),
    ("ctf/anisomag", "<f4", (4,)),
    ("ctf/bfactor", "<f4", ()),
    ("location/micrograph_uid", "<u8", ()),
    ("location/exp_group_id", "<u4", ()),
    ("location/micrograph_path", "S", ()),
    ("location/micrograph_shape", "<u4", (2,)),
    ("location/micrograph_psize_A", "<f4", ()),
    ("location/center_x_frac", "<f4", ()),
    ("location/center_y_frac", "<f4", ()),
]


def _uids(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(1, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)


def particles_cs(particles: pd.DataFrame, optics: pd.DataFrame, micrograph_shapes: dict, seed: int = 0) -> np.ndarray:
    """The cryoSPARC structured array of an extraction.

    ``particles``: the ``data_particles`` table cryoflow writes (rlnImageName ``N@path``,
    rlnMicrographName, rlnCoordinateX/Y px, rlnDefocusU/V Å, rlnDefocusAngle °, rlnPhaseShift °,
    rlnOpticsGroup, optional rlnAutopickFigureOfMerit); ``optics``: its ``data_optics``
    (rlnImagePixelSize, rlnImageSize, rlnVoltage, rlnSphericalAberration, rlnAmplitudeContrast,
    rlnMicrographOriginalPixelSize); ``micrograph_shapes``: ``{rlnMicrographName: (H, W)}``.
    """
    rng = np.random.default_rng(seed)
    n = len(particles)
    opt = particles[["rlnOpticsGroup"]].merge(optics, on="rlnOpticsGroup", how="left")
    image = particles["rlnImageName"].astype(str).str.split("@", n=1)
    paths = image.str[1].to_numpy()
    names = particles["rlnMicrographName"].astype(str).to_numpy()
    shapes = np.array([micrograph_shapes[m] for m in names], dtype=np.uint32).reshape(n, 2)
    unique, inverse = np.unique(names, return_inverse=True)
    mic_uid = _uids(rng, len(unique))[inverse] if n else np.zeros(0, np.uint64)

    fields = list(FIELDS)
    has_fom = "rlnAutopickFigureOfMerit" in particles
    if has_fom:
        fields.append(("pick_stats/ncc_score", "<f4", ()))
    width = lambda values: max(1, max((len(str(v).encode()) for v in values), default=1))  # noqa: E731
    dtype = []
    for name, kind, shape in fields:
        if kind == "S":
            kind = f"S{width(paths if name == 'blob/path' else names)}"
        dtype.append((name, kind, shape) if shape else (name, kind))
    out = np.zeros(n, dtype=dtype)
    box = opt["rlnImageSize"].to_numpy(np.uint32)
    out["uid"] = _uids(rng, n)
    out["blob/path"] = paths.astype(bytes) if n else []
    out["blob/idx"] = image.str[0].astype(int).to_numpy() - 1
    out["blob/shape"] = np.stack([box, box], axis=1)
    out["blob/psize_A"] = opt["rlnImagePixelSize"].to_numpy(np.float32)
    out["blob/sign"] = -1.0
    out["blob/import_sig"] = _uids(rng, 1)[0]
    out["ctf/type"] = b"imported"
    out["ctf/exp_group_id"] = particles["rlnOpticsGroup"].to_numpy(np.uint32)
    out["ctf/accel_kv"] = opt["rlnVoltage"].to_numpy(np.float32)
    out["ctf/cs_mm"] = opt["rlnSphericalAberration"].to_numpy(np.float32)
    out["ctf/amp_contrast"] = opt["rlnAmplitudeContrast"].to_numpy(np.float32)
    out["ctf/df1_A"] = particles["rlnDefocusU"].to_numpy(np.float32)
    out["ctf/df2_A"] = particles["rlnDefocusV"].to_numpy(np.float32)
    out["ctf/df_angle_rad"] = np.deg2rad(particles["rlnDefocusAngle"].to_numpy(np.float64)).astype(np.float32)
    out["ctf/phase_shift_rad"] = np.deg2rad(particles["rlnPhaseShift"].to_numpy(np.float64)).astype(np.float32)
    out["ctf/scale"] = 1.0
    out["location/micrograph_uid"] = mic_uid
    out["location/exp_group_id"] = particles["rlnOpticsGroup"].to_numpy(np.uint32)
    out["location/micrograph_path"] = names.astype(bytes) if n else []
    out["location/micrograph_shape"] = shapes
    out["location/micrograph_psize_A"] = opt["rlnMicrographOriginalPixelSize"].to_numpy(np.float32)
    out["location/center_x_frac"] = particles["rlnCoordinateX"].to_numpy(np.float64) / np.maximum(shapes[:, 1], 1)
    out["location/center_y_frac"] = particles["rlnCoordinateY"].to_numpy(np.float64) / np.maximum(shapes[:, 0], 1)
    if has_fom:
        out["pick_stats/ncc_score"] = particles["rlnAutopickFigureOfMerit"].to_numpy(np.float32)
    return out


def write_cs(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save a structured array as a cryoSPARC ``.cs`` file (``np.save`` format, name kept), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    return path
