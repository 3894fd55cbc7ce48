"""The particle stage of ``cryoflow watch``: extraction and scoring per batch, 2D rounds in the background.

Per batch (:func:`extract_hook`, :func:`score_hook`, two of ``watch``'s ``BATCH_HOOKS``; in
the worker, inside the batch's temporary folder, so a batch is complete with its particles
or redone): the batch's picks are extracted (``cryoflow extract``'s :func:`run_extract`)
into ``extract/`` with the session's box and binning (:func:`particle_box`: fixed with the
picking parameters, from the searched diameter), and, once a particle model exists, the
new particles are scored (``cryoflow particles score``) into ``particles/``: new data skips
2D classification.

Rounds (:func:`run_round`, in a niced child process forked by the watcher, so 2D never holds
up the arrival -> feedback path): once ``classify_min`` extracted particles of complete
batches belong to no round, those batches form round ``r<n>`` (journaled with its batch list
before it starts; a batch is in at most one round, ever). The round is built in
``rounds/.r<n>.part`` and renamed to ``rounds/r<n>`` when complete::

    particles.star     the round's particles (its batches' extract/particles.star; names relative to OUT)
    classify2d/        cryoflow classify2d (quick settings: ``classify_iterations``)
    classassess/       cryoflow classassess (the labels)
    model/             cryoflow particles train on the labels (particle_model.pt)
    particles/         cryoflow particles score of the selected particles, rescuing confident
                       ones of rejected classes: the round's clean stack and micrographs_yield.star
    manifest.json      written last: its presence marks a complete round

Each sub-step is skipped when its folder is complete, and classify2d resumes from its own
checkpoint (``.classify2d.classify2d``) in the kept temporary folder: a kill -9 during a round
loses neither work nor particles, and the restarted watcher goes on with the same batches.
The particle model given to later batches is the latest complete round's (when it trained).

The cumulative ``run/`` (:class:`ParticleRun`): ``extract/particles.star`` (every complete
batch's particles, stacks hard-linked into ``extract/Particles``), ``particles/``
(``particles_clean.star`` + ``CleanParticles/``, ``particles_rejected.star``,
``micrographs_yield.star``: for each batch, from the latest round covering it, else from its
own scoring, else pending, whose micrographs' cfGoodParticles is NaN so feedback does not
count them as empty), and links ``classify2d``, ``classassess``, ``particles_model`` to the
latest complete round.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.errors import CryoflowError

ROUNDS = "rounds"
#: output box (px) above which the particles are binned for the session (2D and the classifier need no more)
EXTRACT_BOX = 64
MODEL_FILE = "particle_model.pt"


def particle_box(diameter_A: float, pixel_size: float, box: int | None = None, binning: float | None = None):
    """``(box px, binning)`` of the session's particle images for a particle of ``diameter_A`` Å on
    micrographs of ``pixel_size`` Å/px. Given values win; else extract's automatic box (1.5 x the
    diameter) when it is at most :data:`EXTRACT_BOX` px, otherwise :data:`EXTRACT_BOX` px binned
    to hold 1.5 x the diameter (the binning rounded up to a multiple of 0.05)."""
    from cryoflow.picking import particle_images as pim

    if box is not None or binning is not None:
        binning = float(binning or 1.0)
        return (int(box) if box is not None else pim.auto_box(diameter_A, pixel_size * binning)), binning
    auto = pim.auto_box(diameter_A, pixel_size)
    if auto <= EXTRACT_BOX:
        return int(auto), 1.0
    # in steps of 0.05, so that batches picked before the diameter was fixed most often bin alike
    return EXTRACT_BOX, round(math.ceil(pim.BOX_FACTOR * diameter_A / (pixel_size * EXTRACT_BOX) / 0.05) * 0.05, 2)


def _quiet(*args, **kwargs) -> None:
    pass


def _micrograph_pixel_size(star: Path) -> float:
    from cryoflow.io import read_table

    t = read_table(star, "micrographs")
    return float(np.min(np.asarray(t.pixel_size(), dtype=float)))


def _with_defocus(star: Path, filtered: Path) -> Path | None:
    """``star``, or ``filtered`` written without the micrographs that have no CTF fit (NaN defocus:
    2D classification needs every particle's CTF); None when none is left."""
    from cryoflow.io import StarTable, read_table, write_table

    t = read_table(star, "micrographs")
    ok = np.isfinite(t.table[["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]].astype(float)).all(axis=1)
    if ok.all():
        return star
    if not ok.any():
        return None
    write_table(filtered, StarTable(t.optics, t.table[ok.to_numpy()].reset_index(drop=True), "micrographs"))
    return filtered


def extract_hook(context) -> None:
    """Extract the batch's picks into ``extract/`` (the session's box and binning)."""
    opt, tmp, task = context.watcher.opt, context.folder, context.task or {}
    coords = tmp / "pick" / "coordinates.star"
    if not opt.particles or "pick" not in opt.steps or not coords.exists():
        return
    from cryoflow.picking.extract import run_extract

    summary = json.loads((tmp / "pick" / "summary.json").read_text(encoding="utf-8"))
    if not summary.get("particles", sum((summary.get("picks_per_micrograph") or {}).values())):
        return
    good = tmp / "micassess" / "micrographs_good.star"
    good = _with_defocus(good, tmp / "micrographs_extract.star")
    if good is None:
        return
    p = task.get("params") or {}
    diameter = float(p.get("diameter_A") or summary["diameter_A"])
    if p.get("box"):
        box, binning = int(p["box"]), float(p["bin"])
    else:
        box, binning = particle_box(diameter, _micrograph_pixel_size(good), opt.extract_box, opt.extract_bin)
    try:
        run_extract(  # on the CPU whatever --device says: extraction's faster path (cryoflow.picking.extract)
            good, tmp / "pick", tmp / "extract", box=box, binning=binning, diameter=diameter,
            device="cpu", report=opt.step_reports,
        )  # fmt: skip
    except CryoflowError as exc:
        if "no particle could be extracted" not in str(exc):
            raise


extract_hook.step = "extract"


def score_hook(context) -> None:
    """Score the batch's particles with the latest particle model into ``particles/`` (when one exists)."""
    opt, tmp, task = context.watcher.opt, context.folder, context.task or {}
    model = task.get("particle_model")
    star = tmp / "extract" / "particles.star"
    if not opt.particles or not model or not star.exists():
        return
    from cryoflow.particles.score import score_particles

    score_particles(star, model, tmp / "particles", device=opt.device, log=_quiet)


score_hook.step = "particles"


def batch_particles(batch_folder: Path) -> int:
    """Particles extracted in a complete batch folder (0 without extraction)."""
    s = batch_folder / "extract" / "summary.json"
    if not s.exists():
        return 0
    return int(json.loads(s.read_text(encoding="utf-8")).get("n_particles", 0))


def same_images(a: tuple, b: tuple) -> bool:
    """Two :func:`batch_box` results describe particle images 2D can classify together: the same
    box and pixel sizes within 1% (batches picked before the diameter was fixed may differ a little)."""
    return a[0] == b[0] and abs(a[2] - b[2]) <= 0.01 * b[2]


def batch_box(batch_folder: Path) -> tuple | None:
    """(box px, binning, image pixel size Å) of a batch's extraction, or None."""
    s = batch_folder / "extract" / "summary.json"
    if not s.exists():
        return None
    d = json.loads(s.read_text(encoding="utf-8"))
    return int(d["box"]), round(float(d["bin"]), 4), round(float(d["pixel_size"]), 4)


# ---- rounds ----------------------------------------------------------------------------------------
def round_name(i: int) -> str:
    return f"r{i:04d}"


def round_parts(out: Path, r: str) -> Path:
    return out / ROUNDS / f".{r}.part"


def run_round(out: Path, r: str, batches: list[str], opt, log=_quiet) -> dict:
    """Build round ``r`` of ``batches`` (see the module doc) in ``rounds/.r.part``; rename it into
    place when complete. Steps already complete in the temporary folder are kept (resume)."""
    from cryoflow.classassess.run import run_classassess
    from cryoflow.classify2d.run import Settings, run_classify2d
    from cryoflow.io import StarTable, read_table, write_table
    from cryoflow.particles.score import score_particles
    from cryoflow.particles.train import train_particles
    from cryoflow.report.builder import write_summary

    t0 = time.perf_counter()
    final, tmp = out / ROUNDS / r, round_parts(out, r)
    tmp.mkdir(parents=True, exist_ok=True)
    for leftover in tmp.glob(".*.part"):  # a step's own temporary folder, cut by a kill: redone
        shutil.rmtree(leftover, ignore_errors=True)
    star = tmp / "particles.star"
    if not star.exists():
        tables, optics = [], None
        for b in batches:
            path = out / "batches" / b / "extract" / "particles.star"
            t = read_table(path, "particles")
            table = t.table.copy()
            table["rlnImageName"] = [_prefix(n, f"batches/{b}/extract") for n in table["rlnImageName"].astype(str)]
            table["cfBatch"] = b
            tables.append(table)
            optics = t.optics if optics is None else optics
        table = pd.concat(tables, ignore_index=True)
        if "rlnOpticsGroup" in table:  # one box, one binning: one optics group (the first batch's)
            table["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
        write_table(star, StarTable(optics.iloc[:1].reset_index(drop=True), table, "particles"))
    seconds = {}

    def step(name, folder, fn):
        if (tmp / folder / "summary.json").exists():
            return json.loads((tmp / folder / "summary.json").read_text(encoding="utf-8"))
        if (tmp / folder).exists():
            shutil.rmtree(tmp / folder)
        t = time.perf_counter()
        result = fn()
        seconds[name] = round(time.perf_counter() - t, 2)
        if opt.round_delay_s:  # testing: a window for a kill between the steps
            time.sleep(opt.round_delay_s)
        return result

    settings = Settings(iterations=opt.classify_iterations, classes=opt.classify_classes, seed=0)
    c2d = step("classify2d", "classify2d", lambda: run_classify2d(star, tmp / "classify2d", settings, opt.device, log))
    ca = step(
        "classassess",
        "classassess",
        lambda: run_classassess(tmp / "classify2d", tmp / "classassess", device=opt.device, log=log),
    )
    sel, rej = tmp / "classassess" / "particles_selected.star", tmp / "classassess" / "particles_rejected.star"
    model = step(
        "train",
        "model",
        lambda: train_particles(sel, rej, tmp / "model", epochs=opt.particle_epochs, device=opt.device, log=log),
    )
    score = step(
        "score",
        "particles",
        lambda: score_particles(sel, tmp / "model", tmp / "particles", device=opt.device, rescue=rej, log=log),
    )
    n = len(read_table(star, "particles").table)
    manifest = {
        "round": r,
        "batches": batches,
        "particles": n,
        "classes": c2d.get("classes"),
        "kept_classes": ca.get("kept_classes"),
        "trained": bool(model.get("trained", True)),
        "auc_vs_class_labels": model.get("auc_vs_class_labels"),
        "clean_particles": score.get("particles_kept"),
        "seconds": seconds,
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    write_summary(tmp / "manifest.json", manifest)  # last: its presence marks a complete round
    os.replace(tmp, final)
    return manifest


def _prefix(name: str, folder: str) -> str:
    """``N@stack`` with the stack made relative to OUT (``folder/stack``) unless absolute."""
    number, sep, stack = name.rpartition("@")
    if os.path.isabs(stack):
        return name
    return f"{number}{sep}{folder}/{stack}"


def fork_round(watcher, r: str, batches: list[str]) -> int | None:
    """Run :func:`run_round` in a forked child (niced, one torch thread, dies with the watcher);
    its pid, or None where ``fork`` is not available (then run here)."""
    from cryoflow.feedback.watch import _die_with_parent

    opt, out = watcher.opt, watcher.out
    error = out / ROUNDS / f".{r}.error"
    error.unlink(missing_ok=True)
    if not hasattr(os, "fork"):
        return None
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        import signal

        _die_with_parent()
        if os.getppid() == 1:
            os._exit(1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            os.nice(opt.classify_nice)
        except OSError:
            pass
        import torch

        torch.set_num_threads(1)
        run_round(out, r, batches, opt)
    except BaseException as exc:  # noqa: BLE001 - the child must exit whatever happens
        code = 1
        try:
            text = str(exc) if isinstance(exc, CryoflowError) else traceback.format_exc()
            error.write_text(text, encoding="utf-8")
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def round_outcome(out: Path, r: str) -> dict:
    """The done/failed event of round ``r`` after its child ended."""
    final = out / ROUNDS / r
    if (final / "manifest.json").is_file():
        m = json.loads((final / "manifest.json").read_text(encoding="utf-8"))
        return {
            "e": "round_done",
            "r": r,
            **{k: m.get(k) for k in ("particles", "trained", "clean_particles", "wall_s")},
        }
    error = out / ROUNDS / f".{r}.error"
    why = error.read_text(encoding="utf-8").strip() if error.exists() else "round process died"
    return {"e": "round_failed", "r": r, "why": why[-2000:]}


def model_of(out: Path, r: str) -> str | None:
    """The particle model of complete round ``r`` (None when it could not train)."""
    m = out / ROUNDS / r / "manifest.json"
    if not m.is_file() or not json.loads(m.read_text(encoding="utf-8")).get("trained"):
        return None
    return str((out / ROUNDS / r / "model" / MODEL_FILE).resolve())


# ---- the cumulative run folder -------------------------------------------------------------------
class ParticleRun:
    """The particle part of ``run/``: extract/, particles/ and links to the latest round (see the module doc)."""

    def __init__(self, run: Path, out: Path):
        self.run, self.out = run, out
        self.batches: list[str] = []  # included, in order
        self.extract: dict[str, object] = {}  # batch -> StarTable of extract/particles.star
        self.scored: dict[str, dict] = {}  # batch -> {"clean", "rejected", "yield"} tables of its own scoring
        self.micrographs: dict[str, list[str]] = {}  # batch -> its micrograph names (extracted)
        self.rounds: dict[str, dict] = {}  # complete round -> {"batches", tables}
        self.stacks_linked: set[str] = set()

    def update(self, batches: list[str], rounds: dict[str, list[str]]) -> None:
        """Read what is new: the batches' extract + scoring (each once) and the complete rounds."""
        from cryoflow.io import read_table

        for b in batches:
            if b in self.extract or b in self.batches:
                continue
            self.batches.append(b)
            folder = self.out / "batches" / b
            star = folder / "extract" / "particles.star"
            if not star.exists():
                continue
            t = read_table(star, "particles")
            self.extract[b] = t
            self.micrographs[b] = sorted(set(t.table["rlnMicrographName"].astype(str)))
            for stack in sorted(set(n.rpartition("@")[2] for n in t.table["rlnImageName"].astype(str))):
                _link_file(folder / "extract" / stack, self.run / "extract" / stack)
            if (folder / "particles" / "particles_clean.star").exists():
                self.scored[b] = self._read_scored(folder / "particles", f"s_{b}")
        for r, rb in rounds.items():
            if r in self.rounds:
                continue
            folder = self.out / ROUNDS / r
            entry = {"batches": list(rb), **self._read_scored(folder / "particles", r)}
            self.rounds[r] = entry

    def _read_scored(self, folder: Path, tag: str) -> dict:
        """A ``particles score`` folder's tables, image names made valid in ``run/particles``
        (clean stacks hard-linked to ``CleanParticles/<tag>/``, rejected ones pointing at ``extract/Particles``)."""
        from cryoflow.io import read_blocks, read_table

        clean = read_table(folder / "particles_clean.star", "particles")
        rejected = read_table(folder / "particles_rejected.star", "particles")
        names = []
        for n in clean.table["rlnImageName"].astype(str):
            number, _, stack = n.rpartition("@")
            src = folder / stack
            rel = f"CleanParticles/{tag}/{Path(stack).name}"
            if rel not in self.stacks_linked:
                _link_file(src, self.run / "particles" / rel)
                self.stacks_linked.add(rel)
            names.append(f"{number}@{rel}")
        clean.table["rlnImageName"] = names
        rejected.table["rlnImageName"] = [_extract_name(n) for n in rejected.table["rlnImageName"].astype(str)]
        yields = read_blocks(folder / "micrographs_yield.star")["micrographs"]
        return {"clean": clean, "rejected": rejected, "yield": yields}

    def write(self, stage: str = "all") -> None:
        """Write run/extract and run/particles (each file atomically) and the round links.

        ``stage``: ``"yield"`` the summaries, pages, links and micrographs_yield.star (what feedback
        and the index read: quick), ``"stacks"`` the particle STAR files (extract/particles.star,
        particles_clean.star, particles_rejected.star: they grow with the session, so the watcher
        writes them after feedback is swapped in), ``"all"`` both."""
        from cryoflow.io import StarTable, write_blocks, write_table
        from cryoflow.report.builder import write_summary

        if not self.extract:
            return
        stacks, quick = stage in ("stacks", "all"), stage in ("yield", "all")
        tables = [self.extract[b] for b in self.batches if b in self.extract]
        optics = tables[-1].optics
        extracted = pd.concat([t.table for t in tables], ignore_index=True)
        boxes = sorted({int(t.optics["rlnImageSize"].iloc[0]) for t in tables})
        if stacks:  # batches picked before the session's parameters were fixed may differ: the latest box's only
            same = [t.table for t in tables if int(t.optics["rlnImageSize"].iloc[0]) == boxes[-1]]
            write_table(self.run / "extract" / "particles.star", StarTable(optics, pd.concat(same), "particles"))
        source: dict[str, str] = {}  # batch -> where its clean particles come from
        for r in sorted(self.rounds):
            for b in self.rounds[r]["batches"]:
                source[b] = r
        for b in self.scored:
            source.setdefault(b, f"s_{b}")
        clean, rejected, yields, used = [], [], [], []
        for tag in dict.fromkeys(source[b] for b in self.batches if b in source):
            entry = self.rounds.get(tag) or self.scored[tag[2:]]
            clean.append(entry["clean"].table)
            rejected.append(entry["rejected"].table)
            yields.append(entry["yield"])
            used.append(tag)
        pending = [b for b in self.batches if b in self.extract and b not in source]
        for b in pending:
            yields.append(
                pd.DataFrame(
                    {
                        "rlnMicrographName": self.micrographs[b],
                        "cfPicks": np.nan,
                        "cfGoodParticles": np.nan,
                        "cfGoodFraction": np.nan,
                        "cfMeanScore": np.nan,
                    }
                )
            )
        n_pending = int(sum(len(self.extract[b].table) for b in pending))
        rounds = sorted(self.rounds)
        summary = {
            "step": "extract",
            "particles": int(len(extracted)),
            "micrographs": int(extracted["rlnMicrographName"].nunique()),
            "stage": {"micrographs": int(extracted["rlnMicrographName"].nunique()), "particles": int(len(extracted))},
            "box": boxes[-1],
            "batches": len(tables),
        }
        if quick:
            write_summary(self.run / "extract" / "summary.json", summary)
            _page(self.run / "extract", "extract", summary, [])
        if clean or pending:
            p = self.run / "particles"
            p.mkdir(parents=True, exist_ok=True)
            c = pd.concat(clean, ignore_index=True) if clean else pd.DataFrame(columns=["rlnImageName"])
            rj = pd.concat(rejected, ignore_index=True) if rejected else pd.DataFrame(columns=["rlnImageName"])
            if stacks:
                write_table(p / "particles_clean.star", StarTable(optics, c, "particles"))
                write_table(p / "particles_rejected.star", StarTable(optics, rj, "particles"))
            if not quick:
                return
            write_blocks(p / "micrographs_yield.star", {"micrographs": pd.concat(yields, ignore_index=True)})
            n_mics = int(c["rlnMicrographName"].nunique()) if len(c) else 0
            summary = {
                "step": "particles",
                "clean_particles": int(len(c)),
                "rejected_particles": int(len(rj)),
                "pending_particles": n_pending,
                "stage": {"micrographs": n_mics, "particles": int(len(c))},
                "rounds": len(rounds),
                "sources": used,
                "model": f"../{ROUNDS}/{rounds[-1]}/model/{MODEL_FILE}" if rounds else None,
            }
            write_summary(p / "summary.json", summary)
            links = [
                (r, f"../../{ROUNDS}/{r}/{s}/report.html")
                for r in rounds
                for s in ("classify2d", "classassess", "model", "particles")
            ]
            _page(p, "particles", summary, links)
        if rounds and quick:
            last = self.out / ROUNDS / rounds[-1]
            for name, sub in (
                ("classify2d", "classify2d"),
                ("classassess", "classassess"),
                ("particles_model", "model"),
            ):
                _symlink(os.path.relpath(last / sub, self.run), self.run / name)


def _extract_name(name: str) -> str:
    """A rejected particle's name (pointing into some batch's ``extract/``) as seen from ``run/``."""
    number, sep, stack = name.rpartition("@")
    marker = "extract/Particles/"
    if marker in stack:
        return f"{number}{sep}extract/Particles/{stack.split(marker, 1)[1]}"
    return name


def _link_file(src: Path, dst: Path) -> None:
    from cryoflow.feedback.watch import _link

    _link(src, dst)


def _symlink(target: str, link: Path) -> None:
    """``link`` -> ``target``, replaced atomically."""
    tmp = link.with_name(f".{link.name}.link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _page(folder: Path, step: str, summary: dict, links: list[tuple[str, str]]) -> None:
    import html

    from cryoflow.io import write_text

    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in summary.items()
        if not isinstance(v, dict | list)
    )
    items = "".join(
        f'<li><a href="{html.escape(h)}">{html.escape(t)}: {html.escape(h.split("/")[-2])}</a></li>' for t, h in links
    )
    write_text(
        folder / "report.html",
        f"<!doctype html><meta charset='utf-8'><title>{step} (cumulative)</title>"
        f"<h1>{step}: cumulative (cryoflow watch)</h1><table>{rows}</table>"
        + (f"<h2>2D rounds</h2><ul>{items}</ul>" if links else "")
        + "\n",
    )
