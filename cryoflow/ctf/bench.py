"""``cryoflow bench ctf``: CTF accuracy against the simulator's truth, and speed.

Accuracy: micrographs simulated with random defocus (0.5-4 µm), astigmatism (0-1500 Å),
angle and pixel size (0.8-2 Å), 7DDO particles in ice, 40 e/Å². Figures: the relative error
of the mean defocus and of defocus U and V (median, 95th percentile), the astigmatism-angle
error where astigmatism >= 300 Å (median), failures. Speed: median seconds of the whole
per-micrograph estimate (spectrum, fit, metrics, tilt) on 4096² micrographs.
With ``--aspire PYTHON`` (a Python where the GPL ``aspire`` package is installed; it is
not a cryoflow dependency), ASPIRE's CtfEstimator runs on the same micrographs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cryoflow.ctf.estimate import Settings, estimate
from cryoflow.ctf.fit import Optics

AC = 0.07


def _simulate(n: int, size: int, seed: int, pixel_range=(0.8, 2.0), particles: int = 60):
    from cryoflow.simulate.micrograph import MicrographSpec, simulate_micrograph
    from cryoflow.simulate.structures import reference_species

    rng = np.random.default_rng(seed)
    for i in range(n):
        apix = round(float(rng.uniform(*pixel_range)), 3)
        d = float(rng.uniform(5000, 40000))
        a = float(rng.uniform(0, 1500))
        angle = float(rng.uniform(0, 180))
        spec = MicrographSpec(
            shape=(size, size),
            pixel_size=apix,
            defocus_u=d + a / 2,
            defocus_v=d - a / 2,
            defocus_angle=angle,
            amplitude_contrast=AC,
            n_particles=particles,
            seed=seed * 1000 + i,
        )
        yield simulate_micrograph(spec, [reference_species(apix)]), spec


def _errors(fits, truths):
    rel_mean, rel_uv, angle = [], [], []
    for f, t in zip(fits, truths, strict=True):
        if f is None:
            continue
        d = (t.defocus_u + t.defocus_v) / 2
        rel_mean.append(abs(f["defocus_u"] + f["defocus_v"] - 2 * d) / (2 * d))
        rel_uv += [abs(f["defocus_u"] - t.defocus_u) / t.defocus_u, abs(f["defocus_v"] - t.defocus_v) / t.defocus_v]
        if t.defocus_u - t.defocus_v >= 300:
            angle.append(abs((f["angle"] - t.defocus_angle + 90) % 180 - 90))
    pct = lambda a, q: float(np.percentile(a, q) * 100) if a else float("nan")  # noqa: E731
    return {
        "fitted": len(rel_mean),
        "failed": len(fits) - len(rel_mean),
        "mean_defocus_error_median_pct": pct(rel_mean, 50),
        "mean_defocus_error_p95_pct": pct(rel_mean, 95),
        "defocus_uv_error_median_pct": pct(rel_uv, 50),
        "defocus_uv_error_p95_pct": pct(rel_uv, 95),
        "angle_error_median_deg": float(np.median(angle)) if angle else float("nan"),
        "angle_cases": len(angle),
    }


def _ours(image, spec, settings: Settings | None = None):
    t = time.perf_counter()
    optics = Optics(spec.voltage, spec.cs, spec.amplitude_contrast)
    r = estimate(torch.from_numpy(image), spec.pixel_size, optics, settings)
    dt = time.perf_counter() - t
    fit = None if not r.ok else {"defocus_u": r.fit.defocus_u, "defocus_v": r.fit.defocus_v, "angle": r.fit.angle}
    return fit, dt


ASPIRE_SCRIPT = r"""
import json, sys, time
import numpy as np
from aspire.ctf import estimate_ctf
jobs = json.load(open(sys.argv[1]))
out = []
for job in jobs:
    t = time.perf_counter()
    try:
        res = estimate_ctf(data_folder=job["folder"], pixel_size=job["pixel_size"], cs=job["cs"], amplitude_contrast=job["ac"],
                           voltage=job["voltage"], num_tapers=2, psd_size=512, g_min=30, g_max=5, output_dir=job["folder"] + "/out",
                           dtype=np.float64, save_ctf_images=False, save_noise_images=False)
        (name, r), = res.items()
        fit = {"defocus_u": float(r["defocus_u"]), "defocus_v": float(r["defocus_v"]), "angle": float(np.degrees(r["defocus_ang"])) % 180}
    except Exception as exc:
        fit = None
        print("aspire failed:", exc, file=sys.stderr)
    out.append({"fit": fit, "seconds": time.perf_counter() - t})
json.dump(out, open(sys.argv[2], "w"))
"""


def _aspire(python: str, images, specs):
    from cryoflow.io import write_mrc

    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i, (image, spec) in enumerate(zip(images, specs, strict=True)):
            folder = Path(tmp) / f"m{i}"
            folder.mkdir()
            write_mrc(folder / "m.mrc", image, spec.pixel_size)
            jobs.append(
                {
                    "folder": str(folder),
                    "pixel_size": spec.pixel_size,
                    "cs": spec.cs,
                    "ac": spec.amplitude_contrast,
                    "voltage": spec.voltage,
                }
            )
        (Path(tmp) / "jobs.json").write_text(json.dumps(jobs))
        (Path(tmp) / "run.py").write_text(ASPIRE_SCRIPT)
        subprocess.run(
            [python, str(Path(tmp) / "run.py"), str(Path(tmp) / "jobs.json"), str(Path(tmp) / "out.json")], check=True
        )
        results = json.loads((Path(tmp) / "out.json").read_text())
    return [r["fit"] for r in results], [r["seconds"] for r in results]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="cryoflow bench ctf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=40, help="micrographs for the accuracy figures")
    parser.add_argument("--size", type=int, default=1024, help="side of the accuracy micrographs, px")
    parser.add_argument("--speed-n", type=int, default=5, help="4096² micrographs for the speed figure (0: skip)")
    parser.add_argument("--speed-size", type=int, default=4096, help="side of the speed micrographs, px")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--fast",
        action="store_true",
        help="the on-the-fly mode of cryoflow watch (Settings.fast) instead of the default",
    )
    parser.add_argument(
        "--aspire", metavar="PYTHON", help="a Python with `aspire` installed: compare on the same micrographs"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    settings = Settings.fast() if args.fast else Settings()

    images, specs, fits, times = [], [], [], []
    for sim, spec in _simulate(args.n, args.size, args.seed):
        fit, dt = _ours(sim.image, spec, settings)
        images.append(sim.image)
        specs.append(spec)
        fits.append(fit)
        times.append(dt)
    figures = {
        "mode": "fast (Settings.fast: 256² spectrum, no tilt, 10 refinement iterations)" if args.fast else "default",
        "accuracy": {
            "micrographs": args.n,
            "size": args.size,
            **_errors(fits, specs),
            "seconds_median": float(np.median(times)),
        },
    }

    if args.speed_n:
        estimate(torch.from_numpy(images[0]), specs[0].pixel_size, Optics())  # warm-up
        speed_images, speed_specs, speed_times = [], [], []
        for sim, spec in _simulate(args.speed_n, args.speed_size, args.seed + 1, pixel_range=(0.8, 1.1), particles=300):
            fit, dt = _ours(sim.image, spec, settings)
            speed_images.append(sim.image)
            speed_specs.append(spec)
            speed_times.append(dt)
        figures["speed"] = {
            "micrographs": args.speed_n,
            "size": args.speed_size,
            "seconds_median": float(np.median(speed_times)),
            "seconds_max": float(np.max(speed_times)),
            "threads": torch.get_num_threads(),
        }
    if args.aspire:
        a_fits, a_times = _aspire(args.aspire, images, specs)
        figures["aspire_accuracy"] = {**_errors(a_fits, specs), "seconds_median": float(np.median(a_times))}
        if args.speed_n:
            _, s_times = _aspire(args.aspire, speed_images, speed_specs)
            figures["aspire_speed"] = {"seconds_median": float(np.median(s_times))}

    print(
        "CTF benchmark (targets: defocus error median <= 0.5%, p95 <= 2%; angle error median <= 5 deg; <= 1 s per 4096² micrograph)"
    )
    for section, values in figures.items():
        if not isinstance(values, dict):
            print(f"  {section}: {values}")
            continue
        print(f"  {section}:")
        for key, value in values.items():
            print(f"    {key:<34} {value:.4g}" if isinstance(value, float) else f"    {key:<34} {value}")
    return figures
