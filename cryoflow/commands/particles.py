"""Particle classifier: learn good particles from the 2D class decisions, then score particles without 2D.

'train' learns from classassess's particles_selected.star (positives) and
particles_rejected.star (negatives) and writes particle_model.pt, summary.json and
report.html into --out. 'score' applies a trained model to any particle STAR file (new
picks, or the selected particles) and writes the clean stack: particles_clean.star with
its own .mrcs stacks and particles_clean.cs, particles_rejected.star, the yield per
micrograph (micrographs_yield.star), summary.json and report.html.

Examples::

    cryoflow particles train --selected run/classassess/particles_selected.star \\
        --rejected run/classassess/particles_rejected.star --out run/particles_model
    cryoflow particles score --particles run/extract/particles.star --model run/particles_model \\
        --out run/particles
    cryoflow particles score --particles new/extract/particles.star --model run/particles_model \\
        --out new/particles --threshold 0.7
"""

from __future__ import annotations

import argparse

from cryoflow.device import add_device_argument


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["train", "score"], help="train a classifier, or score particles with one")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    parser.add_argument("--selected", metavar="STAR", help="train: particles of kept classes (positives)")
    parser.add_argument(
        "--rejected",
        metavar="STAR",
        help="train: particles of rejected classes (negatives); score: also score these and take back "
        "those the classifier is confident about (--rescue-threshold)",
    )
    parser.add_argument(
        "--rescue-threshold",
        type=float,
        metavar="P",
        help="score: minimum score to take back a particle of a rejected class (default 0.8)",
    )
    parser.add_argument(
        "--epochs", type=int, help="train: passes over the images (default: enough for about 800 steps, at least 6)"
    )
    parser.add_argument(
        "--max-particles", type=int, default=20000, help="train: at most this many images (half from each side)"
    )
    parser.add_argument("--seed", type=int, default=0, help="train: random seed")
    parser.add_argument("--particles", metavar="STAR", help="score: particle STAR file with stacks")
    parser.add_argument("--model", metavar="PATH", help="score: particle_model.pt or the folder of 'train'")
    parser.add_argument(
        "--threshold", type=float, metavar="P", help="score: minimum score to keep a particle (default: the model's)"
    )
    parser.add_argument(
        "--images", metavar="DIR", help="folder holding the particle stacks when the STAR names do not resolve"
    )
    add_device_argument(parser)


def main(args: argparse.Namespace) -> int:
    from cryoflow.device import resolve_device
    from cryoflow.errors import CryoflowError

    device = resolve_device(args.device)
    if args.action == "train":
        if not args.selected or not args.rejected:
            raise CryoflowError(None, "particles train needs --selected and --rejected")
        from cryoflow.particles.train import train_particles

        train_particles(
            args.selected,
            args.rejected,
            args.out,
            args.epochs,
            args.max_particles,
            args.seed,
            device=device,
            images=args.images,
        )
        return 0
    if not args.particles or not args.model:
        raise CryoflowError(None, "particles score needs --particles and --model")
    from cryoflow.particles.score import score_particles

    score_particles(
        args.particles,
        args.model,
        args.out,
        args.threshold,
        device=device,
        images=args.images,
        rescue=args.rejected,
        rescue_threshold=args.rescue_threshold,
    )
    return 0
