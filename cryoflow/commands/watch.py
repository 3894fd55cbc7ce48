"""Process micrographs as they arrive (CTF, micassess, pick in small batches) and keep feedback fresh.

Watches INPUT_DIR (EPU layout GridSquare_*/Data/FoilHole_*_Data_*.mrc, searched recursively;
*_fractions.mrc and hidden temporaries skipped). A file is taken once its size and mtime
have not changed for --settle seconds and it opens as an MRC. Batches of --batch
micrographs go through ctf, micassess and pick (diameter and threshold searched on the
first batch of enough micrographs, then fixed); the cumulative run folder OUT/run
(micrographs_ctf.star, micrographs_good.star, coordinates, feedback/, index.html) is
updated after each batch (feedback and the index report in a background process while the
next batch runs). Each batch's picks are extracted (box and binning fixed with the picking
parameters; at most 64 px by default); once --classify-min particles have gathered, a 2D round
(classify2d, classassess, particles train) runs in a low-priority background process, and
later batches are scored by its particle classifier (no 2D needed); OUT/run gets
extract/, particles/ (the clean stack, micrographs_yield.star that feedback reads),
links to the latest round's classify2d/, classassess/, particles_model/ (--no-particles
to stop after pick). CTF runs in its fast on-the-fly mode (256² spectrum, no tilt fits;
--ctf-full for cryoflow ctf's defaults). OUT/journal.jsonl records every step (fsynced): after a crash or
kill -9, run the same command again and it resumes, no micrograph processed twice or
missed. Stop with Ctrl-C / SIGTERM, by creating OUT/STOP, or with --stop-after N.

Examples::

    cryoflow watch /data/session1/Images-Disc1 --out live --pixel-size 0.83
    cryoflow watch incoming/ --out live --once                    # what is there now, then exit
    cryoflow watch incoming/ --out live --batch 8 --max-latency 20 --voltage 200 --cs 2.7
    cryoflow watch incoming/ --out live --classify-min 5000 --extract-box 96   # larger 2D rounds, 96 px boxes
    touch live/STOP                                              # clean exit after the current batch
"""

from __future__ import annotations

import argparse

from cryoflow.commands.ctf import add_optics_arguments
from cryoflow.device import add_device_argument


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input_dir", metavar="INPUT_DIR", help="folder the microscope writes micrographs into")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (new, or one a previous watch wrote: it resumes)"
    )
    parser.add_argument("--once", action="store_true", help="process what is there now, then exit")
    parser.add_argument("--poll", type=float, default=1.0, metavar="SECONDS", help="seconds between scans of INPUT_DIR")
    parser.add_argument(
        "--settle",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="a file is taken once its size and mtime have not changed for this many seconds",
    )
    parser.add_argument("--batch", type=int, default=4, metavar="N", help="micrographs per batch")
    parser.add_argument(
        "--max-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds a settled micrograph may wait for its batch to fill before a smaller batch runs "
        "(0: a batch starts as soon as a worker is free)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="processes building batches side by side (1: one batch at a time in the watcher)",
    )
    parser.add_argument("--stop-after", type=int, metavar="N", help="exit cleanly once N micrographs are processed")
    parser.add_argument(
        "--steps",
        default="ctf,micassess,pick",
        metavar="LIST",
        help="per-micrograph steps, a prefix of ctf,micassess,pick, or 'none' (journal and batches only)",
    )
    add_optics_arguments(parser)
    parser.add_argument(
        "--ctf-full",
        action="store_true",
        help="cryoflow ctf's default settings (512² spectrum, tilt fits) instead of the fast on-the-fly mode",
    )
    parser.add_argument("--no-tilt", action="store_true", help="with --ctf-full: skip the 3x3 local fits of tilt")
    parser.add_argument("--no-feedback", action="store_true", help="update the cumulative STAR files only")
    parser.add_argument("--pick-report", action="store_true", help="write pick's report for every batch (slower)")
    parser.add_argument(
        "--no-particles",
        action="store_true",
        help="no extraction, 2D classification or particle classifier (stop after pick)",
    )
    parser.add_argument(
        "--extract-box",
        type=int,
        metavar="PX",
        help="particle box in output pixels (unset: 1.5 x the searched diameter, binned to at most 64 px)",
    )
    parser.add_argument(
        "--extract-bin",
        type=float,
        metavar="F",
        help="Fourier binning of the particle images (>= 1; unset: see --extract-box)",
    )
    parser.add_argument(
        "--classify-min",
        type=int,
        default=3000,
        metavar="N",
        help="particles of finished batches in no 2D round yet that start one (2D classification, class "
        "selection, particle classifier training, in a background process)",
    )
    parser.add_argument(
        "--classify-iterations", type=int, default=10, metavar="N", help="2D classification iterations per round"
    )
    parser.add_argument(
        "--classify-classes", type=int, metavar="K", help="2D classes per round (unset: one per ~400 particles)"
    )
    parser.add_argument(
        "--particle-epochs", type=int, metavar="N", help="particle classifier passes (unset: about 800 optimizer steps)"
    )
    parser.add_argument("--round-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow 2D rounds
    parser.add_argument("--step-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow batches
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    add_device_argument(
        parser, auto="CUDA if available; extraction runs on the CPU whatever this says, its faster path"
    )


def main(args: argparse.Namespace) -> int:
    from cryoflow.commands.ctf import check_optics
    from cryoflow.device import resolve_device
    from cryoflow.feedback.watch import WatchOptions, watch

    check_optics(args)
    steps = () if args.steps.strip() == "none" else tuple(s.strip() for s in args.steps.split(",") if s.strip())
    options = WatchOptions(
        settle_s=args.settle,
        poll_s=args.poll,
        batch=args.batch,
        max_latency_s=args.max_latency,
        workers=args.workers,
        once=args.once,
        stop_after=args.stop_after,
        steps=steps,
        pixel_size=args.pixel_size,
        voltage=args.voltage,
        cs=args.cs,
        amplitude_contrast=args.amplitude_contrast,
        tilt=not args.no_tilt,
        ctf_fast=not args.ctf_full,
        device=str(resolve_device(args.device)),
        feedback=not args.no_feedback,
        pick_report=args.pick_report,
        step_delay_s=args.step_delay,
        particles=not args.no_particles,
        extract_box=args.extract_box,
        extract_bin=args.extract_bin,
        classify_min=args.classify_min,
        classify_iterations=args.classify_iterations,
        classify_classes=args.classify_classes,
        particle_epochs=args.particle_epochs,
        round_delay_s=args.round_delay,
        quiet=args.quiet,
    )
    counters = watch(args.input_dir, args.out, options)
    print(f"{counters.processed} micrographs processed in {counters.batches} batches; {counters.failed} failed")
    return 0
