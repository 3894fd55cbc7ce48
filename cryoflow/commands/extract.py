"""Cut picked particles out of micrographs into normalized .mrcs stacks, particles.star and a cryoSPARC .cs.

Reads a micrographs STAR (the CTF step's micrographs_ctf.star or micassess's
micrographs_good.star) and picks (a pick folder with coordinates.star, that file, or a
particle STAR with rlnMicrographName + rlnCoordinateX/Y). Writes into --out:
Particles/<micrograph>.mrcs (float32, or float16 with --float16; particles white, background mean 0 / std 1 outside a
circle of 0.75 x box), particles.star (RELION 3.1 optics + CTF columns), particles.cs
(cryoSPARC), summary.json and report.html. Without --box the box is 1.5 x the particle
diameter (--diameter, or diameter_A of the pick folder's summary.json) rounded up to an
FFT-friendly even size. Picks whose box leaves the micrograph are dropped and counted.

Examples::

    cryoflow extract --micrographs run/micassess/micrographs_good.star --coordinates run/pick --out run/extract
    cryoflow extract --micrographs run/ctf/micrographs_ctf.star --coordinates run/pick --out run/extract_bin2 --bin 2
    cryoflow extract --micrographs run/ctf/micrographs_ctf.star --coordinates run/pick/coordinates.star \\
        --out run/extract_pf --box 256 --phase-flip
    # particles at the simulator's true positions (cf* truth columns are carried)
    cryoflow extract --micrographs data/truth/micrographs_truth.star \\
        --coordinates data/truth/particles_truth.star --diameter 120 --out truth_particles
"""

from __future__ import annotations

import argparse

from cryoflow.device import add_device_argument


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--micrographs", required=True, metavar="STAR", help="micrographs STAR with CTF columns")
    parser.add_argument(
        "--coordinates",
        required=True,
        metavar="PATH",
        help="pick folder (coordinates.star inside), coordinates.star, or a particle STAR with coordinates",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    parser.add_argument("--box", type=int, metavar="PX", help="box size in output pixels (even; default: automatic)")
    parser.add_argument("--bin", type=float, default=1.0, metavar="F", help="Fourier binning factor (>= 1)")
    parser.add_argument(
        "--diameter", type=float, metavar="Å", help="particle diameter for the automatic box (default: the pick step's)"
    )
    parser.add_argument("--phase-flip", action="store_true", help="multiply each particle by the sign of its CTF")
    parser.add_argument(
        "--no-ramp", action="store_true", help="subtract only the background mean (default: a fitted plane)"
    )
    parser.add_argument(
        "--images", metavar="DIR", help="folder to look for micrographs whose STAR names do not resolve"
    )
    parser.add_argument(
        "--float16",
        action="store_true",
        help="write the stacks in 16-bit floats (MRC mode 12: half the disk; RELION 4+ and cryoSPARC 4+ read them)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the cryoSPARC uids")
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="with no particle to extract, write empty outputs instead of failing (a batch of a scattered run)",
    )
    add_device_argument(parser, auto="the CPU, faster here than CUDA: see cryoflow.picking.extract")


def main(args: argparse.Namespace) -> int:
    from cryoflow.device import resolve_device
    from cryoflow.picking.extract import run_extract

    summary = run_extract(
        args.micrographs,
        args.coordinates,
        args.out,
        box=args.box,
        binning=args.bin,
        diameter=args.diameter,
        phase_flip=args.phase_flip,
        ramp=not args.no_ramp,
        images=args.images,
        device=resolve_device(args.device, gpu_when_auto=False),
        seed=args.seed,
        allow_empty=args.allow_empty,
        float16=args.float16,
    )
    print(
        f"extract: {summary['n_particles']} particles from {summary['micrographs_with_particles']} micrographs "
        f"(box {summary['box']} px at {summary['pixel_size']:.4g} Å/px; {summary['dropped_at_edges']} dropped at edges, "
        f"{summary['unmatched_coordinates']} without micrograph) in {summary['seconds']:.1f} s -> {args.out}"
    )
    return 0
