"""Benchmark of the simulator: ``cryoflow bench simulate [options]``.

Figures (issue 3): seconds per 4096² micrograph with 300 particles at 0.83 Å/px (target
under 5 s on 2 CPU cores; median of ``--repeats`` after a warm-up, species built
beforehand, torch's default threads), seconds to write the ``tiny`` and ``demo`` presets
(species building, worker processes, file writing and the report included; Python and
torch start-up excluded), and the peak memory (resident set) of each, and of each worker
process where the dataset is simulated in parallel. Each case runs in a fresh process so
that its peak memory is its own.

Examples::

    cryoflow bench simulate
    cryoflow bench simulate --skip-demo --repeats 5
    cryoflow bench simulate --device cuda --json figures.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set in MB of this process (or of its largest finished child process)."""
    peak = resource.getrusage(who).ru_maxrss  # Linux reports KB, macOS bytes
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _case_micrograph(
    shape: int, n_particles: int, pixel_size: float, repeats: int, device: str, threads: int | None
) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from cryoflow.simulate.dataset import resolve_device
    from cryoflow.simulate.micrograph import benchmark

    out = benchmark(
        shape=(shape, shape),
        n_particles=n_particles,
        pixel_size=pixel_size,
        repeats=repeats,
        device=resolve_device(device),
    )
    out["peak_mb"] = _peak_mb()
    return out


def _case_preset(preset: str, device: str, threads: int | None, report: bool) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    import matplotlib  # noqa: F401  (imported before the clock starts, like torch)

    from cryoflow.simulate.dataset import resolve_device, simulate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = simulate_dataset(Path(tmp) / "data", preset, seed=0, device=resolve_device(device), report=report)
        seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "n_micrographs": result.n_micrographs,
        "n_particles": result.n_particles,
        "reasons": result.reasons,
        "peak_mb": _peak_mb(),
        "worker_peak_mb": _peak_mb(resource.RUSAGE_CHILDREN),  # each worker process (0 when none)
        "torch_threads": torch.get_num_threads(),
    }


def _run(fn, *args) -> dict:
    """Run ``fn(*args)`` in a fresh (spawned) process and return its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="cryoflow bench simulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096, help="micrograph size in pixels (square)")
    parser.add_argument("--particles", type=int, default=300, help="particles per micrograph")
    parser.add_argument("--pixel-size", type=float, default=0.83, help="Å/pixel of the big micrograph")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the big micrograph (median reported)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="where to compute")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, the cores)")
    parser.add_argument("--skip-demo", action="store_true", help="skip the demo preset (about a minute on 2 cores)")
    parser.add_argument("--skip-micrograph", action="store_true", help="skip the big micrograph")
    args = parser.parse_args(argv)

    figures: dict = {"device": args.device}
    rows = []
    if not args.skip_micrograph:
        m = _run(_case_micrograph, args.size, args.particles, args.pixel_size, args.repeats, args.device, args.threads)
        figures["micrograph"] = m
        figures["seconds_per_micrograph"] = m["seconds"]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in m["stages"].items() if v >= 0.05)
        rows.append(
            (
                f"{args.size}² micrograph, {args.particles} particles, {args.pixel_size} Å/px",
                f"{m['seconds']:.2f} s",
                f"{m['peak_mb']:.0f} MB",
                f"target < 5 s on 2 cores; runs {', '.join(f'{r:.2f}' for r in m['runs'])}; {m['n_placed']} placed; {stages}",
            )
        )
    presets = ["tiny"] if args.skip_demo else ["tiny", "demo"]
    for name in presets:
        p = _run(_case_preset, name, args.device, args.threads, True)
        q = _run(_case_preset, name, args.device, args.threads, False) if name == "tiny" else None
        figures[name] = p
        figures[f"{name}_seconds"] = p["seconds"]
        note = f"{p['n_micrographs']} micrographs, {p['n_particles']} particles, report included"
        if q is not None:
            figures[f"{name}_seconds_without_report"] = q["seconds"]
            note += f"; {q['seconds']:.2f} s without the report"
        target = {"tiny": "target < 1 s", "demo": "target < 60 s on 2 cores"}[name]
        if p["worker_peak_mb"] > 0:
            note += f"; worker processes peak {p['worker_peak_mb']:.0f} MB each"
        rows.append((f"preset {name}", f"{p['seconds']:.2f} s", f"{p['peak_mb']:.0f} MB", f"{target}; {note}"))
        figures["torch_threads"] = p["torch_threads"]

    width = max(len(r[0]) for r in rows)
    print(
        f"cryoflow simulate benchmark (device {args.device}, torch threads {figures.get('torch_threads', 'default')})"
    )
    print(f"{'case':<{width}}  {'time':>9}  {'peak RSS':>9}  notes")
    for case, t, mem, note in rows:
        print(f"{case:<{width}}  {t:>9}  {mem:>9}  {note}")
    return figures
