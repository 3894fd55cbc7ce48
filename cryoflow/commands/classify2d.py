"""Reference-free 2D classification of a particle stack (maximum likelihood, CPU or CUDA).

Reads the extract step's particles.star (or any RELION 3.0/3.1 particle STAR file with
CTF columns) and its .mrcs stacks; writes classes.mrcs, model.star, particles.star (the
input columns plus rlnClassNumber, rlnAnglePsi, rlnOriginXAngst/YAngst,
rlnMaxValueProbDistribution, rlnNormCorrection), iterations/, summary.json and
report.html into --out. Defaults need no tuning: K from the number of particles, the
mask from the picking diameter (cfDiameter or the extract summary) or estimated from
the particles. An interrupted run resumes when started again with the same options.

Examples::

    cryoflow classify2d --particles run/extract/particles.star --out run/classify2d
    cryoflow classify2d --particles particles.star --out c2d --classes 50 --iterations 25 --mask-diameter 160
    cryoflow classify2d --particles particles.star --out c2d --device cuda --seed 1

    # a simulated stack with known truth to try it on
    python -c "from cryoflow.simulate import simulate_stack; simulate_stack('sim', n=5000)"
    cryoflow classify2d --particles sim/particles.star --out sim_c2d
"""

from __future__ import annotations

import argparse

from cryoflow.device import add_device_argument


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--particles", required=True, metavar="STAR", help="particle STAR file (extract's particles.star)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    parser.add_argument("--classes", type=int, metavar="K", help="number of classes (default: N/400, 2-100)")
    parser.add_argument("--iterations", type=int, default=25, metavar="N", help="iterations")
    parser.add_argument(
        "--mask-diameter",
        type=float,
        metavar="Å",
        help="diameter of the circular mask, Å (default: picking diameter + 10%%)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same input and seed: same output)")
    parser.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice, all cores)"
    )
    add_device_argument(parser)


def main(args: argparse.Namespace) -> int:
    import torch

    from cryoflow.classify2d.run import Settings, run_classify2d
    from cryoflow.device import resolve_device
    from cryoflow.errors import CryoflowError

    device = resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise CryoflowError(None, f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    settings = Settings(
        classes=args.classes, iterations=args.iterations, mask_diameter=args.mask_diameter, seed=args.seed
    )
    summary = run_classify2d(args.particles, args.out, settings, device=device)
    res = summary["median_resolution_angstrom"]
    print(
        f"classify2d: {summary['particles']} particles into {summary['classes']} classes in "
        f"{summary['seconds']:.0f} s; median class resolution "
        f"{res:.1f} Å -> {args.out}"
        if res is not None
        else f"classify2d: done -> {args.out}"
    )
    return 0
