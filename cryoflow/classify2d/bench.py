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
- wall-clock time and memory (each run in its own process) of a full default run with 50
  classes, and the same for other N (``--scaling``). Memory is peak RSS split into its
  anonymous part (heap, tensors: what a run needs) and its file-backed part (shared
  libraries, pages of the memory-mapped stacks, which the kernel drops when it needs
  to), sampled from /proc every 50 ms (:class:`MemorySampler`);
- optionally ASPIRE's class averaging (``--aspire PYTHON``: a Python with ``aspire``
  installed; it is GPL and never a dependency) and classify2d on the same stack of
  ``--aspire-n`` particles, time and purity side by side (:func:`compare_aspire`).

Examples::

    cryoflow bench classify2d
    cryoflow bench classify2d --n 5000 --scaling "" --iterations 15
    cryoflow bench classify2d --scaling 5000,20000,80000 --cache /tmp/c2d_bench --threads 1
    cryoflow bench classify2d --aspire-only --aspire /tmp/aspire-venv/bin/python --aspire-n 5000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
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


def _proc_memory(pid: int) -> dict[str, float]:
    """RssAnon, RssFile, RssShmem (MB) of a process from /proc (empty where there is no /proc)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(value.split()[0]) / 1024
    except (OSError, ValueError):
        pass
    return out


class MemorySampler:
    """Peak anonymous and file-backed resident memory of a process, sampled every ``interval`` s.

    Peak RSS (``ru_maxrss``) counts file-backed pages too: pages of the memory-mapped particle
    stacks and of the shared libraries, which the kernel can drop at any time. The anonymous
    part (heap, tensors) is what a run really needs. Sampling can miss a peak shorter than
    ``interval``.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        import threading

        self.pid, self.interval = pid, interval
        self.peak = {"RssAnon": 0.0, "RssFile": 0.0, "RssShmem": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, value in _proc_memory(self.pid).items():
                self.peak[key] = max(self.peak[key], value)
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"anon": self.peak["RssAnon"], "file": self.peak["RssFile"] + self.peak["RssShmem"]}


def _run_process(star: Path, out: Path, classes: int, iterations: int, threads: int | None, device: str, seed: int):
    """Run ``cryoflow classify2d`` in its own process.

    Returns (wall s, CPU s, memory, returncode); memory: ``{"hwm": peak RSS, "anon": peak
    anonymous RSS, "file": peak file-backed RSS}`` in MB (the last two sampled from /proc,
    NaN where there is none)."""
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
    sampler = MemorySampler(proc.pid)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    memory = sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        print(output[-3000:])
    if not memory["anon"]:
        memory = {"anon": float("nan"), "file": float("nan")}
    memory["hwm"] = usage.ru_maxrss / 1024
    return seconds, usage.ru_utime + usage.ru_stime, memory, proc.returncode


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
import numpy as np
from aspire.source import ArrayImageSource
from aspire.denoising import DefaultClassAvgSource
images_path, n_nbor, n_avg, out, apix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
images = np.load(images_path)
t0, c0 = time.perf_counter(), time.process_time()
src = ArrayImageSource(images, pixel_size=apix)
avgs = DefaultClassAvgSource(src, n_nbor=n_nbor)  # RIRClass2D (FSPCA + bispectrum + neighbours), BFTAverager2D
classes, refl = np.asarray(avgs.class_indices), np.asarray(avgs.class_refl)
t1, c1 = time.perf_counter(), time.process_time()
sel = np.unique(np.linspace(0, len(classes) - 1, n_avg).round().astype(int))
avgs.averager.average(classes[sel], refl[sel])
t2, c2 = time.perf_counter(), time.process_time()
np.savez(out, classes=classes, refl=refl)
print(json.dumps({"classify_seconds": t1 - t0, "average_seconds": t2 - t1, "averaged": int(len(sel)),
                  "classify_cpu_seconds": c1 - c0, "average_cpu_seconds": c2 - c1}))
"""


def phase_flipped(particles, idx: np.ndarray) -> np.ndarray:
    """Particles ``idx`` with their CTF's phases flipped (multiplied by sign(CTF)): ``(n, B, B)`` float32.

    ASPIRE's own pipelines phase-flip before class averaging (``ImageSource.phase_flip``);
    the images it gets here carry no CTF metadata, so the flip is done for it.
    """
    from cryoflow.classify2d.basis import PolarBasis
    from cryoflow.classify2d.data import BatchPreparer
    from cryoflow.classify2d.run import _group_ctf

    box = particles.box
    prep = BatchPreparer(PolarBasis(box, box / 2 - 2, 3.0), particles.pixel_size)
    out = np.empty((len(idx), box, box), dtype=np.float32)
    for start in range(0, len(idx), 512):
        part = idx[start : start + 512]
        spec = torch.fft.rfft2(torch.from_numpy(particles.read(part)))
        sign = torch.sign(_group_ctf(prep, particles, part, "cpu"))
        out[start : start + len(part)] = torch.fft.irfft2(spec * sign, s=(box, box)).numpy()
    return out


def group_purity(table, groups: np.ndarray, reflected: np.ndarray | None = None) -> dict:
    """Purity of overlapping groups (ASPIRE's classes: a reference particle and its neighbours).

    ``groups`` ``(G, n)`` particle rows, ``reflected`` ``(G, n)`` bool (a neighbour matched
    after mirroring). Each group is scored as :func:`~cryoflow.classify2d.truth.score_classes`
    scores one class: the share of its good members that have the group's dominant species
    and a view within 15° of its central view. A mirrored projection is the projection from
    the antipodal direction, so a reflected member's view is taken as the antipode of its
    true direction (ASPIRE averages it mirrored). Groups whose reference particle is junk are
    left out. Returns the mean over groups (``purity``; with groups of one size this is the
    size-weighted mean, the same figure as classify2d's purity), ``groups`` scored.
    """
    from cryoflow.classify2d.truth import score_classes

    junk = table["cfIsJunk"].to_numpy().astype(bool) | ~np.isfinite(table["cfTrueTilt"].to_numpy(float))
    values = []
    for g, row in enumerate(groups):
        if junk[row[0]]:
            continue
        sub = table.iloc[row].reset_index(drop=True)  # a neighbour may appear twice (plain and mirrored)
        if reflected is not None and reflected[g].any():
            r = reflected[g]
            tilt, rot = sub["cfTrueTilt"].to_numpy(float), sub["cfTrueRot"].to_numpy(float)
            sub["cfTrueTilt"] = np.where(r, 180.0 - tilt, tilt)
            sub["cfTrueRot"] = np.where(r, rot + 180.0, rot)
        sub["rlnClassNumber"] = 1
        sub["rlnAnglePsi"] = 0.0
        values.append(score_classes(sub)["purity"])
    return {"purity": float(np.mean(values)) if values else float("nan"), "groups": len(values)}


def compare_aspire(
    python: str,
    star: Path,
    out: Path,
    classes: int,
    iterations: int = 25,
    threads: int | None = None,
    device: str = "cpu",
    timeout: float = 3600,
) -> dict:
    """ASPIRE's class averaging on the stack of ``star``, scored like a classify2d run with ``classes``.

    Both tools see the same particles. classify2d's classes hold N/K particles on average, so
    ASPIRE's neighbourhoods get ``n_nbor = N/K`` (the reference included); purity as in
    :func:`group_purity`. ASPIRE's default ``DefaultClassAvgSource`` (RIRClass2D: steerable
    PCA, bispectrum, nearest neighbours with reflections; BFTAverager2D: rotation + translation
    search per neighbour) is timed in two parts: the classification (all neighbourhoods,
    which decide the purity) and the averaging of K neighbourhoods (as many averages as
    classify2d makes). Its default class selection would average all N neighbourhoods: that
    time is extrapolated as classification + N/K x the K averages. The images are
    phase-flipped for ASPIRE (:func:`phase_flipped`); classify2d gets the raw particles and
    their CTFs. ASPIRE runs with one thread (``OMP_NUM_THREADS=1``); pass ``threads=1`` for
    classify2d to match. Purity is scored on a random sample of up to 2,000 neighbourhoods,
    also at ASPIRE's default size (50) and 10, next to random groups of the compared size.
    """
    from cryoflow.classify2d.data import read_particles
    from cryoflow.classify2d.truth import score_classes
    from cryoflow.io import read_table

    particles = read_particles(star)
    n = len(particles)
    n_nbor = max(2, round(n / classes))
    seconds, cpu, mem, code = _run_process(star, out, classes, iterations, threads, device, 0)
    ours = {"classes": classes, "seconds": seconds, "cpu_seconds": cpu, "peak_anon_mb": mem["anon"]}
    if not code:
        table = read_table(out / "particles.star").table
        ours["purity"] = score_classes(table)["purity"]
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images.npy"
        np.save(images, phase_flipped(particles, np.arange(n)))
        result = Path(tmp) / "classes.npz"
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                python,
                "-c",
                ASPIRE_SCRIPT,
                str(images),
                str(n_nbor),
                str(classes),
                str(result),
                str(particles.pixel_size),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        wall = time.perf_counter() - t0
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed", "ours": ours}
        times = json.loads(proc.stdout.strip().splitlines()[-1])
        data = np.load(result)
        groups, refl = data["classes"], data["refl"]
    table = particles.table.table.reset_index(drop=True)
    per_average = times["average_seconds"] / max(times["averaged"], 1)
    # purity of up to 2,000 neighbourhoods (a random sample: scoring all is slow and adds nothing),
    # at the compared size, ASPIRE's default n_nbor (50) and 10; and of random groups of the size
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(groups), min(len(groups), 2000), replace=False))
    by_size = {
        str(m): group_purity(table, groups[sample, :m], refl[sample, :m])["purity"]
        for m in sorted({10, 50, n_nbor})
        if m <= groups.shape[1]
    }
    random_groups = np.stack([np.concatenate([[i], rng.choice(n, n_nbor - 1, replace=False)]) for i in sample])
    aspire = {
        "n_nbor": n_nbor,
        "classify_seconds": times["classify_seconds"],
        "average_seconds": times["average_seconds"],
        "averaged": times["averaged"],
        "seconds": times["classify_seconds"] + times["average_seconds"],
        "cpu_seconds": times["classify_cpu_seconds"] + times["average_cpu_seconds"],
        "classify_cpu_seconds": times["classify_cpu_seconds"],
        "average_cpu_seconds": times["average_cpu_seconds"],
        "default_pipeline_cpu_seconds_estimate": times["classify_cpu_seconds"]
        + times["average_cpu_seconds"] / max(times["averaged"], 1) * n,
        "default_pipeline_seconds_estimate": times["classify_seconds"] + per_average * n,
        "process_seconds": wall,
        **group_purity(table, groups[sample], refl[sample]),
        "purity_by_neighbourhood_size": by_size,
        "random_groups_purity": group_purity(table, random_groups)["purity"],
    }
    return {"particles": n, "ours": ours, "aspire": aspire}


def _print_memory(mem: dict) -> str:
    return f"peak RSS {mem['hwm']:.0f} MB (peaks: anonymous {mem['anon']:.0f}, file-backed {mem['file']:.0f})"


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
    parser.add_argument(
        "--aspire", metavar="PYTHON", help="a Python with ASPIRE installed: compare both on a stack of --aspire-n"
    )
    parser.add_argument("--aspire-n", type=int, default=5000, help="particles of the ASPIRE comparison")
    parser.add_argument(
        "--aspire-classes", type=int, help="K of the comparison (default: one class per 100 particles, at least 2)"
    )
    parser.add_argument("--aspire-only", action="store_true", help="run the ASPIRE comparison only")
    args = parser.parse_args(argv)

    figures: dict = {"targets": TARGETS}
    scaling_iterations = args.scaling_iterations or args.iterations
    with tempfile.TemporaryDirectory(prefix="c2d_bench_") as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        print(f"classify2d benchmark ({TARGETS})", flush=True)
        if not args.aspire_only:
            star = _stack(cache, args.n, args.box, args.seed, args.junk)
            nan_mem = {"hwm": float("nan"), "anon": float("nan"), "file": float("nan")}
            if args.result:
                out = Path(args.result)
                summary = json.loads((out / "summary.json").read_text())
                seconds, cpu, mem = summary["seconds"], float("nan"), nan_mem
            else:
                out = Path(tmp) / f"run_{args.n}"
                seconds, cpu, mem, code = _run_process(
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
                "peak_rss_mb": mem["hwm"],
                "peak_anon_mb": mem["anon"],
                "peak_file_mb": mem["file"],
                "threads": args.threads or torch.get_num_threads(),
                **scores,
            }
            figures["resolution"] = resolution_vs_oracle(star, out)
            scaling = {} if args.result else {args.n: (seconds, cpu, mem)}
            for n in [int(x) for x in args.scaling.split(",") if x.strip()]:
                if n in scaling:
                    continue
                s = _stack(cache, n, args.box, args.seed, args.junk)
                sec, cpu_n, mem_n, code = _run_process(
                    s, Path(tmp) / f"run_{n}", args.classes, scaling_iterations, args.threads, args.device, 0
                )
                scaling[n] = (sec, cpu_n, mem_n) if not code else (float("nan"), float("nan"), nan_mem)
                shutil.rmtree(Path(tmp) / f"run_{n}", ignore_errors=True)
            figures["scaling"] = {
                str(n): {
                    "seconds": v[0],
                    "cpu_seconds": v[1],
                    "peak_rss_mb": v[2]["hwm"],
                    "peak_anon_mb": v[2]["anon"],
                    "peak_file_mb": v[2]["file"],
                }
                for n, v in sorted(scaling.items())
            }
        if args.aspire:
            sub = _stack(cache, args.aspire_n, args.box, args.seed + 100, args.junk)
            k = args.aspire_classes or max(2, args.aspire_n // 100)
            figures["aspire"] = compare_aspire(
                args.aspire, sub, Path(tmp) / "run_aspire_ours", k, args.iterations, args.threads, args.device
            )

    if "main" in figures:
        m = figures["main"]
        print(f"  main run: {m['particles']} particles, box {m['box']}, K {m['classes']}, {m['threads']} threads")
        print(f"    purity (good particles, species + view within 15°)  {m['purity']:.3f}")
        print(f"    junk in junk-majority classes                      {m['junk_in_junk_classes']:.3f}")
        print(
            f"    in-plane angle error median / p90 (°)               {m['angle_error_median']:.2f} / {m['angle_error_p90']:.2f}"
        )
        print(f"    in-plane angle within 5°                            {m['angle_within_5']:.3f}")
        mem = {"hwm": m["peak_rss_mb"], "anon": m["peak_anon_mb"], "file": m["peak_file_mb"]}
        print(f"    time: wall {m['seconds']:.0f} s, CPU {m['cpu_seconds']:.0f} s; {_print_memory(mem)}")
        r = figures["resolution"]
        for row in r["classes"]:
            print(
                f"    class {row['class']:>3} ({row['particles']:>4} pure): {row['ours_A']:.2f} Å, oracle {row['oracle_A']:.2f} Å, "
                f"ratio {row['ratio']:.2f}"
            )
        print(f"    resolution ratio (median over classes)              {r['median_ratio']:.2f}")
        print(f"  scaling, {scaling_iterations} iterations (N: wall s, CPU s, peak RSS; anonymous, file-backed):")
        for n, v in figures["scaling"].items():
            per = v["seconds"] / int(n) * 1000 if math.isfinite(v["seconds"]) else float("nan")
            mem = {"hwm": v["peak_rss_mb"], "anon": v["peak_anon_mb"], "file": v["peak_file_mb"]}
            print(
                f"    {n:>6}: {v['seconds']:.0f} s ({per:.1f} ms/particle), CPU {v['cpu_seconds']:.0f} s, {_print_memory(mem)}"
            )
    if "aspire" in figures:
        a = figures["aspire"]
        o = a["ours"]
        print(
            f"  classify2d, {o['classes']} classes: {o['seconds']:.0f} s (CPU {o['cpu_seconds']:.0f} s), "
            f"purity {o.get('purity', float('nan')):.3f}"
        )
        if "error" in a:
            print(f"  ASPIRE: failed ({a['error']})")
        else:
            s = a["aspire"]
            print(
                f"  ASPIRE class averaging on the same {a['particles']} particles (phase-flipped), "
                f"neighbourhoods of {s['n_nbor']}: classification {s['classify_seconds']:.0f} s + "
                f"{s['averaged']} averages {s['average_seconds']:.0f} s = {s['seconds']:.0f} s "
                f"(CPU {s['classify_cpu_seconds']:.0f} + {s['average_cpu_seconds']:.0f} s; its default selection "
                f"averages all {a['particles']}: ~{s['default_pipeline_seconds_estimate']:.0f} s, "
                f"CPU ~{s['default_pipeline_cpu_seconds_estimate']:.0f} s), "
                f"purity {s['purity']:.3f} over {s['groups']} neighbourhoods of good particles"
            )
            sizes = ", ".join(f"{m}: {v:.3f}" for m, v in s["purity_by_neighbourhood_size"].items())
            print(
                f"    ASPIRE purity by neighbourhood size ({sizes}); random groups of {s['n_nbor']}: "
                f"{s['random_groups_purity']:.3f}"
            )
    return figures
