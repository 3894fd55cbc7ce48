"""Estimate the CTF of every micrograph and measure its quality (defocus, fit resolution, ice, drift, tilt).

Writes micrographs_ctf.star (RELION 3.1+: data_optics + data_micrographs with rlnDefocusU/V,
rlnDefocusAngle, rlnCtfMaxResolution, rlnCtfFigureOfMerit, quality metrics), a diagnostic
image per micrograph, summary.json and report.html into --out. Micrographs with no usable
Thon rings are listed in micrographs_ctf_failed.star with the reason; the run goes on.

Examples::

    cryoflow ctf Images-Disc1/ --out run/ctf                      # EPU session folder, pixel size from headers
    cryoflow ctf 'Micrographs/*.mrc' --out run/ctf --pixel-size 0.83 --voltage 300 --cs 2.7
    cryoflow ctf MotionCorr/job002/corrected_micrographs.star --out run/ctf
"""

from __future__ import annotations

import argparse

from cryoflow.device import add_device_argument


def add_optics_arguments(parser: argparse.ArgumentParser) -> None:
    """``--pixel-size``, ``--voltage``, ``--cs``, ``--amplitude-contrast`` (for steps that run the CTF fit)."""
    parser.add_argument(
        "--pixel-size",
        type=float,
        metavar="Å",
        help="pixel size in Å (default: from the STAR optics or the MRC header)",
    )
    parser.add_argument(
        "--voltage",
        type=float,
        default=300.0,
        metavar="kV",
        help="acceleration voltage in kV (a STAR input's optics take precedence)",
    )
    parser.add_argument("--cs", type=float, default=2.7, metavar="mm", help="spherical aberration in mm")
    parser.add_argument(
        "--amplitude-contrast",
        type=float,
        default=0.1,
        metavar="F",
        help="amplitude contrast as a fraction (0.07-0.1 for cryo)",
    )


def check_optics(args: argparse.Namespace) -> None:
    """One-line errors for nonsense optics arguments."""
    from cryoflow.errors import CryoflowError

    if not 0 <= args.amplitude_contrast < 1:
        raise CryoflowError(None, f"--amplitude-contrast must be a fraction in [0, 1), got {args.amplitude_contrast}")
    if args.voltage <= 0 or args.cs < 0:
        raise CryoflowError(None, "--voltage must be positive and --cs non-negative")
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise CryoflowError(None, f"--pixel-size must be positive, got {args.pixel_size}")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "micrographs", nargs="+", metavar="MICROGRAPHS", help="MRC files, globs, folders or a STAR file"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    add_optics_arguments(parser)
    parser.add_argument(
        "--defocus-min", type=float, default=0.2, metavar="µm", help="lowest defocus searched, µm (underfocus positive)"
    )
    parser.add_argument("--defocus-max", type=float, default=7.0, metavar="µm", help="highest defocus searched, µm")
    parser.add_argument(
        "--low-resolution", type=float, default=30.0, metavar="Å", help="lowest resolution used in the fit, Å"
    )
    parser.add_argument(
        "--high-resolution",
        type=float,
        metavar="Å",
        help="highest resolution used in the fit, Å (default: as far as the Thon rings reach)",
    )
    parser.add_argument("--phase-plate", action="store_true", help="also fit a phase shift (Volta phase plate data)")
    parser.add_argument("--no-tilt", action="store_true", help="skip the 3x3 local fits that measure specimen tilt")
    add_device_argument(parser)


def main(args: argparse.Namespace) -> int:
    from cryoflow.ctf import Optics, Settings, run_ctf
    from cryoflow.device import resolve_device
    from cryoflow.errors import CryoflowError

    check_optics(args)
    if not 0 < args.defocus_min < args.defocus_max:
        raise CryoflowError(
            None, f"need 0 < --defocus-min < --defocus-max (µm), got {args.defocus_min} and {args.defocus_max}"
        )
    if args.high_resolution is not None and not 0 < args.high_resolution < args.low_resolution:
        raise CryoflowError(None, "--high-resolution must be positive and finer (smaller, Å) than --low-resolution")
    settings = Settings(
        defocus_min=args.defocus_min * 1e4,
        defocus_max=args.defocus_max * 1e4,
        low_resolution=args.low_resolution,
        high_resolution=args.high_resolution,
        phase_plate=args.phase_plate,
        tilt=not args.no_tilt,
    )
    summary = run_ctf(
        args.micrographs,
        args.out,
        pixel_size=args.pixel_size,
        optics=Optics(args.voltage, args.cs, args.amplitude_contrast),
        settings=settings,
        device=resolve_device(args.device),
    )
    print(
        f"ctf: {summary['fitted']} of {summary['micrographs']} micrographs fitted; median defocus "
        f"{summary['median_defocus_um']:.3f} µm, median fit resolution {summary['median_fit_resolution_A']:.2f} Å -> {args.out}"
    )
    return 0
