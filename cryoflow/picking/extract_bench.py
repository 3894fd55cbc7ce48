"""``cryoflow bench extract``: particles per second on simulated 4096² micrographs, and quality checks against truth.

Simulates ``--micrographs`` micrographs (default 3) of ``--size``² pixels (4096) at 0.83 Å/px
with about 300 particles of a 150 Å procedural species each (``cryoflow.simulate``), lists each
``--repeat`` times (default 4; copies under other names, so the rate is the steady one of a
long run rather than the first micrographs' one-time costs: buffers, caches), writes a
micrographs STAR (true CTF) and the true coordinates, then runs :func:`run_extract` in a few
configurations (automatic box; the same in float16; ``--bin 2``; ``--bin 4 --phase-flip``;
the automatic box again with the micrographs on disk) in ``--runs`` rounds (default 5; one
run of each configuration per round, so a slow spell of the machine hits all of them: on a
VM the rate of the same run can vary twofold), printing each round's rates, then for each
configuration the median and the range of particles/s, the micrographs read and the stacks
written in MB/s, and the checks: particles dropped at the edges equal to what geometry says,
the background ring's mean (≈ 0) and standard deviation (≈ 1), and the offset of the average
particle's centre of mass from the box centre (target < 1 px), and the CPU time the process
spent per 1,000 particles, user and system (the system part is mostly the stacks copied into
the page cache: on a VM it swings with the host, and the rate with it).

The rate counts checking the micrographs, reading them, cutting, processing and writing the
stacks (target >= 5,000 particles/s on 2 CPU cores). Before each run the micrographs are read
into the page cache (not timed), as they are when extraction follows picking; the stacks go to
the page cache: the disks' own rates are not measured. The previous run's stacks are deleted
just before each run, so the run's stacks land in memory freed a moment ago, as in a long run
on a machine whose memory is full of page cache (the kernel reuses it). On a VM that reports
free memory to its host (``/sys/module/page_reporting``), memory left free for a few seconds
is handed back, and the guest faults on every 4 KiB page it touches again: measured here, the
same run took 1.1-1.5 s of system time per 2,440 particles of box 288 in memory freed 5 s
before, against 0.23-0.35 s (once 0.73 s) in memory freed just before (1,950-2,390 against
2,970-4,690 particles/s). The first run, and a run writing more than the one before it (the
run from disk after ``--bin 4``), still land partly in memory that was free for longer, and the
system time of the same configuration still varies from run to run (box 288: 0.15-0.29 s per
1,000 particles over three runs of this bench here, against 0.21-0.33 s when each run's stacks
were deleted right after it; 0.11-0.30 s over seven runs with the 2 MiB chunks of
:data:`particle_images.CHUNK_PIXELS`, medians of 2,827-5,544 particles/s).

Since normalization runs in two numba passes (:mod:`cryoflow.picking.cpu_kernels`), and
halving splits rows into even and odd samples in one, five runs of this bench here on one day
gave medians of 6,232-10,973 particles/s for the automatic box (user CPU 0.090-0.127 s per
1,000 particles, against about 0.30 s before the numba passes), 8,944-11,023 in float16,
7,120-7,403 for bin 4 + phase flip and 6,908-7,037 for bin 2, but 4,857 for bin 2 in a slow
spell of the machine (user CPU 0.299 s per 1,000 particles against 0.234-0.238 in the other
four; every configuration was slower then). On a slower day four runs of the code before the
split gave 4,621-4,910 for bin 2 and 6,241-8,161 for the automatic box. The binned
configurations are bound by the Fourier binning of each whole micrograph: about 35-50 ms per
4096² micrograph on one core for bin 2 (:func:`particle_images.halve`; its FFTs take about
23 ms timed alone; in a sampling profile of bin-2 runs the split into even and odd samples,
the first read of the memory-mapped micrograph, took a fifth of the halving), 80 % of their
work at this bench's 203 particles per micrograph. The first round includes numba's start (about 0.7 s in
a fresh process: import and loading the compiled kernels from their cache).

The last configuration drops the micrographs from the page cache instead
(``posix_fadvise(DONTNEED)``), so they are read from the disk as the run goes (extraction
reads each one ahead, :func:`cryoflow.io.prefetch`): its "in MB/s" shows what the disk
delivers. A long run cannot outpace either disk: compare both MB/s with what yours sustain.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

#: (label, run_extract options, micrographs in the page cache before each run)
CONFIGS = [
    ("auto box", {}, True),
    ("auto box, float16", {"float16": True}, True),
    ("bin 2", {"binning": 2.0}, True),
    ("bin 4 + phase flip", {"binning": 4.0, "phase_flip": True}, True),
    ("auto box, from disk", {}, False),
]


def set_cached(files: list[Path], cached: bool) -> None:
    """Read ``files`` into the page cache (``cached``) or drop them from it (``posix_fadvise(DONTNEED)``; clean pages).

    Not timed: sets the state a run starts from. Where the advice is unavailable the files stay
    as they are."""
    for path in files:
        if cached:
            with open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass
        elif hasattr(os, "posix_fadvise"):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def simulate_inputs(
    folder: Path, n: int, size: int, pixel_size: float, particles: int, seed: int, repeat: int = 1
) -> tuple[Path, Path]:
    """Write ``n`` simulated micrographs, ``micrographs.star`` (true CTF) and ``particles_truth.star``; return both STARs.

    ``repeat`` > 1 lists each micrograph that many times (copies ``mic_000_r1.mrc``, ... with
    the same CTF and picks; files of their own, so none is read from memory because another was)."""
    from cryoflow.io import StarTable, make_optics, write_mrc, write_table
    from cryoflow.simulate.micrograph import MicrographSpec, simulate_micrograph
    from cryoflow.simulate.structures import procedural_species

    species = [procedural_species(150.0, pixel_size, seed=3)]
    rng = np.random.default_rng(seed)
    mic_rows, frames = [], []
    for i in range(n):
        du = float(rng.uniform(8000, 20000))
        spec = MicrographSpec(
            shape=(size, size),
            pixel_size=pixel_size,
            n_particles=particles,
            defocus_u=du + 200,
            defocus_v=du - 200,
            defocus_angle=float(rng.uniform(0, 180)),
            detector="falcon4",
            seed=seed + i,
        )
        sim = simulate_micrograph(spec, species)
        first = f"Micrographs/mic_{i:03d}.mrc"
        write_mrc(folder / first, sim.image, pixel_size)
        for r in range(repeat):
            name = first if r == 0 else f"Micrographs/mic_{i:03d}_r{r}.mrc"
            if r:
                shutil.copyfile(folder / first, folder / name)
            mic_rows.append(
                {
                    "rlnMicrographName": name,
                    "rlnOpticsGroup": 1,
                    "rlnDefocusU": spec.defocus_u,
                    "rlnDefocusV": spec.defocus_v,
                    "rlnDefocusAngle": spec.defocus_angle,
                    "rlnCtfMaxResolution": 4.0,
                }
            )
            p = sim.particles
            frames.append(
                pd.DataFrame(
                    {
                        "rlnMicrographName": name,
                        "rlnCoordinateX": p["x"].to_numpy(float),
                        "rlnCoordinateY": p["y"].to_numpy(float),
                        "cfSpecies": p["species"].astype(str).to_numpy(),
                        "cfIsJunk": p["is_junk"].astype(int).to_numpy(),
                    }
                )
            )
    optics = make_optics(pixel_size, 300.0, 2.7, 0.07)
    mics = folder / "micrographs.star"
    write_table(mics, StarTable(optics, pd.DataFrame(mic_rows), "micrographs"))
    truth = pd.concat(frames, ignore_index=True)
    truth_path = folder / "particles_truth.star"
    write_table(truth_path, StarTable(optics, truth.assign(rlnOpticsGroup=1), "particles"))
    return mics, truth_path


def expected_drops(truth: pd.DataFrame, window: int, shape: tuple[int, int]) -> int:
    """Picks whose ``window``-pixel box (centred as RELION centres it) leaves an ``(H, W)`` micrograph."""
    h, w = shape
    x0 = np.floor(truth["rlnCoordinateX"].to_numpy(float) + 0.5) - window // 2
    y0 = np.floor(truth["rlnCoordinateY"].to_numpy(float) + 0.5) - window // 2
    return int(((x0 < 0) | (y0 < 0) | (x0 + window > w) | (y0 + window > h)).sum())


def stack_checks(out: Path, bg_radius: float) -> dict:
    """Background ring mean/std (over all particles) and the average's centre-of-mass offset (px)."""
    from cryoflow.io import open_stack, read_table
    from cryoflow.picking.particle_images import background_mask

    table = read_table(out / "particles.star", "particles").table
    stacks = []
    for path in sorted({n.split("@", 1)[1] for n in table["rlnImageName"]}):
        with open_stack(out / path) as stack:
            stacks.append(stack[:])
    images = np.concatenate(stacks)
    box = images.shape[-1]
    mask = background_mask(box, bg_radius).numpy()
    bg = images[:, mask]
    return {
        "bg_mean": float(bg.mean()),
        "bg_std": float(bg.std(axis=1).mean()),
        "centre_offset_px": centre_offset(images.mean(0)),
    }


def centre_offset(average: np.ndarray) -> float:
    """Distance (px) from the box centre ``(B // 2, B // 2)`` to the centre of mass of the positive part of ``average``
    within the central circle of diameter box / 2 (the particle, not the CTF fringes)."""
    box = average.shape[-1]
    r = np.arange(box) - box // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    weight = np.clip(average, 0, None) * ((yy**2 + xx**2) <= (box / 4) ** 2)
    total = weight.sum()
    if total <= 0:
        return float("inf")
    return float(np.hypot((weight * yy).sum() / total, (weight * xx).sum() / total))


def main(argv: list[str] | None = None) -> dict:
    from cryoflow.picking.extract import run_extract
    from cryoflow.picking.particle_images import BG_DIAMETER_FRACTION

    parser = argparse.ArgumentParser(prog="cryoflow bench extract", description=__doc__)
    parser.add_argument("--micrographs", type=int, default=3, help="simulated micrographs")
    parser.add_argument("--size", type=int, default=4096, help="micrograph size, pixels")
    parser.add_argument("--pixel-size", type=float, default=0.83, help="Å/pixel")
    parser.add_argument("--repeat", type=int, default=4, help="times each micrograph is listed (copies)")
    parser.add_argument("--particles", type=int, default=300, help="particles per micrograph")
    parser.add_argument("--diameter", type=float, default=150.0, help="particle diameter for the automatic box, Å")
    parser.add_argument("--runs", type=int, default=5, help="runs of each configuration (the median is reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    figures: dict = {
        "micrographs": args.micrographs,
        "repeat": args.repeat,
        "size": args.size,
        "pixel_size": args.pixel_size,
        "configs": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        mics, truth_path = simulate_inputs(
            tmp, args.micrographs, args.size, args.pixel_size, args.particles, args.seed, max(1, args.repeat)
        )
        print(
            f"simulated {args.micrographs} micrographs of {args.size}² in {time.perf_counter() - t0:.1f} s, "
            f"each listed {max(1, args.repeat)} times"
        )
        from cryoflow.io import read_table

        truth = read_table(truth_path, "particles").table
        files = [tmp / name for name in read_table(mics, "micrographs").table["rlnMicrographName"]]
        input_bytes = sum(f.stat().st_size for f in files)
        rates: dict[str, list[float]] = {label: [] for label, _, _ in CONFIGS}
        cpu: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in CONFIGS}  # (user, system) s
        summaries: dict[str, dict] = {}
        checks: dict[str, dict] = {}
        previous: Path | None = None  # the last run's stacks, deleted just before the next run (see the module doc)
        for run in range(max(1, args.runs)):  # rounds over the configurations: the machine's slow spells hit them all
            for i, (label, options, cached) in enumerate(CONFIGS):
                out = tmp / f"out{i}_{run}"
                set_cached(files, cached)
                if previous is not None:
                    shutil.rmtree(previous)  # gigabytes of stacks: checked, not kept
                os.sync()  # not timed: the inputs are on disk, nothing is being flushed meanwhile
                before = os.times()
                s = summaries[label] = run_extract(
                    mics, truth_path, out, diameter=args.diameter, device=args.device, report=False, **options
                )
                after = os.times()
                rates[label].append(s["particles_per_second"])
                cpu[label].append((after.user - before.user, after.system - before.system))
                if run == 0:
                    checks[label] = stack_checks(out, BG_DIAMETER_FRACTION * s["box"] / 2)
                previous = out
            print(f"round {run + 1}: " + " / ".join(f"{r[-1]:.0f}" for r in rates.values()) + " particles/s")
        print(
            f"{'config':<22}{'box':>5}{'bin':>5}{'particles':>10}{'p/s':>9}{'range':>13}{'in MB/s':>8}{'out MB/s':>9}"
            f"{'dropped':>8}{'expected':>9}{'bg mean':>9}{'bg std':>8}{'centre px':>10}{'user/1k':>8}{'sys/1k':>7}"
        )
        for label, options, cached in CONFIGS:
            s, check, runs = summaries[label], checks[label], rates[label]
            drops = expected_drops(truth, s["window"], (args.size, args.size))
            row = {
                "box": s["box"],
                "bin": s["bin"],
                "window": s["window"],
                "n_particles": s["n_particles"],
                "particles_per_second": float(np.median(runs)),
                "particles_per_second_runs": runs,
                # CPU seconds of the whole process per 1,000 particles, medians over the runs
                "user_s_per_1000": float(np.median([u for u, _ in cpu[label]])) * 1000 / s["n_particles"],
                "system_s_per_1000": float(np.median([y for _, y in cpu[label]])) * 1000 / s["n_particles"],
                "micrographs_cached": cached,
                "dropped_at_edges": s["dropped_at_edges"],
                "expected_dropped": drops,
                **check,
            }
            figures["configs"][label] = row
            spread = f"{min(runs):.0f}-{max(runs):.0f}"
            item = 2 if options.get("float16") else 4
            row["stack_MB_per_second"] = row["particles_per_second"] * s["box"] ** 2 * item / 1e6
            row["micrograph_MB_per_second"] = row["particles_per_second"] * input_bytes / s["n_particles"] / 1e6
            print(
                f"{label:<22}{s['box']:>5}{s['bin']:>5g}{s['n_particles']:>10}{row['particles_per_second']:>9.0f}"
                f"{spread:>13}{row['micrograph_MB_per_second']:>8.0f}{row['stack_MB_per_second']:>9.0f}"
                f"{s['dropped_at_edges']:>8}{drops:>9}{check['bg_mean']:>9.3f}{check['bg_std']:>8.3f}"
                f"{check['centre_offset_px']:>10.2f}{row['user_s_per_1000']:>8.3f}{row['system_s_per_1000']:>7.3f}"
            )
    medians = [c["particles_per_second"] for c in figures["configs"].values() if c["micrographs_cached"]]
    print(
        f"extraction speed, micrographs in memory (medians): {min(medians):.0f}-{max(medians):.0f} particles/s "
        "(target >= 5,000)"
    )
    return figures
