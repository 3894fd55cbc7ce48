"""Detect bad micrographs (empty, thick or crystalline ice, contamination, carbon, poor CTF) and say why.

Reads the CTF step's micrographs_ctf.star (and micrographs_ctf_failed.star beside it) and
the micrographs, gives each a calibrated probability of being good and a reason, and
writes micrographs_good.star, micrographs_rejected.star (all input columns plus
cryoflowMicassessPGood/Reason/Detail/Evidence), summary.json and report.html into --out.
The shipped model (cryoflow/models/micassess.pt, model card beside it) is used unless
--model is given. 'train' makes a model from simulated data and/or your own labels.

Examples::

    cryoflow micassess --micrographs run/ctf/micrographs_ctf.star --out run/micassess
    cryoflow micassess --micrographs run/ctf/micrographs_ctf.star --out run/micassess --threshold 0.3
    cryoflow micassess --micrographs run/ctf/micrographs_ctf.star --out run/micassess --threshold knee

    # the shipped model (simulated sessions, cached in a temporary folder)
    cryoflow micassess train --out micassess.pt --sessions 40 --seed 0
    # fine-tune the shipped model on your labels: a folder per reason (good/, thick_ice/, ...)
    cryoflow micassess train --out mine.pt --labels labelled/ --sessions 0
    # or a STAR file with a label column (e.g. a micrographs_ctf.star with cfReason added)
    cryoflow micassess train --out mine.pt --labels labelled.star --label-column cfReason --sessions 0
    cryoflow micassess --micrographs run/ctf/micrographs_ctf.star --out run/micassess2 --model mine.pt
"""

from __future__ import annotations

import argparse

from cryoflow.device import add_device_argument


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", nargs="?", default="assess", choices=["assess", "train"], help="assess micrographs, or train a model"
    )
    parser.add_argument("--micrographs", metavar="STAR", help="assess: the CTF step's micrographs_ctf.star")
    parser.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="assess: output folder (must not exist or be empty); train: model file",
    )
    parser.add_argument(
        "--threshold",
        default="auto",
        metavar="P",
        help="assess: P(good) below which a micrograph is rejected: auto (calibrated 0.5), knee (emptiest point "
        "of this dataset's histogram) or a probability",
    )
    parser.add_argument("--model", metavar="FILE", help="assess: a model file from 'train' (default: the shipped one)")
    parser.add_argument(
        "--images", metavar="DIR", help="assess: folder to look for micrographs whose STAR names do not resolve"
    )
    train = parser.add_argument_group("train")
    train.add_argument("--sessions", type=int, default=40, help="simulated sessions of 12 micrographs (0: none)")
    train.add_argument("--seed", type=int, default=0, help="random seed (simulation, split, training)")
    train.add_argument("--epochs", type=int, default=30, help="CNN epochs")
    train.add_argument(
        "--labels", action="append", metavar="DIR|STAR", help="user labels: a folder per reason, or a STAR file"
    )
    train.add_argument("--label-column", default="cfReason", help="label column of a --labels STAR file")
    train.add_argument(
        "--base", metavar="FILE", help="model to fine-tune (default with --labels: the shipped one; see --scratch)"
    )
    train.add_argument("--scratch", action="store_true", help="train from scratch even with --labels")
    train.add_argument("--cache", metavar="DIR", help="folder caching the simulated sessions (default: a temp folder)")
    train.add_argument("--max-steps", type=int, help="stop the CNN after this many steps (smoke runs)")
    train.add_argument("--card", metavar="FILE", help="also write the model card (Markdown) to FILE")
    add_device_argument(parser)


def main(args: argparse.Namespace) -> int:
    from cryoflow.device import resolve_device
    from cryoflow.errors import CryoflowError

    device = resolve_device(args.device)
    if args.action == "train":
        return _train(args, device)
    if not args.micrographs:
        raise CryoflowError(None, "--micrographs is required (the CTF step's micrographs_ctf.star)")
    from cryoflow.micassess.run import run_micassess

    summary = run_micassess(
        args.micrographs, args.out, threshold=args.threshold, model=args.model, device=device, images=args.images
    )
    rejected = ", ".join(f"{k} {v}" for k, v in summary["counts_per_reason"].items() if k != "good" and v)
    print(
        f"micassess: {summary['good']} of {summary['micrographs']} micrographs good "
        f"(threshold {summary['threshold']:.2f}); rejected: {rejected or 'none'} -> {args.out}"
    )
    return 0


def _train(args: argparse.Namespace, device) -> int:
    import tempfile
    from pathlib import Path

    from cryoflow.errors import CryoflowError
    from cryoflow.micassess.model import MicAssessModel
    from cryoflow.micassess.train import TrainSettings, train, user_examples

    if args.sessions < 0 or args.epochs < 1:
        raise CryoflowError(None, "--sessions must be >= 0 and --epochs >= 1")
    out = Path(args.out)
    if out.is_dir():
        raise CryoflowError(out, "is a folder; train writes a model file (e.g. --out mine.pt)")
    user = []
    for source in args.labels or []:
        user += user_examples(source, args.label_column, device)
    base = None
    if args.base or (user and not args.scratch):
        base = MicAssessModel.load(args.base)
    settings = TrainSettings(n_sessions=args.sessions, seed=args.seed, epochs=args.epochs, max_steps=args.max_steps)
    if args.cache:
        model = train(out, settings, cache=args.cache, user=user, base=base, device=device)
    else:
        with tempfile.TemporaryDirectory(prefix="micassess_sim_") as cache:
            model = train(out, settings, cache=cache, user=user, base=base, device=device)
    if args.card:
        from cryoflow.io import write_text
        from cryoflow.micassess.train import model_card

        command = f"cryoflow micassess train --out {args.out} --sessions {args.sessions} --seed {args.seed} --epochs {args.epochs}"
        for source in args.labels or []:
            command += f" --labels {source} --label-column {args.label_column}"
        command += (" --scratch" if args.scratch else "") + (f" --base {args.base}" if args.base else "")
        command += (f" --cache {args.cache}" if args.cache else "") + f" --card {args.card}"
        write_text(args.card, model_card(model, command))
    return 0
