"""``cryoflow watch``: process micrographs as they arrive, keep a cumulative run and its feedback fresh.

The watcher polls ``INPUT_DIR`` (searched as :func:`cryoflow.io.find_micrographs` searches a
folder: recursive, EPU ``Data/`` folders preferred, ``*_fractions.mrc`` and hidden
temporaries skipped). Per file, the states are::

    seen ──► settled ──► batched(b) ──► processed (batch b's folder complete: ctf, micassess, pick)
      │         ▲
      └► invalid┘ (stopped changing but does not open as a one-image MRC; re-checked when it changes)

A file is *settled* once its size and mtime have not changed for ``settle_s`` seconds (or its
mtime is already that old) and its header opens (one image, a pixel size known). Settled
files are processed in batches of ``batch`` micrographs, in order of mtime then path; a
smaller batch runs when the oldest settled file has waited ``max_latency_s`` seconds.

Layout of ``OUT``::

    journal.jsonl                 every event, fsynced (:mod:`cryoflow.feedback.journal`)
    batches/b000001/              one batch: manifest.json, ctf/, micassess/, pick/ (the steps' outputs)
    run/                          the cumulative run folder (a pure function of the complete batches)
      ctf/micrographs_ctf.star (+ _failed)   micassess/micrographs_good.star (+ _rejected)
      pick/coordinates.star + coordinates/   pick/summary.json (picks per micrograph, fixed parameters)
      feedback/                   ``cryoflow feedback`` on run/, redone after every batch
      index.html                  the index report (``cryoflow report``)
    STOP                          create it to make the watcher exit cleanly after the current batch

Crash safety: a batch is journaled (with its file list) before it runs and is built in a
hidden temporary folder renamed to ``batches/b<id>`` only when every step finished, so a
complete folder is never redone and a half-done one (its temporary folder) is deleted and
redone from scratch with the same files; a file belongs to exactly one batch, ever. The
cumulative ``run/`` is rebuilt from the complete batch folders at every start, each file
in it replaced atomically.

Picking: diameter (Å) and threshold (noise σ) are searched on the first batch with at
least ``search_min`` micrographs passing micassess, journaled, and given to every later
batch, so every batch is picked the same way. 2D classification and particle classifiers
are not wired yet: :data:`BATCH_HOOKS` (per batch, in its temporary folder) and
:data:`RUN_HOOKS` (on the cumulative run, before feedback) are where they go.
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
REFRESH_ERROR = ".refresh_error"  # in OUT: the background refresh's error message, if any
JOURNAL = "journal.jsonl"
STOP_FILE = "STOP"
BATCHES = "batches"
RUN = "run"


@dataclass
class BatchContext:
    """What a hook gets: batch id, the files (absolute paths), its temporary output folder, the watcher."""

    batch: str
    files: list[Path]
    folder: Path
    watcher: Watcher


#: called as ``hook(context)`` after pick, inside the batch's temporary folder (write under
#: ``context.folder / "<step>"``); e.g. extraction + 2D classification of the batch's particles.
BATCH_HOOKS: list[Callable[[BatchContext], None]] = []
#: called as ``hook(run_folder, watcher)`` after the cumulative STAR files are written and
#: before feedback; e.g. particle classifiers over the cumulative particle set.
RUN_HOOKS: list[Callable[[Path, Watcher], None]] = []


@dataclass
class WatchOptions:
    """Options of :func:`watch` (units in the names: seconds, Å, kV, mm)."""

    settle_s: float = 2.0
    poll_s: float = 1.0
    batch: int = 4
    max_latency_s: float = 4.0
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
    device: str = "cpu"
    search_min: int = 4
    feedback: bool = True
    pick_report: bool = False
    step_delay_s: float = 0.0  # testing: sleep this long inside each batch before completing it
    quiet: bool = False

    def check(self) -> None:
        if self.settle_s < 0 or self.poll_s <= 0 or self.max_latency_s < 0:
            raise CryoflowError(None, "--settle and --max-latency must be >= 0 and --poll > 0 seconds")
        if self.batch < 1:
            raise CryoflowError(None, f"--batch must be at least 1, got {self.batch}")
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
        self.counters = Counters()
        self._model = None
        self._cumulative: Cumulative | None = None
        self._child: tuple[int, dict] | None = None  # the background refresh: (pid, its feedback event)
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
            elif kind == "params":
                self.params = {
                    k: ev.get(k) for k in ("diameter_A", "threshold", "batch", "filter_diameter_A", "template")
                }
        # a batch folder renamed into place just before a crash counts as done
        recovered = [b for b in self.batches if b not in self.done and self._complete(b)]
        self.journal.append(*({"e": "done", "b": b, "recovered": True} for b in recovered))
        self.done.update(recovered)
        for b in self.done:
            for g in self.batches.get(b, []):
                self.files[g].state = "processed"
        if self.params is None and "pick" in self.opt.steps:
            self._params_from_batches()
        # half-done batches: their temporary folders are removed, the batches redone
        for tmp in (self.out / BATCHES).glob(".b*.part"):
            shutil.rmtree(tmp, ignore_errors=True)

    def _complete(self, b: str) -> bool:
        return (self.out / BATCHES / b / "manifest.json").is_file()

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
        """Build batch ``b``'s folder (unless complete); True when it is complete afterwards."""
        from cryoflow.io import atomic_dir
        from cryoflow.report.builder import write_summary

        if self._complete(b):
            if b not in self.done:
                self.journal.append({"e": "done", "b": b, "recovered": True})
                self.done.add(b)
            return True
        rels = self.batches[b]
        paths = [(self.input / f).resolve() for f in rels]
        t0 = time.perf_counter()
        try:
            with atomic_dir(self.out / BATCHES / b) as tmp:
                self._steps(b, paths, tmp)
                for hook in BATCH_HOOKS:
                    hook(BatchContext(b, paths, tmp, self))
                if self.opt.step_delay_s:
                    time.sleep(self.opt.step_delay_s)
                manifest = {
                    "batch": b,
                    "files": [
                        {"file": f, "path": str(p), "size": self.files[f].size, "mtime": self.files[f].mtime}
                        for f, p in zip(rels, paths, strict=True)
                    ],
                    "steps": [s for s in STEPS if s in self.opt.steps],
                    "pick_params": self.params,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                write_summary(tmp / "manifest.json", manifest)  # written last: its presence marks a complete batch
        except CryoflowError as exc:
            self.journal.append({"e": "failed", "b": b, "why": str(exc)})
            self.counters.failed += len(rels)
            self._say(f"batch {b} failed: {exc}")
            return False
        self.journal.append({"e": "done", "b": b, "n": len(rels), "s": round(time.perf_counter() - t0, 3)})
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
        return True

    def _steps(self, b: str, paths: list[Path], tmp: Path) -> None:
        """Run the per-micrograph steps of batch ``b`` into ``tmp`` (the steps' own functions)."""
        opt = self.opt

        def timed(step, fn):
            t = time.perf_counter()
            fn()
            s = round(time.perf_counter() - t, 3)
            self.counters.seconds[step] = self.counters.seconds.get(step, 0.0) + s
            self.journal.append({"e": "step", "b": b, "step": step, "s": s})

        if "ctf" in opt.steps:
            from cryoflow.ctf import Optics, Settings, run_ctf

            optics = Optics(opt.voltage, opt.cs, opt.amplitude_contrast)
            settings = Settings.fast() if opt.ctf_fast else Settings(tilt=opt.tilt)
            timed("ctf", lambda: run_ctf(paths, tmp / "ctf", opt.pixel_size, optics, settings, device=opt.device))
        if "micassess" in opt.steps:
            from cryoflow.micassess.run import run_micassess

            timed(
                "micassess",
                lambda: run_micassess(
                    tmp / "ctf" / "micrographs_ctf.star", tmp / "micassess", model=self.model(), device=opt.device
                ),
            )
        if "pick" in opt.steps:
            from cryoflow.io import read_table
            from cryoflow.picking.pick import run_pick

            good = tmp / "micassess" / "micrographs_good.star"
            if not len(read_table(good, "micrographs").table):
                self.journal.append({"e": "step", "b": b, "step": "pick", "s": 0.0, "skipped": "no good micrograph"})
                return
            p = self.params or {}
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
                    report=opt.pick_report,
                ),
            )

    def model(self):
        """The micassess model, loaded once."""
        if self._model is None:
            from cryoflow.micassess.model import MicAssessModel

            self._model = MicAssessModel.load(None)
        return self._model

    # ---- cumulative run and feedback ---------------------------------------------------------
    def refresh(self, background: bool = False) -> None:
        """Bring ``run/`` up to the complete batches, run the hooks, feedback and the index report.

        The STAR tables and hooks are brought up to date here; feedback and the index report
        (the slow part: the planner and the HTML pages) run here too, or with ``background``
        in a forked child (:meth:`_fork_refresh`) while the watcher goes on with the next batch.
        """
        if "ctf" not in self.opt.steps:
            self.journal.append({"e": "feedback", "upto": max(self.done, default=None), "skipped": "no ctf step"})
            return
        run = self.out / RUN
        if self._cumulative is None:
            self._cumulative = Cumulative(run, self.out / BATCHES)
        self._cumulative.update(sorted(self.done), self.params)
        for hook in RUN_HOOKS:
            hook(run, self)
        ev = {"e": "feedback", "upto": max(self.done), "micrographs": self._cumulative.n_micrographs}
        if background and self._fork_refresh(ev):
            return
        error = _feedback_and_index(run, self.input, self.opt.feedback and self._cumulative.n_micrographs > 0)
        if error:
            ev["error"] = error
            self._say(f"feedback not updated: {error}")
        self.journal.append(ev)

    def _fork_refresh(self, ev: dict) -> bool:
        """Run feedback and the index report in a forked child; its event is journaled when it ends (:meth:`reap`).

        The child gets a copy of this process (no imports to redo), dies with the watcher
        (``PR_SET_PDEATHSIG``: a kill -9 of the watcher leaves no writer behind) and writes
        only ``run/feedback`` (swapped in by a rename) and ``run/index.html`` (atomic). False
        where ``fork`` is not available (the refresh then runs in this process).
        """
        if not hasattr(os, "fork"):
            return False
        run = self.out / RUN
        flag = self.opt.feedback and self._cumulative.n_micrographs > 0
        error_file = self.out / REFRESH_ERROR
        error_file.unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 0
            try:
                _die_with_parent()
                if os.getppid() == 1:  # the watcher died before the line above took effect
                    os._exit(1)
                error = _feedback_and_index(run, self.input, flag)
                if error:
                    error_file.write_text(error, encoding="utf-8")
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
        done, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
        if done == 0:
            return False
        self._child = None
        error_file = self.out / REFRESH_ERROR
        if os.waitstatus_to_exitcode(status) != 0:
            ev["error"] = "feedback refresh failed in its child process"
        elif error_file.exists():
            ev["error"] = error_file.read_text(encoding="utf-8")
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
        """Watch until stopped (``--once``: until what was there at the start is processed)."""
        opt = self.opt
        self.journal.append({"e": "start", "pid": os.getpid(), "input": str(self.input), "once": opt.once})
        # batches journaled but not complete (a crash, or a failure last time) go first
        todo = [b for b in self.batches if b not in self.done]
        stale = bool(self.done)  # run/ may lag behind the complete batches after a crash
        why = None
        if opt.once:  # wait for the files there now to settle (later arrivals are left for the next run)
            self.scan()
            first = {f for f, s in self.files.items() if s.state == "seen"}
            while any(self.files[f].state == "seen" for f in first):
                time.sleep(min(opt.poll_s, max(opt.settle_s / 4, 0.01)))
                self.scan()
        while True:
            if not todo:
                if not opt.once:
                    self.scan()
                ready = self.pending()
                now = time.time()
                while len(ready) >= opt.batch:
                    todo.append(self.assign(ready[: opt.batch]))
                    ready = ready[opt.batch :]
                if ready and (opt.once or now - self.files[ready[0]].settled_t >= opt.max_latency_s):
                    todo.append(self.assign(ready))
            if todo:
                b = todo.pop(0)
                stale |= self.run_batch(b)
            idle = self.reap()
            if stale and idle and (not todo or (opt.background_refresh and not opt.once)):
                # refresh feedback when the queue is drained (while catching up, batches go first);
                # in the background, the next batch runs while feedback and the report are written
                if not opt.once:
                    self.scan()
                background = opt.background_refresh and not opt.once
                # in the background a refresh never holds up the batches, so it need not wait for
                # the queue to drain: feedback stays at most one refresh behind while catching up
                if opt.once or background or len(self.pending()) < opt.batch:
                    self.refresh(background=background)
                    stale = False
            why = self.stop_requested()
            if why:
                break
            if opt.once and not todo and not self.pending():
                why = "--once: all processed"
                break
            if not todo:
                time.sleep(opt.poll_s)
        self.reap(wait=True)
        if stale:
            self.refresh()
        self.journal.append({"e": "stop", "why": why, "processed": self.counters.processed})
        if why == "STOP file":
            (self.out / STOP_FILE).unlink(missing_ok=True)
        self._say(f"stopped ({why}): {self.counters.processed} micrographs in {self.counters.batches} batches")
        return self.counters

    def _say(self, text: str) -> None:
        if not self.opt.quiet:
            print(f"cryoflow watch: {text}", file=sys.stderr, flush=True)


def _feedback_and_index(run: Path, input_dir: Path, feedback: bool) -> str | None:
    """``cryoflow feedback`` on ``run`` (when ``feedback``) and the index report; an error message or None."""
    from cryoflow.report import write_index

    error = _swap_feedback(run) if feedback else None
    write_index(run, title=f"cryoflow watch: {input_dir}")
    return error


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _swap_feedback(run: Path) -> str | None:
    """Run feedback into ``run/.feedback.next`` and swap it in for ``run/feedback``; an error message or None."""
    from cryoflow.feedback.run import run_feedback

    nxt, old, cur = run / ".feedback.next", run / ".feedback.old", run / "feedback"
    for p in (nxt, old):
        if p.exists():
            shutil.rmtree(p)
    try:
        run_feedback(run, nxt)
    except CryoflowError as exc:
        return str(exc)
    if cur.exists():
        os.replace(cur, old)
    os.replace(nxt, cur)
    shutil.rmtree(old, ignore_errors=True)
    return None


class Cumulative:
    """The cumulative run folder: the batches' STAR tables concatenated, written atomically file by file."""

    def __init__(self, run: Path, batches: Path):
        self.run, self.batches = run, batches
        self.included: list[str] = []
        self.tables: dict[str, list] = {k: [] for k in TABLES}
        self.coordinates: list[pd.DataFrame] = []
        self.picks: dict[str, int] = {}
        self.pick_summaries: list[dict] = []
        self.n_micrographs = 0

    def update(self, done: list[str], params: dict | None) -> None:
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
        if new:
            self._write(params)

    def _write(self, params: dict | None) -> None:
        from cryoflow.ctf.run import _add_relative_thickness
        from cryoflow.io import write_blocks, write_table
        from cryoflow.report.builder import write_summary

        merged = {k: _concat(v) for k, v in self.tables.items()}
        if merged["ctf"] is not None:  # ice thickness relative to the whole session, not one batch
            failed = merged["ctf_failed"].table if merged["ctf_failed"] is not None else pd.DataFrame()
            _add_relative_thickness(merged["ctf"].table, failed)
        for key, table in merged.items():
            step, name = TABLES[key]
            if table is not None:
                (self.run / step).mkdir(parents=True, exist_ok=True)
                write_table(self.run / step / name, table)
        counts = {k: (len(v.table) if v is not None else 0) for k, v in merged.items()}
        self.n_micrographs = counts["ctf"] + counts["ctf_failed"]
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
