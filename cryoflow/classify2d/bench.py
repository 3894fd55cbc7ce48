"""Benchmark of ``cryoflow classify2d`` on simulated stacks (issue 10's figures).

Prints, for a stack from :func:`cryoflow.simulate.stack.simulate_stack` (default 20,000
particles, box 64, 2.5 Å/pixel, three species with five preferred views each, 10% junk):

- class purity of good particles (same species and view within 15°; see
  :mod:`cryoflow.classify2d.truth`), and the share of junk landing in junk-majority classes;
- in-plane angle error of pure particles (median, 90th percentile, fraction within 5°);
- resolution of the class averages against an oracle: for the largest classes, half-set
  averages of the class's pure particles aligned with the classification's poses, and
  with the true poses, each through the same CTF-weighted averaging; the FRC-0.143
  resolutions and their ratio (target <= 1.3);
- wall-clock time and peak resident memory (each run in its own process) of a full
  default run with 50 classes, and the same for other N (``--scaling``);
- optionally ASPIRE's class averaging on a subset (``--aspire PYTHON``: a Python with
  ``aspire`` installed; it is GPL and never a dependency), time and purity side by side.

Examples::

    cryoflow bench classify2d
    cryoflow bench classify2d --n 5000 --scaling "" --iterations 15
    cryoflow bench classify2d --scaling 5000,20000,80000 --cache /tmp/c2d_bench --aspire /tmp/aspire-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TARGETS = "targets: purity >= 0.9, angles within 5°, resolution <= 1.3x oracle, 20k/box 64/K 50 <= 10 min on 2 cores"


def _stack(cache: Path, n: int, box: int, seed: int, junk: float) -> Path:
    from cryoflow.simulate.stack import simulate_stack

    folder = cache / f"stack_n{n}_b{box}_s{seed}_j{junk:g}"
    if not (folder / "particles.star").exists():
        t0 = time.perf_counter()
        simulate_stack(folder, n=n, box=box, pixel_size=2.5 * 64 / box, junk_fraction=junk, seed=seed)
        print(f"  simulated {n} particles (box {box}) in {time.perf_counter() - t0:.1f} s -> {folder}", flush=True)
    return folder / "particles.star"


def _run_process(star: Path, out: Path, classes: int, iterations: int, threads: int | None, device: str, seed: int):
    """Run ``cryoflow classify2d`` in its own process; return (wall s, CPU s, peak RSS MB, returncode)."""
    cmd = [
        sys.executable,
        "-m",
        "cryoflow",
        "classify2d",
        "--particles",
        str(star),
        "--out",
        str(out),
        "--classes",
        str(classes),
        "--iterations",
        str(iterations),
        "--device",
        device,
        "--seed",
        str(seed),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, CRYOFLOW_QUIET="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        print(output[-3000:])
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def half_set_resolution(particles, idx, alpha, centre, half, basis) -> float:
    """FRC-0.143 resolution (Å) of two half-set averages of particles ``idx`` with given poses.

    ``alpha`` (radians, the model's rotation: particle ≈ R_α G), ``centre`` ``(n, 2)``
    (dy, dx) pixels (particle centre from the box centre), ``half`` 0/1, ``basis`` the
    :class:`~cryoflow.classify2d.basis.PolarBasis` of the run's mask. Particles are
    centred, CTF-multiplied, masked, rotated back exactly in the basis, summed per half and
    divided by the summed CTF² (no regularisation): both poses sets go through the same code.
    """
    from cryoflow.classify2d.averages import frc, resolution_from_frc
    from cryoflow.classify2d.data import BatchPreparer
    from cryoflow.classify2d.run import _group_ctf

    box, apix = particles.box, particles.pixel_size
    prep = BatchPreparer(basis, apix)
    stage = basis.stage(box // 2)
    C = stage.C
    m = stage.order.double()
    nums = torch.zeros(2, 2 * C, dtype=torch.float64)
    dens = torch.zeros(2, basis.n_rings, dtype=torch.float64)
    for start in range(0, len(idx), 512):
        sl = slice(start, start + 512)
        part = idx[sl]
        images = torch.from_numpy(particles.read(part))
        ctf = _group_ctf(prep, particles, part, "cpu")
        p = prep(images, ctf, stage, torch.as_tensor(centre[sl], dtype=torch.float32))
        a, b = p.coeffs[:, :C].double(), p.coeffs[:, C:].double()
        ang = torch.as_tensor(alpha[sl], dtype=torch.float64)[:, None] * m[None, :]
        re = a * torch.cos(ang) - b * torch.sin(ang)  # c e^{+imα}: rotate back
        im = a * torch.sin(ang) + b * torch.cos(ang)
        h = torch.as_tensor(half[sl])
        for k in (0, 1):
            nums[k] += torch.cat([re[h == k].sum(0), im[h == k].sum(0)])
            dens[k] += p.ctf2[h == k].double().sum(0)
    images = basis.image_of(nums.float() @ stage.synthesis)
    spec = torch.fft.rfft2(images)
    from cryoflow.classify2d.averages import ring_map

    rings = ring_map(box).clamp_max(basis.n_rings - 1)
    spec = spec / (dens.float()[:, rings] + 1e-6 * float(dens.max()))
    avg = torch.fft.irfft2(spec * (ring_map(box) < basis.n_rings), s=(box, box)) * basis.mask
    curve = frc(avg[:1], avg[1:], basis.n_rings)
    res, _ = resolution_from_frc(curve, box, apix, box // 2)
    return float(res[0])


def resolution_vs_oracle(star: Path, result_dir: Path, n_classes: int = 8, seed: int = 0) -> dict:
    """Half-set resolution of the largest good classes with our poses and with the true poses."""
    from cryoflow.classify2d.data import read_particles
    from cryoflow.classify2d.truth import score_classes
    from cryoflow.io import read_table

    table = read_table(result_dir / "particles.star").table
    scores = score_classes(table)
    per = scores["per_particle"]
    particles = read_particles(star)
    apix = particles.pixel_size
    from cryoflow.io import read_blocks

    general = read_blocks(result_dir / "model.star")["model_general"]
    from cryoflow.classify2d.basis import PolarBasis

    basis = PolarBasis(particles.box, float(general["rlnParticleDiameter"].iloc[0]) / apix / 2, 3.0)
    klass = table["rlnClassNumber"].to_numpy()
    rng = np.random.default_rng(seed)
    rows = []
    pure = per["pure"].to_numpy()
    for k in np.bincount(klass[pure]).argsort()[::-1][:n_classes]:
        idx = np.flatnonzero((klass == k) & pure)
        if len(idx) < 40:
            continue
        half = rng.integers(0, 2, len(idx))
        ours_alpha = -np.radians(table["rlnAnglePsi"].to_numpy(float)[idx])
        ours_centre = (
            -np.stack([table["rlnOriginYAngst"].to_numpy(float)[idx], table["rlnOriginXAngst"].to_numpy(float)[idx]], 1)
            / apix
        )
        true_alpha = -np.radians(per["twist"].to_numpy()[idx])
        true_centre = (
            -np.stack(
                [table["cfTrueOriginYAngst"].to_numpy(float)[idx], table["cfTrueOriginXAngst"].to_numpy(float)[idx]], 1
            )
            / apix
        )
        ours = half_set_resolution(particles, idx, ours_alpha, ours_centre, half, basis)
        oracle = half_set_resolution(particles, idx, true_alpha, true_centre, half, basis)
        rows.append(
            {"class": int(k), "particles": len(idx), "ours_A": ours, "oracle_A": oracle, "ratio": ours / oracle}
        )
    ratios = [r["ratio"] for r in rows]
    return {"classes": rows, "median_ratio": float(np.median(ratios)) if ratios else float("nan")}


ASPIRE_SCRIPT = r"""
import json, sys, time
import numpy as np, mrcfile
from aspire.source import ArrayImageSource
from aspire.denoising import DefaultClassAvgSource
paths, n_nbor, out, apix = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
images = []
for p, i in paths:
    with mrcfile.mmap(p, mode="r") as m:
        images.append(np.asarray(m.data[i], dtype=np.float64))
images = np.stack(images)
t0 = time.perf_counter()
src = ArrayImageSource(images, pixel_size=apix)
avgs = DefaultClassAvgSource(src, n_nbor=n_nbor)
avgs.images[:10]
indices = np.asarray(avgs.class_indices)
np.save(out, indices)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def _aspire(python: str, star: Path, n: int, classes_dir_ours: Path | None, seed: int) -> dict:
    """ASPIRE's class averaging (rotationally invariant features + nearest neighbours) on ``n`` particles."""
    from cryoflow.classify2d.data import read_particles
    from cryoflow.classify2d.truth import score_classes

    particles = read_particles(star)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(particles), min(n, len(particles)), replace=False))
    paths = [[str(particles.files[particles.file_index[i]]), int(particles.slice_index[i])] for i in idx]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "classes.npy"
        listing = Path(tmp) / "particles.json"  # a file: thousands of paths overflow a command line
        listing.write_text(json.dumps(paths))
        proc = subprocess.run(
            [python, "-c", ASPIRE_SCRIPT, str(listing), "20", str(out), str(particles.pixel_size)],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
        nbrs = np.load(out)
    table = particles.table.table.iloc[idx].reset_index(drop=True)
    purities = []
    for row in nbrs:  # each class: a particle and its nearest neighbours (classes overlap)
        sub = table.iloc[row].copy()
        sub["rlnClassNumber"] = 1
        sub["rlnAnglePsi"] = 0.0
        good = sub["cfIsJunk"].to_numpy() == 0
        if good.sum() == 0:
            continue
        purities.append(score_classes(sub)["purity"])
    return {
        "particles": len(idx),
        "seconds": seconds,
        "purity": float(np.mean(purities)) if purities else float("nan"),
        "classes": int(len(nbrs)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="cryoflow bench classify2d", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000, help="particles of the main run")
    parser.add_argument("--box", type=int, default=64, help="box, pixels (pixel size 2.5 Å at 64)")
    parser.add_argument("--classes", type=int, default=50, help="K")
    parser.add_argument("--iterations", type=int, default=25, help="iterations of every run")
    parser.add_argument("--junk", type=float, default=0.1, help="fraction of junk picks")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated stacks")
    parser.add_argument("--scaling", default="5000,20000,80000", help='comma-separated N for time/memory ("": none)')
    parser.add_argument("--cache", help="folder keeping the simulated stacks between runs (default: temporary)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per run (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scaling-iterations", type=int, help="iterations of the scaling runs (default: --iterations)")
    parser.add_argument(
        "--result", metavar="DIR", help="score this classify2d output of the main stack instead of running it"
    )
    parser.add_argument("--aspire", metavar="PYTHON", help="a Python with ASPIRE installed: compare on a subset")
    parser.add_argument("--aspire-n", type=int, default=2000, help="particles for the ASPIRE comparison")
    args = parser.parse_args(argv)

    figures: dict = {"targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="c2d_bench_") as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        print(f"classify2d benchmark ({TARGETS})", flush=True)
        star = _stack(cache, args.n, args.box, args.seed, args.junk)
        if args.result:
            out = Path(args.result)
            summary = json.loads((out / "summary.json").read_text())
            seconds, cpu, rss = summary["seconds"], float("nan"), float("nan")
        else:
            out = Path(tmp) / f"run_{args.n}"
            seconds, cpu, rss, code = _run_process(
                star, out, args.classes, args.iterations, args.threads, args.device, 0
            )
            if code:
                raise SystemExit(f"classify2d failed on {star}")
        from cryoflow.classify2d.truth import score_classes
        from cryoflow.io import read_table

        table = read_table(out / "particles.star").table
        scores = {k: v for k, v in score_classes(table).items() if k != "per_particle"}
        figures["main"] = {
            "particles": args.n,
            "box": args.box,
            "classes": args.classes,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "peak_rss_mb": rss,
            "threads": args.threads or torch.get_num_threads(),
            **scores,
        }
        figures["resolution"] = resolution_vs_oracle(star, out)
        scaling = {} if args.result else {args.n: (seconds, cpu, rss)}
        scaling_iterations = args.scaling_iterations or args.iterations
        for n in [int(x) for x in args.scaling.split(",") if x.strip()]:
            if n in scaling:
                continue
            s = _stack(cache, n, args.box, args.seed, args.junk)
            sec, cpu_n, mem, code = _run_process(
                s, Path(tmp) / f"run_{n}", args.classes, scaling_iterations, args.threads, args.device, 0
            )
            scaling[n] = (sec, cpu_n, mem) if not code else (float("nan"),) * 3
        figures["scaling"] = {
            str(n): {"seconds": v[0], "cpu_seconds": v[1], "peak_rss_mb": v[2]} for n, v in sorted(scaling.items())
        }
        if args.aspire:
            figures["aspire"] = _aspire(args.aspire, star, args.aspire_n, out, args.seed)
            sub = _stack(cache, args.aspire_n, args.box, args.seed + 100, args.junk)
            sec, _, _, code = _run_process(
                sub,
                Path(tmp) / "run_aspire_ours",
                max(2, min(args.classes, args.aspire_n // 100)),
                args.iterations,
                args.threads,
                args.device,
                0,
            )
            t2 = read_table(Path(tmp) / "run_aspire_ours" / "particles.star").table if not code else None
            figures["aspire"]["ours_same_size"] = {
                "seconds": sec,
                "purity": score_classes(t2)["purity"] if t2 is not None else float("nan"),
            }

    m = figures["main"]
    print(f"  main run: {m['particles']} particles, box {m['box']}, K {m['classes']}, {m['threads']} threads")
    print(f"    purity (good particles, species + view within 15°)  {m['purity']:.3f}")
    print(f"    junk in junk-majority classes                      {m['junk_in_junk_classes']:.3f}")
    print(
        f"    in-plane angle error median / p90 (°)               {m['angle_error_median']:.2f} / {m['angle_error_p90']:.2f}"
    )
    print(f"    in-plane angle within 5°                            {m['angle_within_5']:.3f}")
    print(f"    time: wall {m['seconds']:.0f} s, CPU {m['cpu_seconds']:.0f} s; peak RSS {m['peak_rss_mb']:.0f} MB")
    r = figures["resolution"]
    for row in r["classes"]:
        print(
            f"    class {row['class']:>3} ({row['particles']:>4} pure): {row['ours_A']:.2f} Å, oracle {row['oracle_A']:.2f} Å, "
            f"ratio {row['ratio']:.2f}"
        )
    print(f"    resolution ratio (median over classes)              {r['median_ratio']:.2f}")
    print(f"  scaling, {scaling_iterations} iterations (N: wall s, CPU s, peak RSS MB):")
    for n, v in figures["scaling"].items():
        per = v["seconds"] / int(n) * 1000 if math.isfinite(v["seconds"]) else float("nan")
        print(
            f"    {n:>6}: {v['seconds']:.0f} s ({per:.1f} ms/particle), CPU {v['cpu_seconds']:.0f} s, "
            f"{v['peak_rss_mb']:.0f} MB"
        )
    if "aspire" in figures:
        a = figures["aspire"]
        if "error" in a:
            print(f"  ASPIRE: failed ({a['error']})")
        else:
            o = a["ours_same_size"]
            print(
                f"  ASPIRE class averaging on {a['particles']} particles: {a['seconds']:.0f} s, purity {a['purity']:.3f}; "
                f"classify2d on a stack of the same size: {o['seconds']:.0f} s, purity {o['purity']:.3f}"
            )
    return figures
