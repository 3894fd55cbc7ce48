"""``cryoflow watch``: process micrographs as they arrive, keep a cumulative run and its feedback fresh.

The watcher polls ``INPUT_DIR`` (searched as :func:`cryoflow.io.find_micrographs` searches a
folder: recursive, EPU ``Data/`` folders preferred, ``*_fractions.mrc`` and hidden
temporaries skipped). Per file, the states are::

    seen ──► settled ──► batched(b) ──► processed (batch b's folder complete: ctf, micassess, pick, extract[, score])
      │         ▲
      └► invalid┘ (stopped changing but does not open as a one-image MRC; re-checked when it changes)

A file is *settled* once its size and mtime have not changed for ``settle_s`` seconds (or its
mtime is already that old) and its header opens (one image, a pixel size known). Settled
files are processed in batches of up to ``batch`` micrographs, in order of mtime then path,
by ``workers`` processes side by side (:class:`_Workers`; 1: in the watcher itself). A batch
starts when a worker is free: the files waiting are split between the free workers, and a
batch smaller than ``batch`` starts once its oldest file has waited ``max_latency_s``
seconds (0: at once; while the workers are busy, files gather into larger batches, which
cost less per micrograph). Batches may finish out of order; ``run/`` takes them in order.

Speed (``cryoflow bench watch``): every step runs with one torch thread and large arrays kept
in the heap (:func:`_keep_heap`); each micrograph is read once and shared in memory by ctf,
micassess and pick; the batches write no step report (``step_reports`` to have them; the
STAR files are the same); feedback's report.html is redrawn at most every ``report_every_s``
(feedback.json at every refresh). The relative ice thickness and its median (micassess inputs)
are measured against the session's micrographs so far (``run_ctf``'s and ``run_micassess``'s
``session_intensities``), not the batch's alone, so small batches are assessed as the whole
set would be.

Layout of ``OUT``::

    journal.jsonl                 every event, fsynced (:mod:`cryoflow.feedback.journal`)
    batches/b000001/              one batch: manifest.json, ctf/, micassess/, pick/, extract/ (the steps'
                                  outputs), particles/ (scored by the latest particle model, once one exists)
    rounds/r0001/                 one 2D round over some complete batches' particles: particles.star,
                                  classify2d/, classassess/, model/ (particle classifier), particles/ (clean stack)
    run/                          the cumulative run folder (a pure function of the complete batches and rounds)
      ctf/micrographs_ctf.star (+ _failed)   micassess/micrographs_good.star (+ _rejected)
      pick/coordinates.star + coordinates/   pick/summary.json (picks per micrograph, fixed parameters)
      extract/particles.star + Particles/    every complete batch's particles (stacks hard-linked)
      particles/particles_clean.star + CleanParticles/, particles_rejected.star, micrographs_yield.star
      classify2d, classassess, particles_model   links to the latest complete round's folders
      feedback/                   ``cryoflow feedback`` on run/, redone after batches and rounds complete
      index.html                  the index report (``cryoflow report``)
    STOP                          create it to make the watcher exit cleanly after the running batches

Crash safety: a batch is journaled (with its file list) before it runs and is built in a
hidden temporary folder renamed to ``batches/b<id>`` only when every step finished, so a
complete folder is never redone and a half-done one (its temporary folder) is deleted and
redone from scratch with the same files; a file belongs to exactly one batch, ever. Only
the watcher writes the journal; the workers and the background refresh die with it
(``PR_SET_PDEATHSIG``), so after a kill -9 nothing goes on writing. The cumulative ``run/``
is rebuilt from the complete batch folders at every start, each file in it replaced
atomically.

Picking: diameter (Å) and threshold (noise σ) are searched on the first batch with at
least ``search_min`` micrographs passing micassess, journaled, and given to every later
batch, so every batch is picked the same way (until then one batch runs at a time, of at
least ``search_min`` micrographs or after ``search_wait_s``, twice as many after each search
batch that had fewer good micrographs than that). The particle box and binning
are fixed with them (journaled in the same ``params`` event; by default 1.5 x the diameter,
binned to at most 64 px: enough for 2D and the particle classifier, cheap to classify).

Particles (:mod:`cryoflow.feedback.watch_particles`; ``particles``, needs the pick step):
:data:`BATCH_HOOKS` extract every batch's picks (``extract/``) and, once a particle model
exists, score them with it (``particles/``; the model is the latest complete round's,
sent with the batch's task), in the worker and inside the batch's temporary folder, so a
batch is complete with its particles or redone. When ``classify_min`` particles of
complete batches (in batch order) belong to no round, those batches form a 2D round,
journaled (``round``, with its batches: a batch is in at most one round, ever) and run in a
forked child at niceness ``classify_nice`` (classify2d with ``classify_iterations``, then
classassess, particles train, particles score of the selected particles rescuing confident
rejected ones), so 2D never holds up the arrival -> feedback path; the watcher journals
``round_done`` (or ``round_failed``) when the child ends and refreshes ``run/``. One round
runs at a time; particles arriving meanwhile wait for the next one, and are scored in
their batches by the latest model meanwhile. A round is built in ``rounds/.r<n>.part``
(kept across restarts: its complete steps are not redone and classify2d resumes from its
checkpoint) and renamed into place when complete; after a kill -9 the restarted watcher
resumes the journaled round with the same batches first. ``--once`` and ``--stop-after``
wait for a running round; a STOP file or SIGTERM stops it (it resumes at the next start).
In ``run/particles/micrographs_yield.star`` (what feedback reads as good particles per
micrograph), micrographs whose particles wait for their first model have NaN, not 0.
:data:`RUN_HOOKS` (on the cumulative run, in the watcher, before feedback) stays for quick
additions.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cryoflow.errors import CryoflowError
from cryoflow.feedback.journal import Journal

STEPS = ("ctf", "micassess", "pick")
REFRESH_STATUS = ".refresh_status.json"  # in OUT: the background refresh's outcome (time of the swap, error)
JOURNAL = "journal.jsonl"
STOP_FILE = "STOP"
BATCHES = "batches"
RUN = "run"
ROUNDS = "rounds"


@dataclass
class BatchContext:
    """What a hook gets: batch id, the files (absolute paths), its temporary output folder, the watcher."""

    batch: str
    files: list[Path]
    folder: Path
    watcher: Watcher
    task: dict | None = None  # what the watcher sent: the files, the fixed picking parameters, the particle model


#: called as ``hook(context)`` after pick, inside the batch's temporary folder (write under
#: ``context.folder / "<step>"``); timed and journaled as step ``hook.step`` (else its name).
#: Set at the end of this module: extraction and particle scoring (:mod:`.watch_particles`).
BATCH_HOOKS: list[Callable[[BatchContext], None]] = []
#: called as ``hook(run_folder, watcher)`` after the cumulative STAR files are written and
#: before feedback (in the watcher: keep them quick; slow work goes in a round, :mod:`.watch_particles`).
RUN_HOOKS: list[Callable[[Path, Watcher], None]] = []


@dataclass
class WatchOptions:
    """Options of :func:`watch` (units in the names: seconds, Å, kV, mm)."""

    settle_s: float = 2.0
    poll_s: float = 1.0
    batch: int = 4
    max_latency_s: float = 0.0  # 0: a batch starts as soon as a worker is free (files gather while all are busy)
    once: bool = False
    stop_after: int | None = None
    steps: tuple[str, ...] = STEPS
    pixel_size: float | None = None
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    tilt: bool = True  # ctf's 3x3 local fits that measure specimen tilt (full mode only; False: faster)
    ctf_fast: bool = True  # ctf's on-the-fly mode (cryoflow.ctf.Settings.fast); False: cryoflow ctf's defaults
    background_refresh: bool = True  # feedback + index report in a forked child while the next batch runs
    report_every_s: float = 30.0  # feedback's report.html at most this often (and at the end); feedback.json always
    device: str = "cpu"
    search_min: int = 4
    search_wait_s: float = 30.0  # until picking is fixed, a batch waits this long for search_min micrographs
    workers: int = 2  # processes building batches side by side (1: in the watcher itself, one batch at a time)
    feedback: bool = True
    pick_report: bool = False
    step_reports: bool = False  # each batch's ctf and micassess report.html + figures (STAR files the same either way)
    threads: int | None = 1  # torch threads (None: torch's default; 1 is fastest on a busy 2-core machine)
    keep_heap: bool = True  # glibc: large arrays from a kept heap, not fresh zeroed pages (_keep_heap)
    step_delay_s: float = 0.0  # testing: sleep this long inside each batch before completing it
    particles: bool = True  # extract each batch, 2D rounds, particle classifier (needs the pick step)
    extract_box: int | None = None  # px; None: the automatic box, binned to at most 64 px (particle_box)
    extract_bin: float | None = None  # Fourier binning of the particle images (None: see extract_box)
    classify_min: int = 3000  # particles of complete batches in no round yet that start a 2D round
    classify_iterations: int = 10  # classify2d's iterations in a round (quick settings)
    classify_classes: int | None = None  # classify2d's K (None: one per ~400 particles)
    particle_epochs: int | None = None  # particles train's passes (None: its default, ~800 steps)
    classify_nice: int = 15  # niceness of the round process: 2D takes only what the batches leave
    round_delay_s: float = 0.0  # testing: sleep this long after each step of a round
    quiet: bool = False

    def check(self) -> None:
        if self.settle_s < 0 or self.poll_s <= 0 or self.max_latency_s < 0:
            raise CryoflowError(None, "--settle and --max-latency must be >= 0 and --poll > 0 seconds")
        if self.batch < 1:
            raise CryoflowError(None, f"--batch must be at least 1, got {self.batch}")
        if self.workers < 1:
            raise CryoflowError(None, f"--workers must be at least 1, got {self.workers}")
        if self.stop_after is not None and self.stop_after < 1:
            raise CryoflowError(None, f"--stop-after must be at least 1, got {self.stop_after}")
        for s in self.steps:
            if s not in STEPS:
                raise CryoflowError(None, f"unknown step {s!r} (steps: {', '.join(STEPS)} or none)")
        wanted = [s for s in STEPS if s in self.steps]
        if wanted != list(STEPS[: len(wanted)]):
            raise CryoflowError(None, f"steps must be a prefix of {','.join(STEPS)} (each needs the one before)")
        if self.pixel_size is not None and not self.pixel_size > 0:
            raise CryoflowError(None, f"--pixel-size must be a positive number of Å, got {self.pixel_size}")
        if self.classify_min < 1 or self.classify_iterations < 1:
            raise CryoflowError(None, "--classify-min and --classify-iterations must be at least 1")
        if self.extract_box is not None and (self.extract_box < 8 or self.extract_box % 2):
            raise CryoflowError(None, f"--extract-box must be an even number of pixels >= 8, got {self.extract_box}")
        if self.extract_bin is not None and not self.extract_bin >= 1:
            raise CryoflowError(None, f"--extract-bin must be >= 1, got {self.extract_bin}")


@dataclass
class FileState:
    """What the watcher knows of one input file (times: wall clock, s since the epoch)."""

    size: int
    mtime: float
    since: float  # when this (size, mtime) was first observed
    seen_t: float
    state: str = "seen"  # seen | settled | invalid | batched | processed
    batch: str | None = None
    settled_t: float | None = None


@dataclass
class Counters:
    processed: int = 0  # micrographs processed by this invocation
    batches: int = 0
    failed: int = 0
    seconds: dict = field(default_factory=dict)


def batch_name(i: int) -> str:
    return f"b{i:06d}"


class Watcher:
    """Watch ``input_dir`` and keep ``out`` up to date (see the module doc)."""

    def __init__(self, input_dir: str | os.PathLike, out: str | os.PathLike, options: WatchOptions | None = None):
        self.input = Path(input_dir)
        self.out = Path(out)
        self.opt = options or WatchOptions()
        self.opt.check()
        if not self.input.is_dir():
            raise CryoflowError(self.input, "input folder not found")
        if self.out.exists() and not self.out.is_dir():
            raise CryoflowError(self.out, "exists and is not a folder")
        if self.out.is_dir() and any(self.out.iterdir()) and not (self.out / JOURNAL).exists():
            raise CryoflowError(self.out, "folder is not empty and holds no watch journal; choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / BATCHES).mkdir(exist_ok=True)
        self.journal = Journal(self.out / JOURNAL)
        self.files: dict[str, FileState] = {}
        self.batches: dict[str, list[str]] = {}  # id -> relative file paths, in journal order
        self.done: set[str] = set()
        self.params: dict | None = None
        #: search batches that ended with fewer than ``search_min`` micrographs passing micassess
        #: (each doubles the next search batch: a grid with bad holes still reaches a search)
        self.search_misses = 0
        #: mean intensities of the fitted micrographs of the complete batches: the session's reference
        #: for the relative ice thickness (see ``run_ctf``'s ``session_intensities``)
        self.intensities: list[float] = []
        self.counters = Counters()
        self._model = None
        self._cumulative: Cumulative | None = None
        self._child: tuple[int, dict] | None = None  # the background refresh: (pid, its feedback event)
        self._report_t = -float("inf")  # time.monotonic() of the last refresh that wrote feedback's report
        self._report_behind = False  # a refresh since then updated feedback.json but not its report
        self._covered: set[str] = set()  # the batches the last refresh included (none yet: run/ is rebuilt)
        # 2D rounds (see watch_particles): round -> its batches, the complete ones, the running child
        self.rounds: dict[str, list[str]] = {}
        self.rounds_done: set[str] = set()
        self.rounds_failed: set[str] = set()  # in this invocation (retried at the next start)
        self.particle_model: str | None = None  # the latest complete round's model, given to new batches
        self._round_child: tuple[int, str] | None = None
        self._rounds_shown: set[str] = set()  # the complete rounds the last refresh included
        self._n_particles: dict[str, int] = {}  # complete batch -> particles extracted
        self._replay()

    # ---- journal replay and recovery -------------------------------------------------------
    def _replay(self) -> None:
        for ev in self.journal.events:
            kind, f = ev["e"], ev.get("f")
            if kind == "seen" and f not in self.files:
                self.files[f] = FileState(ev["size"], ev["mtime"], ev["t"], ev["t"])
            elif kind in ("settled", "invalid") and f in self.files:
                st = self.files[f]
                st.size, st.mtime, st.state = ev["size"], ev["mtime"], kind
                st.settled_t = ev["t"] if kind == "settled" else None
            elif kind == "batch":
                self.batches[ev["b"]] = list(ev["files"])
                for g in ev["files"]:
                    self.files[g].state, self.files[g].batch = "batched", ev["b"]
            elif kind == "done":
                self.done.add(ev["b"])
                self.intensities += ev.get("intensities", [])
            elif kind == "params":
                self.params = {
                    k: ev.get(k)
                    for k in ("diameter_A", "threshold", "batch", "filter_diameter_A", "template", "box", "bin")
                }
            elif kind == "round":
                self.rounds[ev["r"]] = list(ev["batches"])
            elif kind == "round_done":
                self.rounds_done.add(ev["r"])
        # a batch folder renamed into place just before a crash counts as done
        recovered = [b for b in self.batches if b not in self.done and self._complete(b)]
        self.journal.append(*(self._recovered_event(b) for b in recovered))
        self.done.update(recovered)
        for b in self.done:
            for g in self.batches.get(b, []):
                self.files[g].state = "processed"
        if self.params is None and "pick" in self.opt.steps:
            self._params_from_batches()
        # half-done batches: their temporary folders are removed, the batches redone
        for tmp in (self.out / BATCHES).glob(".b*.part"):
            shutil.rmtree(tmp, ignore_errors=True)
        # a round renamed into place just before a crash counts as done; a half-done one resumes
        # (its temporary folder is kept: the steps complete in it are not redone)
        from cryoflow.feedback.watch_particles import model_of, round_outcome

        for r in self.rounds:
            if r not in self.rounds_done and (self.out / ROUNDS / r / "manifest.json").is_file():
                self.journal.append({**round_outcome(self.out, r), "recovered": True})
                self.rounds_done.add(r)
        for r in sorted(self.rounds_done, reverse=True):
            self.particle_model = model_of(self.out, r)
            if self.particle_model:
                break

    def _complete(self, b: str) -> bool:
        return (self.out / BATCHES / b / "manifest.json").is_file()

    def _recovered_event(self, b: str) -> dict:
        """The ``done`` event of a batch found complete on disk (its intensities from its manifest)."""
        manifest = json.loads((self.out / BATCHES / b / "manifest.json").read_text(encoding="utf-8"))
        intensities = manifest.get("intensities", [])
        self.intensities += intensities
        return {"e": "done", "b": b, "recovered": True, "intensities": intensities}

    def _params_from_batches(self) -> None:
        for b in sorted(self.done):
            summary = self.out / BATCHES / b / "pick" / "summary.json"
            if summary.exists():
                s = json.loads(summary.read_text(encoding="utf-8"))
                if s.get("diameter_source") == "searched" and s.get("micrographs", 0) >= self.opt.search_min:
                    self._set_params(s, b)
                    return

    def _set_params(self, summary: dict, b: str) -> None:
        from cryoflow.picking.pick import SELF_TEMPLATE

        template = self.out / BATCHES / b / "pick" / SELF_TEMPLATE
        self.params = {
            "diameter_A": float(summary["diameter_A"]),
            "threshold": float(summary["threshold"]),
            "batch": b,
            # elongated particles: the search's own filter size and oriented template, so later batches pick alike
            "filter_diameter_A": float(summary.get("filter_diameter_A") or summary["diameter_A"]),
            "template": str(template) if summary.get("picker") == "self-template" else None,
        }
        from cryoflow.feedback.watch_particles import batch_box

        box = batch_box(self.out / BATCHES / b)  # the particle images' box and binning: fixed with them
        if box is not None:
            self.params.update(box=box[0], bin=box[1])
        self.journal.append({"e": "params", **self.params})
        self._say(
            f"picking fixed from {b}: diameter {self.params['diameter_A']:.0f} Å, threshold {self.params['threshold']:.2f} σ"
        )

    # ---- scanning and settling -------------------------------------------------------------
    def scan(self) -> None:
        """Look at the input folder once: journal new files, settle the ones that stopped changing."""
        from cryoflow.io import find_micrographs

        try:
            paths = find_micrographs(self.input).paths
        except CryoflowError:
            paths = []
        now = time.time()
        events = []
        for path in paths:
            rel = path.relative_to(self.input).as_posix()
            try:
                stat = path.stat()
            except OSError:
                continue  # vanished (renamed or removed) since the search
            sig = (stat.st_size, stat.st_mtime)
            st = self.files.get(rel)
            if st is None:
                st = self.files[rel] = FileState(sig[0], sig[1], now, now)
                events.append({"e": "seen", "f": rel, "size": sig[0], "mtime": sig[1], "t": round(now, 4)})
            elif (st.size, st.mtime) != sig:
                if st.state in ("batched", "processed"):
                    if st.state == "processed":
                        events.append({"e": "changed", "f": rel, "size": sig[0], "mtime": sig[1]})
                    st.size, st.mtime = sig
                    continue
                st.size, st.mtime, st.since, st.state = sig[0], sig[1], now, "seen"
            if st.state != "seen":
                continue
            if now - st.mtime >= self.opt.settle_s or now - st.since >= self.opt.settle_s:
                why = self._invalid(path)
                if why is None:
                    st.state, st.settled_t = "settled", now
                    events.append({"e": "settled", "f": rel, "size": sig[0], "mtime": sig[1]})
                else:
                    st.state = "invalid"
                    events.append({"e": "invalid", "f": rel, "size": sig[0], "mtime": sig[1], "why": why})
                    self._say(f"not a usable micrograph (yet): {rel}: {why}")
        self.journal.append(*events)

    def _invalid(self, path: Path) -> str | None:
        """Why ``path`` is not a usable micrograph, or None (header + size checked, no data read)."""
        from cryoflow.io import read_info

        try:
            info = read_info(path)
        except CryoflowError as exc:
            return str(exc).split(": ", 1)[-1]
        except Exception as exc:  # mrcfile raises several kinds on a half-written file
            return f"{type(exc).__name__}: {exc}"
        if info.n_images != 1:
            return f"holds {info.n_images} images; expected one motion-corrected micrograph"
        if self.opt.pixel_size is None and info.pixel_size is None and "ctf" in self.opt.steps:
            return "pixel size missing or zero in the header (use --pixel-size Å)"
        return None

    def pending(self) -> list[str]:
        """Settled files not in a batch yet, oldest first (mtime, then path)."""
        ready = [f for f, s in self.files.items() if s.state == "settled"]
        return sorted(ready, key=lambda f: (self.files[f].mtime, f))

    # ---- batches ------------------------------------------------------------------------------
    def assign(self, files: list[str]) -> str:
        """Journal a new batch of ``files`` (before it runs) and return its id."""
        b = batch_name(len(self.batches) + 1)
        self.journal.append({"e": "batch", "b": b, "files": files})
        self.batches[b] = files
        for f in files:
            self.files[f].state, self.files[f].batch = "batched", b
        return b

    def run_batch(self, b: str) -> bool:
        """Build batch ``b``'s folder in this process (unless complete) and journal it; True when it is complete."""
        if self._recovered(b):
            return True
        return self._finish(b, self._build(self._task(b)))

    def _recovered(self, b: str) -> bool:
        """True (journaled as done) when batch ``b``'s folder is already complete."""
        if not self._complete(b):
            return False
        if b not in self.done:
            self.journal.append(self._recovered_event(b))
            self.done.add(b)
            for f in self.batches[b]:
                self.files[f].state = "processed"
        return True

    def _task(self, b: str) -> dict:
        """What building batch ``b`` needs: its files (as journaled) and the fixed picking parameters."""
        files = [
            {
                "file": f,
                "path": str((self.input / f).resolve()),
                "size": self.files[f].size,
                "mtime": self.files[f].mtime,
            }
            for f in self.batches[b]
        ]
        return {
            "b": b,
            "files": files,
            "params": self.params,
            "intensities": list(self.intensities),
            "particle_model": self.particle_model,
        }

    def _build(self, task: dict) -> dict:
        """Build one batch folder (steps, hooks, manifest) from ``task``; returns the outcome.

        Writes nothing to the journal (it may run in a worker process, :class:`_Workers`):
        the outcome (``ok``, ``why``, seconds, CPU seconds, the steps' timings) is journaled by
        :meth:`_finish` in the watcher.
        """
        from cryoflow.io import atomic_dir
        from cryoflow.report.builder import write_summary

        b = task["b"]
        paths = [Path(f["path"]) for f in task["files"]]
        steps: list[dict] = []
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            with atomic_dir(self.out / BATCHES / b) as tmp:
                intensities = self._steps(b, paths, tmp, task, steps)
                for hook in BATCH_HOOKS:
                    t, c = time.perf_counter(), time.process_time()
                    hook(BatchContext(b, paths, tmp, self, task))
                    name = getattr(hook, "step", getattr(hook, "__name__", "hook"))
                    steps.append(
                        {"step": name, "s": round(time.perf_counter() - t, 3), "cpu": round(time.process_time() - c, 3)}
                    )
                if self.opt.step_delay_s:
                    time.sleep(self.opt.step_delay_s)
                manifest = {
                    "batch": b,
                    "files": task["files"],
                    "steps": [s for s in STEPS if s in self.opt.steps],
                    "pick_params": task["params"],
                    "particle_model": task.get("particle_model"),
                    "intensities": intensities,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                write_summary(tmp / "manifest.json", manifest)  # written last: its presence marks a complete batch
        except CryoflowError as exc:
            return {"ok": False, "why": str(exc), "steps": steps}
        return {
            "ok": True,
            "s": round(time.perf_counter() - t0, 3),
            "cpu": round(time.process_time() - c0, 3),
            "steps": steps,
            "intensities": intensities,
            "pid": os.getpid(),
        }

    def _finish(self, b: str, outcome: dict) -> bool:
        """Journal batch ``b``'s outcome (its steps, then done or failed); True when it is complete."""
        rels = self.batches[b]
        for ev in outcome["steps"]:
            self.counters.seconds[ev["step"]] = self.counters.seconds.get(ev["step"], 0.0) + ev["s"]
        self.journal.append(*({"e": "step", "b": b, **ev} for ev in outcome["steps"]))
        if not outcome["ok"]:
            self.journal.append({"e": "failed", "b": b, "why": outcome["why"]})
            self.counters.failed += len(rels)
            self._say(f"batch {b} failed: {outcome['why']}")
            return False
        done = {"e": "done", "b": b, "n": len(rels), "s": outcome["s"], "cpu": outcome["cpu"]}
        done["intensities"] = outcome["intensities"]
        self.intensities += outcome["intensities"]
        if outcome.get("pid") != os.getpid():
            done["worker"] = outcome.get("pid")
        self.journal.append(done)
        self.done.add(b)
        for f in rels:
            self.files[f].state = "processed"
        self.counters.processed += len(rels)
        self.counters.batches += 1
        if "pick" in self.opt.steps and self.params is None:
            s = self.out / BATCHES / b / "pick" / "summary.json"
            if s.exists():
                summary = json.loads(s.read_text(encoding="utf-8"))
                if summary.get("micrographs", 0) >= self.opt.search_min:
                    self._set_params(summary, b)
                else:
                    self.search_misses += 1
        return True

    def _steps(self, b: str, paths: list[Path], tmp: Path, task: dict, record: list[dict]) -> list[float]:
        """Run the per-micrograph steps of batch ``b`` into ``tmp`` (the steps' own functions);
        each step's timing is appended to ``record``. Returns the mean intensities of the
        micrographs with a CTF fit (for the session's ice-thickness reference)."""
        opt = self.opt
        intensities: list[float] = []
        loaded: dict = {}  # each micrograph read once, by ctf, and shared with micassess and pick

        def timed(step, fn):
            t, c = time.perf_counter(), time.process_time()
            fn()
            record.append(
                {"step": step, "s": round(time.perf_counter() - t, 3), "cpu": round(time.process_time() - c, 3)}
            )

        if "ctf" in opt.steps:
            from cryoflow.ctf import Optics, Settings, run_ctf

            optics = Optics(opt.voltage, opt.cs, opt.amplitude_contrast)
            settings = Settings.fast() if opt.ctf_fast else Settings(tilt=opt.tilt)
            timed(
                "ctf",
                lambda: run_ctf(
                    paths,
                    tmp / "ctf",
                    opt.pixel_size,
                    optics,
                    settings,
                    device=opt.device,
                    report=opt.step_reports,
                    session_intensities=task["intensities"],
                    loaded=loaded,
                ),
            )
            from cryoflow.ctf.run import COLUMNS
            from cryoflow.io import read_table

            fitted = read_table(tmp / "ctf" / "micrographs_ctf.star", "micrographs").table
            if COLUMNS["mean_intensity"] in fitted:
                intensities = [float(v) for v in fitted[COLUMNS["mean_intensity"]]]
        if "micassess" in opt.steps:
            from cryoflow.micassess.run import run_micassess

            timed(
                "micassess",
                lambda: run_micassess(
                    tmp / "ctf" / "micrographs_ctf.star",
                    tmp / "micassess",
                    model=self.model(),
                    device=opt.device,
                    report=opt.step_reports,
                    loaded=loaded,
                    session_intensities=task["intensities"],
                ),
            )
        if "pick" in opt.steps:
            from cryoflow.io import read_table
            from cryoflow.picking.pick import run_pick

            good = tmp / "micassess" / "micrographs_good.star"
            if not len(read_table(good, "micrographs").table):
                record.append({"step": "pick", "s": 0.0, "skipped": "no good micrograph"})
                return intensities
            p = task["params"] or {}
            timed(
                "pick",
                lambda: run_pick(
                    good,
                    tmp / "pick",
                    diameter=p.get("diameter_A"),
                    threshold=p.get("threshold"),
                    filter_diameter=p.get("filter_diameter_A"),
                    templates=p.get("template"),
                    # the filter picker: the learned one trains on every batch (seconds per micrograph)
                    picker="blob",
                    device=opt.device,
                    report=opt.pick_report or opt.step_reports,
                    loaded=loaded,
                ),
            )
        return intensities

    def _warm(self) -> None:
        """Import the steps' and feedback's code once, before the workers and the refresh
        children are forked (they share it; each refresh child spent ~0.5 s of CPU on imports)."""
        if "ctf" in self.opt.steps:
            import matplotlib.image  # noqa: F401 - the diagnostic PNGs

            import cryoflow.ctf.run  # noqa: F401
        if "micassess" in self.opt.steps:
            import cryoflow.micassess.run  # noqa: F401
        if "pick" in self.opt.steps:
            import cryoflow.picking.pick  # noqa: F401
        if "pick" in self.opt.steps and self.opt.particles:  # the batches' extract + score, the rounds' steps
            import cryoflow.classassess.run  # noqa: F401
            import cryoflow.classify2d.run  # noqa: F401
            import cryoflow.particles.score  # noqa: F401
            import cryoflow.particles.train  # noqa: F401
            import cryoflow.picking.extract  # noqa: F401
        if self.opt.feedback and "ctf" in self.opt.steps:  # what every refresh child would import again
            import cryoflow.feedback.report  # noqa: F401
            import cryoflow.feedback.run  # noqa: F401
            import cryoflow.report  # noqa: F401

    def _warm_worker(self) -> None:
        """In a new worker, before its first batch: load micassess's model and pay torch's
        one-time set-up (its first FFT, fit and autograd calls: ~1.5-2 s of CPU, which a cold
        worker's first batch took on top) with a CTF estimate of a small noise image, while
        the watcher goes on scanning."""
        if "ctf" in self.opt.steps:
            import torch

            from cryoflow.ctf import Optics, Settings
            from cryoflow.ctf.estimate import estimate

            noise = torch.randn(512, 512, generator=torch.Generator().manual_seed(0)) + 100.0
            settings = Settings.fast() if self.opt.ctf_fast else Settings(tilt=self.opt.tilt)
            estimate(noise, 1.0, Optics(self.opt.voltage, self.opt.cs, self.opt.amplitude_contrast), settings)
        if "micassess" in self.opt.steps:
            self.model()

    def model(self):
        """The micassess model, loaded once."""
        if self._model is None:
            from cryoflow.micassess.model import MicAssessModel

            self._model = MicAssessModel.load(None)
        return self._model

    # ---- cumulative run and feedback ---------------------------------------------------------
    def refresh(self, background: bool = False, report: bool | None = None, batches: set[str] | None = None) -> None:
        """Bring ``run/`` up to the complete batches, run the hooks, feedback and the index report.

        The new batches' STAR tables are read here (kept in memory: each batch is read once);
        the cumulative files, feedback and the index report (the slow part: the planner and the
        HTML pages) are written here too, or with ``background`` in a forked child
        (:meth:`_fork_refresh`) while the watcher goes on with the next batch (the cumulative
        files then too, unless :data:`RUN_HOOKS` need them first). ``report``: write feedback's
        report.html and figures (default: when the last one is ``report_every_s`` old);
        feedback.json and the CSVs are written every time. ``batches``: the complete batches to
        include (default: all).
        """
        batches = set(self.done) if batches is None else batches
        self._covered = set(batches)
        if "ctf" not in self.opt.steps:
            self.journal.append({"e": "feedback", "upto": max(batches, default=None), "skipped": "no ctf step"})
            return
        run = self.out / RUN
        if self._cumulative is None:
            self._cumulative = Cumulative(run, self.out / BATCHES)
        cumulative = self._cumulative
        cpu = time.process_time()
        cumulative.rounds = {r: self.rounds[r] for r in sorted(self.rounds_done)}
        self._rounds_shown = set(self.rounds_done)
        cumulative.update(sorted(batches))
        if report is None:
            report = time.monotonic() - self._report_t >= self.opt.report_every_s
        if report:
            self._report_t = time.monotonic()
        self._report_behind = not report
        flag = self.opt.feedback and cumulative.n_micrographs > 0
        ev = {
            "e": "feedback",
            "upto": max(batches, default=None),
            "micrographs": cumulative.n_micrographs,
            "report": report,
            "read_cpu": round(time.process_time() - cpu, 3),  # the new batches' tables, read in the watcher
        }
        cpu = time.process_time()
        if RUN_HOOKS:  # they read the cumulative files: written here first
            cumulative.write(self.params)
            for hook in RUN_HOOKS:
                hook(run, self)
        if background and self._fork_refresh(ev, flag, report, write=not RUN_HOOKS):
            return
        if not RUN_HOOKS:
            cumulative.write(self.params)
        error = _feedback_and_index(run, self.input, flag, report)
        cumulative.write_stacks()
        ev["cpu"] = round(time.process_time() - cpu, 3)
        if error:
            ev["error"] = error
            self._say(f"feedback not updated: {error}")
        self.journal.append(ev)

    def _fork_refresh(self, ev: dict, feedback: bool, report: bool, write: bool = True) -> bool:
        """Write the cumulative files, feedback and the index report in a forked child; its
        event is journaled when it ends (:meth:`reap`), with the time feedback was swapped in.
        ``write``: the cumulative files too (False: written already).

        The child gets a copy of this process (no imports to redo, the batches' tables in
        memory), dies with the watcher (``PR_SET_PDEATHSIG``: a kill -9 of the watcher leaves no
        writer behind) and writes only ``run/`` (each file atomically, feedback swapped in by a
        rename). False where ``fork`` is not available (the refresh then runs in this process).
        """
        if not hasattr(os, "fork"):
            return False
        run = self.out / RUN
        status_file = self.out / REFRESH_STATUS
        status_file.unlink(missing_ok=True)
        cumulative, params = self._cumulative, self.params
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 0
            try:
                _die_with_parent()
                if os.getppid() == 1:  # the watcher died before the line above took effect
                    os._exit(1)
                cpu = time.process_time()
                if write:
                    cumulative.write(params)
                error = _feedback_and_index(run, self.input, feedback, report)
                swapped = round(time.time(), 4)  # feedback's latency ends here; the particle STARs follow
                cumulative.write_stacks()
                status = {"t": swapped, "cpu": round(time.process_time() - cpu, 3)}
                status.update({"error": error} if error else {})
                status_file.write_text(json.dumps(status), encoding="utf-8")
            except BaseException:  # noqa: BLE001 - the child must exit whatever happens
                code = 1
            finally:
                os._exit(code)
        self._child = (pid, {**ev, "background": True})
        return True

    def reap(self, wait: bool = False) -> bool:
        """Journal the background refresh's event once its child has ended; True when none is running."""
        if self._child is None:
            return True
        pid, ev = self._child
        status = _child_status(pid, wait)
        if status is None:
            return False
        self._child = None
        status_file = self.out / REFRESH_STATUS
        outcome = {}
        if status_file.exists():
            try:
                outcome = json.loads(status_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                outcome = {}
        if os.waitstatus_to_exitcode(status) != 0 or "t" not in outcome:
            ev["error"] = "feedback refresh failed in its child process"
            self._report_behind = True
        else:
            ev["t"] = outcome["t"]  # when feedback was swapped in, not when the watcher got round to noticing
            ev["cpu"] = outcome.get("cpu")
            if "error" in outcome:
                ev["error"] = outcome["error"]
        if "error" in ev:
            self._say(f"feedback not updated: {ev['error']}")
        self.journal.append(ev)
        return True

    # ---- main loop -----------------------------------------------------------------------------
    def stop_requested(self) -> str | None:
        if (self.out / STOP_FILE).exists():
            return "STOP file"
        if self.opt.stop_after is not None and self.counters.processed >= self.opt.stop_after:
            return f"--stop-after {self.opt.stop_after}"
        return None

    def loop(self) -> Counters:
        """Watch until stopped (``--once``: until what was there at the start is processed).

        Torch runs with ``threads`` intra-op threads meanwhile (restored afterwards): the steps'
        many small tensor operations gain nothing from a second thread, and on a busy machine
        threads waiting for each other cost 2-5x the time (one 4096² CTF estimate: 0.8 s with
        one thread, 2.6-4.5 s with two, load average ~6).
        """
        if self.opt.keep_heap and self.opt.steps:
            _keep_heap()
        if self.opt.threads is None or not self.opt.steps:
            return self._loop()
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.opt.threads)
        try:
            return self._loop()
        finally:
            torch.set_num_threads(previous)

    def _loop(self) -> Counters:
        opt = self.opt
        self.journal.append({"e": "start", "pid": os.getpid(), "input": str(self.input), "once": opt.once})
        # batches journaled but not complete (a crash, or a failure last time) go first
        todo = [b for b in self.batches if b not in self.done]
        running: set[str] = set()  # batches being built by the workers
        why = None
        if opt.once:  # wait for the files there now to settle (later arrivals are left for the next run)
            self.scan()
            first = {f for f, s in self.files.items() if s.state == "seen"}
            while any(self.files[f].state == "seen" for f in first):
                time.sleep(min(opt.poll_s, max(opt.settle_s / 4, 0.01)))
                self.scan()
        workers = None
        if opt.workers > 1 or (opt.background_refresh and not opt.once):
            self._warm()  # imports before forking: the workers and every refresh child share them
        if opt.workers > 1 and hasattr(os, "fork"):  # elsewhere: one batch at a time, here
            workers = _Workers(self, opt.workers)
        try:
            while True:
                if workers is not None:
                    for b, outcome in workers.finished():
                        running.discard(b)
                        self._finish(b, outcome)
                if why is None:
                    slots = self._slots(workers, running)
                    if slots and not todo:
                        if not opt.once:
                            self.scan()
                        todo += self._form(slots)
                    while todo and slots:
                        b = todo.pop(0)
                        if workers is None:
                            self.run_batch(b)
                        elif not self._recovered(b):
                            workers.submit(self._task(b))
                            running.add(b)
                        slots = self._slots(workers, running)
                idle = self.reap()
                self._reap_round()
                if why is None:
                    self._maybe_round(running | set(todo))
                covered = self._includable(running | set(todo))
                news = covered - self._covered or self.rounds_done - self._rounds_shown
                if news and idle and (not todo or (opt.background_refresh and not opt.once)):
                    # refresh feedback when the queue is drained (while catching up, batches go first);
                    # in the background, the next batches run while feedback and the report are written
                    if not opt.once and workers is None:
                        self.scan()
                    background = opt.background_refresh and not opt.once
                    # in the background a refresh never holds up the batches, so it need not wait for
                    # the queue to drain: feedback stays at most one refresh behind while catching up
                    if opt.once or background or len(self.pending()) < opt.batch:
                        self.refresh(background=background, batches=covered)
                why = why or self.stop_requested()
                if why and not running:
                    break
                if opt.once and not todo and not running and not self.pending():
                    why = "--once: all processed"
                    break
                if workers is not None and running:
                    workers.wait(opt.poll_s)  # wakes up as soon as a batch is finished
                elif not todo:
                    time.sleep(opt.poll_s)
        except BaseException:
            if workers is not None:  # Ctrl-C or a crash: stop the workers now (their half-built batches are redone)
                workers.close(kill=True)
                workers = None
            self._kill_round()  # resumed at the next start
            raise
        finally:
            if workers is not None:
                workers.close()
        self.reap(wait=True)
        if self._round_child is not None:
            if opt.once or (why or "").startswith("--stop-after"):
                self._say(f"waiting for 2D round {self._round_child[1]} to finish")
                self._reap_round(wait=True)
            else:  # STOP file, SIGTERM: the round resumes at the next start, its finished steps kept
                self._kill_round()
        if self.done - self._covered or self._report_behind or self.rounds_done - self._rounds_shown:
            self.refresh(report=True, batches=self._includable(set(todo)))
        self.journal.append({"e": "stop", "why": why, "processed": self.counters.processed})
        if why == "STOP file":
            (self.out / STOP_FILE).unlink(missing_ok=True)
        self._say(f"stopped ({why}): {self.counters.processed} micrographs in {self.counters.batches} batches")
        return self.counters

    # ---- 2D rounds (cryoflow.feedback.watch_particles) -----------------------------------------
    def _particles_of(self, b: str) -> int:
        from cryoflow.feedback.watch_particles import batch_particles

        if b not in self._n_particles:
            self._n_particles[b] = batch_particles(self.out / BATCHES / b)
        return self._n_particles[b]

    def _maybe_round(self, waiting: set[str]) -> None:
        """Start a 2D round when none is running: a journaled one not complete first (it resumes),
        else a new one once ``classify_min`` particles of complete batches (in batch order, the
        session's box) belong to no round."""
        from cryoflow.feedback.watch_particles import batch_box, round_name, same_images

        opt = self.opt
        if not opt.particles or "pick" not in opt.steps or self._round_child is not None:
            return
        unfinished = [r for r in self.rounds if r not in self.rounds_done and r not in self.rounds_failed]
        if unfinished:
            self._start_round(unfinished[0])
            return
        in_round = {b for bs in self.rounds.values() for b in bs}
        candidates = [b for b in sorted(self._includable(waiting)) if b not in in_round and self._particles_of(b)]
        if not candidates or sum(self._particles_of(b) for b in candidates) < opt.classify_min:
            return
        boxes = {b: batch_box(self.out / BATCHES / b) for b in candidates}
        fixed = batch_box(self.out / BATCHES / self.params["batch"]) if self.params else None
        session = fixed or boxes[candidates[-1]]  # the box fixed with the picking parameters, else the latest
        # batches picked before the parameters were fixed may have other particle images: left out of 2D
        candidates = [b for b in candidates if same_images(boxes[b], session)]
        n = sum(self._particles_of(b) for b in candidates)
        if n < opt.classify_min:
            return
        r = round_name(len(self.rounds) + 1)
        self.journal.append({"e": "round", "r": r, "batches": candidates, "particles": n})
        self.rounds[r] = candidates
        self._start_round(r)

    def _start_round(self, r: str) -> None:
        from cryoflow.feedback.watch_particles import fork_round, run_round

        self._say(f"2D round {r}: {len(self.rounds[r])} batches, in the background")
        pid = fork_round(self, r, self.rounds[r])
        if pid is None:  # no fork: here, now
            try:
                run_round(self.out, r, self.rounds[r], self.opt)
            except CryoflowError as exc:
                (self.out / ROUNDS).mkdir(exist_ok=True)
                (self.out / ROUNDS / f".{r}.error").write_text(str(exc), encoding="utf-8")
            self._round_ended(r)
            return
        self._round_child = (pid, r)

    def _reap_round(self, wait: bool = False) -> bool:
        """Journal the running round's outcome once its child has ended; True when none is running."""
        if self._round_child is None:
            return True
        pid, r = self._round_child
        if _child_status(pid, wait) is None:
            return False
        self._round_child = None
        self._round_ended(r)
        return True

    def _round_ended(self, r: str) -> None:
        from cryoflow.feedback.watch_particles import model_of, round_outcome

        ev = round_outcome(self.out, r)
        self.journal.append(ev)
        if ev["e"] == "round_done":
            self.rounds_done.add(r)
            self.particle_model = model_of(self.out, r) or self.particle_model
            self._say(f"2D round {r} done: {ev.get('clean_particles')} clean of {ev.get('particles')} particles")
        else:
            self.rounds_failed.add(r)
            self._say(f"2D round {r} failed: {ev['why']}")

    def _kill_round(self) -> None:
        """Stop the running round now (journaled as neither done nor failed: it resumes at the next start)."""
        if self._round_child is not None:
            pid, _ = self._round_child
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self._round_child = None

    def _slots(self, workers: _Workers | None, running: set[str]) -> int:
        """How many batches may start now: one at a time in this process, or one per idle worker
        (one at a time while the first picking search is pending, so every later batch picks alike)."""
        if workers is None:
            return 1
        if running and "pick" in self.opt.steps and self.params is None:
            return 0
        return max(0, self.opt.workers - len(running))

    def _form(self, slots: int) -> list[str]:
        """Journal new batches of settled files for up to ``slots`` free workers; their ids.

        A batch holds up to ``batch`` files. The files waiting are split between the free
        workers (two files and two idle workers: two batches of one, for latency). A batch
        smaller than ``batch`` starts once its oldest file has waited ``max_latency_s`` after
        settling. Until picking's diameter and threshold are fixed, a batch needs
        ``search_min`` files (or waits ``search_wait_s``), so the search sees enough micrographs;
        twice as many after each search batch that had too few micrographs passing micassess
        (up to 8x: on a grid where a quarter of the holes are bad, batches of 4 good ones are rare).
        """
        opt = self.opt
        ready = self.pending()
        search = "pick" in opt.steps and self.params is None
        grown = opt.search_min * 2 ** min(self.search_misses, 3)
        full = max(opt.batch, grown) if search else opt.batch
        wait = max(opt.max_latency_s, opt.search_wait_s) if search else opt.max_latency_s
        if search:
            slots = min(slots, 1)
        now = time.time()
        formed = []
        while ready and slots:
            size = min(full, -(-len(ready) // slots))
            take = ready[:size]
            if len(take) < full and not opt.once and now - self.files[take[0]].settled_t < wait:
                break
            formed.append(self.assign(take))
            ready = ready[size:]
            slots -= 1
        return formed

    def _includable(self, waiting: set[str]) -> set[str]:
        """Complete batches the cumulative run may include: those journaled before any batch
        still ``waiting`` (running or queued), so the run grows in batch order."""
        first = min(waiting, default=None)
        return {b for b in self.done if first is None or b < first}

    def _say(self, text: str) -> None:
        if not self.opt.quiet:
            print(f"cryoflow watch: {text}", file=sys.stderr, flush=True)


class _Workers:
    """Processes forked from the watcher that build batch folders (:meth:`Watcher._build`) side by side.

    Each worker is a copy of the watcher made before any batch ran (the steps' code imported
    by :meth:`Watcher._warm`, the heap settings and the thread count inherited; torch not used
    yet), warms itself up (:meth:`Watcher._warm_worker`), lives as long as the watcher (its
    memory stays warm), takes one task at a time over its pipe and sends back the outcome;
    only the watcher writes the journal. A worker dies with the watcher
    (``PR_SET_PDEATHSIG``: after a kill -9 no worker goes on writing a batch folder) and
    ignores SIGINT/SIGTERM (the watcher decides when to stop: after the running batches). A
    worker that dies mid-batch fails that batch (retried at the next start) and is replaced.
    """

    def __init__(self, watcher: Watcher, n: int):
        import multiprocessing

        self.watcher = watcher
        self.ctx = multiprocessing.get_context("fork")
        self.idle: list = []
        self.busy: dict = {}  # connection -> batch id
        self.procs: dict = {}  # connection -> process
        for _ in range(n):
            self._spawn()

    def _spawn(self) -> None:
        here, there = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(self.watcher, there, os.getpid()), daemon=True)
        proc.start()
        there.close()
        self.procs[here] = proc
        self.idle.append(here)

    def submit(self, task: dict) -> None:
        conn = self.idle.pop()
        conn.send(task)
        self.busy[conn] = task["b"]

    def wait(self, timeout: float) -> None:
        """Return when a running batch finishes or after ``timeout`` seconds."""
        from multiprocessing.connection import wait

        if self.busy:
            wait(list(self.busy), timeout)
        else:
            time.sleep(timeout)

    def finished(self) -> list[tuple[str, dict]]:
        """``(batch id, outcome)`` of every batch finished since the last call."""
        from multiprocessing.connection import wait

        done = []
        for conn in wait(list(self.busy), 0) if self.busy else []:
            b = self.busy.pop(conn)
            try:
                outcome = conn.recv()
            except (EOFError, OSError):
                proc = self.procs.pop(conn)
                proc.join(5)
                conn.close()
                done.append((b, {"ok": False, "why": f"worker process died (exit code {proc.exitcode})", "steps": []}))
                self._spawn()
                continue
            if "crash" in outcome:
                raise RuntimeError(f"batch {b} failed in worker {self.procs[conn].pid}:\n{outcome['crash']}")
            self.idle.append(conn)
            done.append((b, outcome))
        return done

    def close(self, kill: bool = False) -> None:
        """Stop the workers: after their current task, or at once with ``kill``."""
        if kill:
            for proc in self.procs.values():
                proc.kill()
        for conn in self.procs:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for conn, proc in self.procs.items():
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self.procs.clear()


def _child_status(pid: int, wait: bool) -> int | None:
    """The wait status of the forked child ``pid`` once it has ended (reaped), else ``None``;
    ``wait``: block until it ends."""
    done, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
    return status if done else None


def _worker_main(watcher: Watcher, conn, parent: int) -> None:
    """A worker's life: build the batches it is sent until told to stop (None) or the watcher is gone."""
    import traceback

    _die_with_parent()
    if os.getppid() != parent:  # the watcher died before the line above took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        watcher._warm_worker()
    except Exception:  # noqa: BLE001 - only a warm-up: the first batch pays the set-up instead
        pass
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            break
        if task is None:
            break
        try:
            outcome = watcher._build(task)
        except BaseException:  # noqa: BLE001 - reported to the watcher, which raises it
            outcome = {"ok": False, "crash": traceback.format_exc(), "steps": []}
        conn.send(outcome)
    conn.close()


def _feedback_and_index(run: Path, input_dir: Path, feedback: bool, report: bool = True) -> str | None:
    """``cryoflow feedback`` on ``run`` (when ``feedback``; its report.html too when ``report``)
    and the index report; an error message or None."""
    from cryoflow.report import write_index

    error = _swap_feedback(run, report) if feedback else None
    write_index(run, title=f"cryoflow watch: {input_dir}")
    return error


_HEAP_KEPT = False


def _keep_heap() -> None:
    """glibc (Linux): serve large allocations from the heap and keep freed memory for reuse.

    By default every array over 32 MiB (a 4096² micrograph in float32 is 64 MiB; its FFT 64 MiB)
    is a fresh ``mmap``, returned on ``free``: each of the steps' dozens of temporaries per
    micrograph then costs page faults and zeroing. Keeping them in the heap cuts the CPU time of
    the CTF spectrum 3x (0.42 -> 0.14 s per 4096² micrograph) and helps micassess and pick alike;
    the price is that the watcher keeps its peak memory (about 1 GB) between batches. Once per
    process; a no-op where ``mallopt`` is not available.
    """
    global _HEAP_KEPT
    if _HEAP_KEPT or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_trim_threshold, 1 << 30)  # return memory to the system only above 1 GiB free at the top
    mallopt(m_mmap_threshold, 1 << 29)  # mmap only single allocations over 512 MiB
    _HEAP_KEPT = True


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _swap_feedback(run: Path, report: bool = True) -> str | None:
    """Run feedback into ``run/.feedback.next`` and swap it in for ``run/feedback``; an error message or None.

    Without ``report``, the previous refresh's report.html and figures are carried over (hard
    links) beside the new feedback.json, so the folder always has a report, at most
    ``report_every_s`` old."""
    from cryoflow.feedback.run import run_feedback

    nxt, old, cur = run / ".feedback.next", run / ".feedback.old", run / "feedback"
    for p in (nxt, old):
        if p.exists():
            shutil.rmtree(p)
    try:
        run_feedback(run, nxt, report=report)
    except CryoflowError as exc:
        return str(exc)
    if not report and (cur / "report.html").exists():
        for src in [cur / "report.html", *sorted((cur / "figures").glob("*"))]:
            if src.is_file():
                _link(src, nxt / src.relative_to(cur))
    if cur.exists():
        os.replace(cur, old)
    os.replace(nxt, cur)
    shutil.rmtree(old, ignore_errors=True)
    return None


class Cumulative:
    """The cumulative run folder: the batches' STAR tables concatenated, written atomically file by file."""

    def __init__(self, run: Path, batches: Path):
        from cryoflow.feedback.watch_particles import ParticleRun

        self.run, self.batches = run, batches
        self.particles = ParticleRun(run, batches.parent)
        self.rounds: dict[str, list[str]] = {}  # the complete 2D rounds to include: round -> its batches
        self.included: list[str] = []
        self.tables: dict[str, list] = {k: [] for k in TABLES}
        self.coordinates: list[pd.DataFrame] = []
        self.picks: dict[str, int] = {}
        self.pick_summaries: list[dict] = []
        self.n_micrographs = 0

    def update(self, done: list[str]) -> None:
        """Read the tables of the batches of ``done`` not read yet (each batch once) and link their coordinate files."""
        from cryoflow.io import read_blocks, read_table

        new = [b for b in done if b not in self.included]
        for b in new:
            folder = self.batches / b
            for key, (step, name) in TABLES.items():
                path = folder / step / name
                if path.exists():
                    t = read_table(path, "micrographs")
                    if "cryoflowDiagnostic" in t.table:
                        t.table["cryoflowDiagnostic"] = [
                            f"../../{BATCHES}/{b}/{step}/{d}" for d in t.table["cryoflowDiagnostic"].astype(str)
                        ]
                    self.tables[key].append(t)
            pick = folder / "pick"
            if (pick / "summary.json").exists():
                summary = json.loads((pick / "summary.json").read_text(encoding="utf-8"))
                summary["batch"] = b
                self.pick_summaries.append(summary)
                self.picks.update(summary.get("picks_per_micrograph", {}))
                index = read_blocks(pick / "coordinates.star")["coordinate_files"]
                for rel in index["rlnMicrographCoordinates"].astype(str):
                    _link(pick / rel, self.run / "pick" / rel)
                self.coordinates.append(index)
            self.included.append(b)
        self.n_micrographs = sum(len(t.table) for key in ("ctf", "ctf_failed") for t in self.tables[key])
        self.particles.update(self.included, self.rounds)

    def write(self, params: dict | None) -> None:
        """Write the cumulative STAR files, summaries and step pages into the run folder (each atomically)."""
        from cryoflow.ctf.run import add_relative_thickness
        from cryoflow.io import write_blocks, write_table
        from cryoflow.report.builder import write_summary

        merged = {k: _concat(v) for k, v in self.tables.items()}
        if merged["ctf"] is not None:  # ice thickness relative to the whole session, not one batch
            failed = merged["ctf_failed"].table if merged["ctf_failed"] is not None else pd.DataFrame()
            add_relative_thickness(merged["ctf"].table, failed)
        for key, table in merged.items():
            step, name = TABLES[key]
            if table is not None:
                (self.run / step).mkdir(parents=True, exist_ok=True)
                write_table(self.run / step / name, table)
        counts = {k: (len(v.table) if v is not None else 0) for k, v in merged.items()}
        batches = len(self.included)
        if self.n_micrographs:
            self._step_page(
                "ctf",
                {
                    "fitted": counts["ctf"],
                    "failed": counts["ctf_failed"],
                    "stage": {"micrographs": counts["ctf"]},
                    "batches": batches,
                },
            )
        if counts["good"] + counts["rejected"]:
            self._step_page(
                "micassess",
                {
                    "good": counts["good"],
                    "rejected": counts["rejected"],
                    "stage": {"micrographs": counts["good"]},
                    "batches": batches,
                },
            )
        if self.coordinates:
            index = pd.concat(self.coordinates, ignore_index=True)
            write_blocks(self.run / "pick" / "coordinates.star", {"coordinate_files": index})
            last = self.pick_summaries[-1]
            summary = {
                "micrographs": len(self.picks),
                "particles": int(sum(self.picks.values())),
                "stage": {
                    "micrographs": int(sum(1 for v in self.picks.values() if v)),
                    "particles": int(sum(self.picks.values())),
                },
                "diameter_A": params["diameter_A"] if params else last.get("diameter_A"),
                "threshold": params["threshold"] if params else last.get("threshold"),
                "parameters_from_batch": params["batch"] if params else None,
                "picks_per_micrograph": dict(self.picks),
                "batches": batches,
            }
            self._step_page("pick", summary, write=False)
            write_summary(self.run / "pick" / "summary.json", summary)
        self.particles.write("yield")  # extract/ and particles/ summaries, micrographs_yield.star (feedback reads it)

    def write_stacks(self) -> None:
        """The particle STAR files (they grow with the session: written after feedback is swapped in)."""
        self.particles.write("stacks")

    def _step_page(self, step: str, summary: dict, write: bool = True) -> None:
        """summary.json (if ``write``) and a report.html linking the batches' own reports."""
        from cryoflow.io import write_text
        from cryoflow.report.builder import write_summary

        summary = {"step": step, **summary}
        if write:
            write_summary(self.run / step / "summary.json", summary)
        links = []
        for b in self.included:
            report = self.batches / b / step / "report.html"
            if report.exists():
                links.append(f'<li><a href="../../{BATCHES}/{b}/{step}/report.html">{html.escape(b)}</a></li>')
        figures = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in summary.items()
            if not isinstance(v, dict)
        )
        write_text(
            self.run / step / "report.html",
            f"<!doctype html><meta charset='utf-8'><title>{step} (cumulative)</title>"
            f"<h1>{step}: cumulative over {len(self.included)} batches</h1><table>{figures}</table>"
            f"<h2>Batch reports</h2><ul>{''.join(links) or '<li>none (written without report)</li>'}</ul>\n",
        )


#: cumulative tables: key -> (step folder, file name)
TABLES = {
    "ctf": ("ctf", "micrographs_ctf.star"),
    "ctf_failed": ("ctf", "micrographs_ctf_failed.star"),
    "good": ("micassess", "micrographs_good.star"),
    "rejected": ("micassess", "micrographs_rejected.star"),
}


def _concat(tables: list):
    """One StarTable of ``tables`` (RELION micrographs + optics); optics groups renumbered by content."""
    from cryoflow.io import StarTable

    tables = [t for t in tables if len(t.table.columns)]
    if not tables:
        return None
    groups: dict[tuple, int] = {}
    optics_rows, rows = [], []
    for t in tables:
        mapping = {}
        for _, o in t.optics.iterrows():
            key = tuple(sorted((k, str(v)) for k, v in o.items() if k not in ("rlnOpticsGroup", "rlnOpticsGroupName")))
            if key not in groups:
                groups[key] = len(groups) + 1
                row = o.to_dict()
                row["rlnOpticsGroup"] = groups[key]
                if "rlnOpticsGroupName" in row:
                    row["rlnOpticsGroupName"] = f"opticsGroup{groups[key]}"
                optics_rows.append(row)
            mapping[int(o["rlnOpticsGroup"])] = groups[key]
        table = t.table.copy()
        if "rlnOpticsGroup" in table:
            table["rlnOpticsGroup"] = [mapping.get(int(g), int(g)) for g in table["rlnOpticsGroup"]]
        rows.append(table)
    return StarTable(pd.DataFrame(optics_rows), pd.concat(rows, ignore_index=True), "micrographs")


def _link(src: Path, dst: Path) -> None:
    """Hard-link (else copy) ``src`` to ``dst``, replacing it atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def watch(input_dir, out, options: WatchOptions | None = None) -> Counters:
    """Watch ``input_dir`` into ``out`` until stopped; SIGTERM stops cleanly after the current batch."""
    watcher = Watcher(input_dir, out, options)

    def _term(signum, frame):
        (watcher.out / STOP_FILE).touch()

    previous = signal.signal(signal.SIGTERM, _term) if _main_thread() else None
    try:
        return watcher.loop()
    finally:
        watcher.journal.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---- measurements from the journal ---------------------------------------------------------------
def audit(out: str | os.PathLike, input_dir: str | os.PathLike | None = None) -> dict:
    """Check a watch folder: every input file in exactly one complete batch, none twice, none missed.

    Returns counts (``files``: micrograph files found in ``input_dir`` now, ``processed``,
    ``missed``: found but in no complete batch, ``duplicated``: in more than one batch or listed
    twice in the batch manifests, ``unknown``: in a batch but not an input) and latencies
    (s, from a file's first sighting to the first feedback refresh covering its batch).
    """
    from cryoflow.feedback.journal import read_journal

    out = Path(out)
    events = read_journal(out / JOURNAL)
    seen = {}
    assigned: dict[str, list[str]] = {}
    done_t: dict[str, float] = {}
    refresh_t: list[tuple[float, str]] = []
    for ev in events:
        if ev["e"] == "seen":
            seen.setdefault(ev["f"], ev["t"])
        elif ev["e"] == "batch":
            for f in ev["files"]:
                assigned.setdefault(f, []).append(ev["b"])
        elif ev["e"] == "done":
            done_t.setdefault(ev["b"], ev["t"])
        elif ev["e"] == "feedback" and ev.get("upto"):
            refresh_t.append((ev["t"], ev["upto"]))
    manifests: dict[str, int] = {}
    for m in sorted((out / BATCHES).glob("b*/manifest.json")):
        for f in json.loads(m.read_text(encoding="utf-8"))["files"]:
            manifests[f["file"]] = manifests.get(f["file"], 0) + 1
    inputs = set()
    if input_dir is not None:
        from cryoflow.io import find_micrographs

        try:
            inputs = {p.relative_to(input_dir).as_posix() for p in find_micrographs(input_dir).paths}
        except CryoflowError:
            inputs = set()
    latency = []
    for f, bs in assigned.items():
        b = bs[0]
        t = next((t for t, upto in refresh_t if upto >= b), None)
        if t is not None and f in seen:
            latency.append(t - seen[f])
    lat = pd.Series(latency, dtype=float)
    return {
        "files": len(inputs),
        "processed": len(manifests),
        "missed": len(inputs - set(manifests)) if input_dir is not None else None,
        "duplicated": sum(1 for n in manifests.values() if n > 1) + sum(1 for bs in assigned.values() if len(bs) > 1),
        "unknown": len(set(manifests) - inputs) if input_dir is not None else None,
        "batches": len(done_t),
        "latency_s": {
            "median": round(float(lat.median()), 3) if len(lat) else None,
            "p90": round(float(lat.quantile(0.9)), 3) if len(lat) else None,
            "max": round(float(lat.max()), 3) if len(lat) else None,
        },
    }


from cryoflow.feedback.watch_particles import extract_hook, score_hook  # noqa: E402 - they use this module's names

BATCH_HOOKS += [extract_hook, score_hook]
