"""Score 2D classes, keep the good ones and their particles (cryoflow, RELION or a bare stack).

Reads a classify2d folder (classes.mrcs, model.star, particles.star), a RELION Class2D job
folder or run_itNNN_model.star (with run_itNNN_classes.mrcs and run_itNNN_data.star), or a
plain .mrcs stack of class averages (image features only). Writes classes_selected.star
(score, decision and evidence per class), classes_selected.mrcs (the kept averages, usable
as picking templates), particles_selected.star and particles_rejected.star, summary.json
and report.html into --out. The shipped model (cryoflow/models/classassess.pt, model card
beside it) is used unless --model is given; 'train' makes one.

Examples::

    cryoflow classassess --classes run/classify2d --out run/classassess
    cryoflow classassess --classes run/classify2d --out run/classassess --min-score 0.7 --reject 4,9
    cryoflow classassess --classes run/classify2d --out run/classassess --rounds 2 --images run/extract
    cryoflow classassess --classes Class2D/job012/ --out ca_relion          # RELION's last iteration
    cryoflow classassess --classes averages.mrcs --out ca_stack               # a bare stack

    # the shipped model: simulated datasets through classify2d (cached), then fitting
    cryoflow classassess train --out classassess.pt --datasets 40 --cache /tmp/ca_examples
    # add your own classifications, labelled with --keep/--reject runs of classassess
    cryoflow classassess train --out mine.pt --labels run/classassess --datasets 0 --model classassess.pt
"""

from __future__ import annotations

import argparse

from cryoflow.device import add_device_argument


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", nargs="?", default="assess", choices=["assess", "train"], help="assess classes, or train a model"
    )
    parser.add_argument(
        "--classes", metavar="PATH", help="assess: classify2d folder, RELION Class2D job/model.star or .mrcs"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="assess: output folder (must not exist or be empty); train: model file",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        metavar="P",
        help="assess: keep classes scoring at least P (default: adaptive, near 0.5)",
    )
    parser.add_argument(
        "--keep", metavar="IDS", help="assess: class numbers to keep whatever their score, e.g. 1,4,7-9"
    )
    parser.add_argument("--reject", metavar="IDS", help="assess: class numbers to reject whatever their score")
    parser.add_argument("--rounds", type=int, default=1, help="assess: rounds of reclassifying the kept particles")
    parser.add_argument(
        "--min-classes", type=int, default=1, help="assess: keep at least this many classes (best scores first)"
    )
    parser.add_argument(
        "--min-particles",
        type=float,
        default=0.05,
        metavar="F",
        help="assess: keep at least this fraction of particles",
    )
    parser.add_argument("--images", metavar="DIR", help="assess: folder of the particle stacks (rounds > 1)")
    parser.add_argument(
        "--model", metavar="FILE", help="model file (assess: default the shipped one; train: start from it)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (reclassification, training)")
    train = parser.add_argument_group("train")
    train.add_argument(
        "--datasets",
        type=int,
        default=40,
        help="simulated datasets to make (if not in --cache yet) and train on; every finished dataset in --cache is used",
    )
    train.add_argument("--cache", metavar="DIR", help="folder keeping the simulated classifications between runs")
    train.add_argument("--epochs", type=int, default=40, help="CNN epochs")
    train.add_argument(
        "--labels",
        action="append",
        metavar="DIR",
        help="a classassess output folder whose decisions (after your --keep/--reject) are labels",
    )
    train.add_argument("--card", metavar="FILE", help="also write a model card (markdown) here")
    add_device_argument(parser)


def main(args: argparse.Namespace) -> int:
    from cryoflow.device import resolve_device
    from cryoflow.errors import CryoflowError

    device = resolve_device(args.device)
    if args.action == "train":
        import shlex
        import sys
        import tempfile
        from pathlib import Path

        from cryoflow.classassess.examples import collect
        from cryoflow.classassess.model import ClassScorer
        from cryoflow.classassess.train import save_with_card, train_scorer

        if args.datasets < 0:
            raise CryoflowError(None, f"--datasets must be 0 or more, got {args.datasets}")
        folders = []
        if args.datasets:
            cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="classassess_"))
            folders += collect(cache, args.datasets, first_seed=args.seed * 100_000)
            # every finished dataset of the cache takes part (a cache grown by several runs)
            done = sorted(p.parent for p in cache.glob("set_*/classify2d/model.star"))
            folders += [f for f in done if f not in folders]
        for labels in args.labels or []:
            folders.append(Path(labels))
        if len(folders) < 2:
            raise CryoflowError(None, "training needs at least 2 labelled datasets (--datasets and/or --labels)")
        base = ClassScorer.load(args.model) if args.model else None
        scorer = train_scorer(folders, epochs=args.epochs, seed=args.seed, base=base)
        command = "cryoflow " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        save_with_card(scorer, args.out, args.card, command)
        print(f"classassess train: model -> {args.out}")
        return 0

    from cryoflow.classassess.run import run_classassess

    if not args.classes:
        raise CryoflowError(None, "--classes is required")
    summary = run_classassess(
        args.classes,
        args.out,
        model=args.model,
        min_score=args.min_score,
        keep=args.keep,
        reject=args.reject,
        rounds=args.rounds,
        images=args.images,
        min_classes=args.min_classes,
        min_particles=args.min_particles,
        device=device,
        seed=args.seed,
    )
    kept = summary["particles_kept"]
    print(
        f"classassess: kept {summary['kept_classes']} of {summary['classes']} classes"
        + (f", {kept} of {summary['particles_in']} particles" if kept is not None else "")
        + f" -> {args.out}"
    )
    return 0
