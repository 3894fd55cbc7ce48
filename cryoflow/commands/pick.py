"""Pick particles on micrographs, choosing diameter, threshold, distances and exclusions from the data.

Reads a micrographs STAR with CTF columns (micassess's micrographs_good.star or the CTF
step's micrographs_ctf.star) and writes, into --out, RELION-style coordinate files
(coordinates/<micrograph>_autopick.star), coordinates.star, summary.json (every chosen
parameter with its evidence) and report.html. Scores (rlnAutopickFigureOfMerit) are in
standard deviations of the noise.

Examples::

    cryoflow pick --micrographs run/micassess/micrographs_good.star --out run/pick
    cryoflow pick --micrographs run/micassess/micrographs_good.star --out run/pick --diameter 140
    cryoflow pick --micrographs run/ctf/micrographs_ctf.star --out run/pick2 --threshold 6
    # the classic loop: blob picks -> 2D classes -> pick again with the good classes as templates
    cryoflow pick --micrographs run/micassess/micrographs_good.star --out run/pick_tm \
        --templates run/classify2d --template-classes 1,3,4
    # the learned picker (the default, auto): a CNN trained on the fly on the blob picker's confident picks
    cryoflow pick --micrographs run/micassess/micrographs_good.star --out run/pick_cnn --picker cnn --device cpu
    # ... or on the particles of good 2D classes
    cryoflow pick --micrographs run/micassess/micrographs_good.star --out run/pick_cnn2 --picker cnn \
        --train-coordinates run/classassess/particles_selected.star
    cryoflow pick --micrographs run/micassess/micrographs_good.star --out run/pick_blob --picker blob
    cryoflow extract --micrographs run/micassess/micrographs_good.star --coordinates run/pick --out run/extract
    # scattered: search the parameters on a sample, then pick each batch with them (cryoflow split / merge)
    cryoflow split run/micassess/micrographs_good.star --out run/pick_split --batch-size 50 --sample 40
    cryoflow pick --micrographs run/pick_split/sample.star --out run/pick_search
    cryoflow pick --micrographs run/pick_split/batch_001.star --out run/pick_batches/batch_001 --parameters run/pick_search
"""

from __future__ import annotations

import argparse

from cryoflow.device import add_device_argument


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--micrographs", required=True, metavar="STAR", help="micrographs STAR with CTF columns")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    parser.add_argument("--diameter", type=float, metavar="Å", help="particle diameter (default: searched)")
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="SIGMA",
        help="score threshold in noise standard deviations (default: chosen)",
    )
    parser.add_argument(
        "--images", metavar="DIR", help="folder to look for micrographs whose STAR names do not resolve"
    )
    parser.add_argument(
        "--templates",
        metavar="MRCS|DIR",
        help="pick by template matching with these class averages (a .mrcs stack or a classify2d folder)",
    )
    parser.add_argument(
        "--template-classes", metavar="N,N,...", help="1-based classes of --templates to use (default: all)"
    )
    parser.add_argument(
        "--picker",
        choices=("auto", "blob", "cnn"),
        default="auto",
        help="blob: the filter's (or templates') picks; cnn: those candidates re-scored by a CNN trained "
        "positive-unlabelled on this dataset's confident picks; auto (default): the one measured best (cnn)",
    )
    parser.add_argument(
        "--train-coordinates",
        metavar="STAR",
        help="particles STAR (e.g. classassess's particles_selected.star) whose particles are the CNN's positives",
    )
    parser.add_argument(
        "--parameters",
        metavar="PICK_DIR",
        help="pick with every decision of this earlier pick folder (diameter, threshold, CNN, junk tests: its "
        "summary.json 'fixed' and picker_state.pt) instead of deciding over these micrographs; how the workflows "
        "pick batches of micrographs after one parameter search",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the CNN's training (default 0)")
    parser.add_argument("--no-report", action="store_true", help="skip report.html (summary.json is still written)")
    add_device_argument(parser)


def main(args: argparse.Namespace) -> int:
    from cryoflow.device import resolve_device
    from cryoflow.errors import CryoflowError
    from cryoflow.picking.pick import run_pick

    classes = None
    if args.template_classes:
        try:
            classes = [int(c) for c in args.template_classes.split(",") if c.strip()]
        except ValueError:
            raise CryoflowError(
                None, f"--template-classes must be numbers like 1,4,7, not {args.template_classes!r}"
            ) from None

    summary = run_pick(
        args.micrographs,
        args.out,
        diameter=args.diameter,
        threshold=args.threshold,
        images=args.images,
        device=resolve_device(args.device),
        report=not args.no_report,
        templates=args.templates,
        template_classes=classes,
        picker=args.picker,
        train_coordinates=args.train_coordinates,
        seed=args.seed,
        parameters=args.parameters,
    )
    print(
        f"picked {summary['particles']} particles on {summary['micrographs']} micrographs "
        f"(diameter {summary['diameter_A']:.0f} Å {summary['diameter_source']}, threshold {summary['threshold']:.1f} σ, "
        f"picker {summary['picker_choice']['ran']}); "
        f"report: {args.out}/report.html"
    )
    return 0
