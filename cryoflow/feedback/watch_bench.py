"""``cryoflow bench watch``: none missed or twice under kill -9, latency and throughput of ``cryoflow watch``.

Two measurements, each with a background writer process that writes micrographs into an
EPU-like folder (``GridSquare_<s>/Data/FoilHole_<h>_Data_<k>.mrc``) the way a microscope
does, in chunks, straight to the final name:

1. ``--files`` tiny (64², 16 KiB) MRC files written at ``--rate`` files/s while a watcher
   subprocess (journal and batches only, ``--steps none``) is killed with SIGKILL
   ``--kills`` times and restarted; a last ``--once`` pass picks up the rest. Then the
   journal and the batch manifests are audited (:func:`cryoflow.feedback.watch.audit`):
   files missed, files processed twice.
2. ``--big`` 4096² micrographs (simulated with the ``realistic`` preset, or copied from
   ``--pool DIR``) written every ``--interval`` seconds while a watcher runs the full
   steps (ctf, micassess, pick, feedback); latency from a file's last byte written to
   the feedback refresh that covers it (s: median, p90, the first and second half of the
   files, the files written after picking's parameters were fixed, i.e. after the
   start-up, and the median time to each stage: settled, batch started, batch done),
   throughput (micrographs/s), and from the journal each step's seconds and CPU seconds per
   micrograph (the refresh's CPU in its background process included), and the particle
   stage (extraction, the 2D rounds in the background: when they started and ended, batches
   scored by a particle model, the clean stack). The load average is printed with them: on a
   shared machine the wall-clock figures depend on it.

Examples::

    cryoflow bench watch
    cryoflow bench watch --files 1000 --kills 3 --big 0
    cryoflow bench watch --files 0 --big 60 --interval 2 --pool sim_realistic/
    cryoflow bench watch --files 0 --classify-min 800      # a 2D round during the run (30 files: ~1,700 particles)
    cryoflow bench watch --files 0 --no-particles          # the same without extraction and 2D, to compare
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _tiny_mrc(shape: int = 64, pixel_size: float = 1.0) -> bytes:
    """Bytes of one ``shape``² float32 MRC micrograph (pixel size Å in the header)."""
    import mrcfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(np.random.default_rng(0).normal(size=(shape, shape)).astype(np.float32))
            mrc.voxel_size = pixel_size
        return path.read_bytes()


def epu_name(i: int, per_square: int = 50) -> str:
    """Relative EPU-style path of the ``i``-th exposure (0-based)."""
    return f"GridSquare_{1000 + i // per_square}/Data/FoilHole_{100000 + i}_Data_1.mrc"


def writer(folder: str, n: int, rate: float, log: str, sources: list[str] | None = None, chunks: int = 2) -> None:
    """Write ``n`` micrographs into ``folder`` at ``rate`` per second (each in ``chunks`` writes,
    0.01 s apart, to the final name); log ``{"f", "t"}`` (t: last byte written, s since the
    epoch) per file to ``log``. ``sources``: MRC files copied in turn (default: a 64² one)."""
    data = [Path(s).read_bytes() for s in sources] if sources else [_tiny_mrc()]
    folder = Path(folder)
    t0 = time.time()
    with open(log, "a", encoding="utf-8") as out:
        for i in range(n):
            wait = t0 + i / rate - time.time()
            if wait > 0:
                time.sleep(wait)
            rel = epu_name(i)
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            blob = data[i % len(data)]
            step = -(-len(blob) // chunks)
            with open(path, "wb") as fh:
                for k in range(0, len(blob), step):
                    fh.write(blob[k : k + step])
                    fh.flush()
                    if k + step < len(blob):
                        time.sleep(0.01)
            out.write(json.dumps({"f": rel, "t": time.time()}) + "\n")
            out.flush()


def _start_writer(folder: Path, n: int, rate: float, log: Path, sources=None) -> subprocess.Popen:
    code = (
        "import sys, json; from cryoflow.feedback.watch_bench import writer; a = json.loads(sys.argv[1]); writer(**a)"
    )
    args = {"folder": str(folder), "n": n, "rate": rate, "log": str(log), "sources": sources}
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(args)])


def _watch_cmd(input_dir: Path, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "cryoflow", "watch", str(input_dir), "--out", str(out), "--quiet", *options]


def kill_check(
    folder: str | os.PathLike,
    files: int = 1000,
    rate: float = 200.0,
    kills: int = 3,
    batch: int = 20,
    seed: int = 0,
    step_delay: float = 0.05,
) -> dict:
    """Write ``files`` tiny micrographs at ``rate``/s while a watcher is SIGKILLed ``kills`` times
    at seeded random moments and restarted; finish with ``--once``; audit. Returns the audit
    plus ``kills`` done, ``seconds`` and ``journal_events``."""
    from cryoflow.feedback.watch import JOURNAL, WatchOptions, audit, watch

    folder = Path(folder)
    inp, out, log = folder / "incoming", folder / "watch", folder / "writer.jsonl"
    inp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    duration = files / rate
    options = [
        "--steps",
        "none",
        "--settle",
        "0.2",
        "--poll",
        "0.05",
        "--batch",
        str(batch),
        "--max-latency",
        "0.5",
        "--step-delay",
        str(step_delay),
    ]
    t0 = time.time()
    w = _start_writer(inp, files, rate, log)
    done_kills = 0
    moments = np.sort(rng.uniform(0.2, 0.8, size=kills)) * max(duration, 1.0)
    watcher = subprocess.Popen(_watch_cmd(inp, out, *options))
    for m in moments:
        _wait_started(out, watcher, batch_done=True)
        # let it work a while (batches run back to back, each >= step_delay s), so the kill lands mid-run
        time.sleep(max(float(rng.uniform(0.3, 1.0)), t0 + m - time.time()))
        watcher.send_signal(signal.SIGKILL)
        watcher.wait()
        done_kills += 1
        watcher = subprocess.Popen(_watch_cmd(inp, out, *options))
    w.wait()
    _wait_started(out, watcher)
    time.sleep(0.5)
    (out / "STOP").touch()
    watcher.wait(timeout=120)
    # a last pass (in this process: no start-up time) takes what arrived after the STOP
    watch(inp, out, WatchOptions(steps=(), settle_s=0.2, poll_s=0.05, batch=batch, once=True, quiet=True))
    result = audit(out, inp)
    result.update(_interrupted(out))
    written = sum(1 for _ in open(log, encoding="utf-8"))
    events = sum(1 for _ in open(out / JOURNAL, encoding="utf-8"))
    result.update(
        {"written": written, "kills": done_kills, "seconds": round(time.time() - t0, 2), "journal_events": events}
    )
    return result


def _interrupted(out: Path) -> dict:
    """From the journal: batches journaled but not done when a watcher restarted (redone with the same files) and how many
    micrographs were complete before each restart."""
    from cryoflow.feedback.journal import read_journal
    from cryoflow.feedback.watch import JOURNAL

    open_batches: set[str] = set()
    cut, done_before = [], []
    n_done = 0
    for e in read_journal(out / JOURNAL):
        if e["e"] == "batch":
            open_batches.add(e["b"])
        elif e["e"] == "done":
            open_batches.discard(e["b"])
            n_done += e.get("n", 0)
        elif e["e"] == "start":
            cut.extend(sorted(open_batches))
            done_before.append(n_done)
    return {"batches_pending_at_restart": len(set(cut)), "processed_at_each_start": done_before}


def _wait_started(out: Path, watcher: subprocess.Popen, timeout: float = 120.0, batch_done: bool = False) -> None:
    """Wait until ``watcher`` has journaled its start (its imports can take seconds) and, with
    ``batch_done``, completed a batch since (so a kill lands mid-run even on a busy machine)."""
    from cryoflow.feedback.journal import read_journal
    from cryoflow.feedback.watch import JOURNAL

    end = time.time() + timeout
    while time.time() < end and watcher.poll() is None:
        if (out / JOURNAL).exists():
            events = read_journal(out / JOURNAL)
            start = next((i for i, e in enumerate(events) if e["e"] == "start" and e.get("pid") == watcher.pid), None)
            if start is not None and (not batch_done or any(e["e"] == "done" for e in events[start:])):
                return
        time.sleep(0.05)


def _pool(n: int, folder: Path) -> list[str]:
    """``n`` 4096² micrographs simulated with the realistic preset (seed 0) into ``folder``."""
    from cryoflow.simulate import simulate_dataset

    simulate_dataset(folder, "realistic", seed=0, n_micrographs=n, device="cpu", report=False)
    return sorted(str(p) for p in folder.rglob("Data/*.mrc"))


def latency_check(
    folder: str | os.PathLike,
    big: int = 30,
    interval: float = 2.0,
    pool: str | None = None,
    batch: int = 4,
    max_latency: float = 0.0,
    settle: float = 1.0,
    steps: str = "ctf,micassess,pick",
    ctf_full: bool = False,
    classify_min: int = 3000,
    particles: bool = True,
) -> dict:
    """Write ``big`` 4096² micrographs every ``interval`` s while a full watcher runs; latencies (s)
    from each file's last byte to the feedback refresh covering it, and throughput."""
    from cryoflow.feedback.journal import read_journal
    from cryoflow.feedback.watch import JOURNAL, audit

    folder = Path(folder)
    inp, out, log = folder / "incoming", folder / "watch", folder / "writer.jsonl"
    inp.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p) for p in Path(pool).rglob("*.mrc") if "Data" in p.parts) if pool else []
    if not sources:
        sources = _pool(min(big, 4), folder / "pool")
    from cryoflow.io import read_info

    apix = read_info(sources[0]).pixel_size
    options = [
        "--settle",
        str(settle),
        "--poll",
        "0.25",
        "--batch",
        str(batch),
        "--max-latency",
        str(max_latency),
        "--stop-after",
        str(big),
        "--steps",
        steps,
    ]
    options += (["--pixel-size", str(apix)] if apix else []) + (["--ctf-full"] if ctf_full else [])
    options += ["--classify-min", str(classify_min)] if particles else ["--no-particles"]
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    with open(folder / "watch.log", "wb") as log_fh:  # the watcher's messages, for a look when it fails
        watcher = subprocess.Popen(_watch_cmd(inp, out, *options), stderr=log_fh)
        time.sleep(2.0)  # the watcher's imports
        t0 = time.time()
        w = _start_writer(inp, big, 1.0 / interval, log, sources)
        w.wait()
        code = watcher.wait(timeout=60 * big)
    if code != 0:
        tail = (folder / "watch.log").read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
        print("\n".join([f"the watcher failed (exit code {code}):", *tail]), file=sys.stderr)
    written = {json.loads(line)["f"]: json.loads(line)["t"] for line in open(log, encoding="utf-8")}
    events = read_journal(out / JOURNAL)
    batch_of = {f: e["b"] for e in events if e["e"] == "batch" for f in e["files"]}
    settled_t = {e["f"]: e["t"] for e in events if e["e"] == "settled"}
    batch_t = {e["b"]: e["t"] for e in events if e["e"] == "batch"}
    done_t = {e["b"]: e["t"] for e in events if e["e"] == "done"}
    refreshed = [(e["t"], e["upto"]) for e in events if e["e"] == "feedback" and e.get("upto")]
    fixed = next((e["t"] for e in events if e["e"] == "params"), None)  # picking fixed: the start-up is over
    lat, steady, stages = [], [], {"settled": [], "batch_start": [], "batch_done": []}
    for f, t in written.items():
        b = batch_of.get(f)
        when = next((tr for tr, upto in refreshed if b and upto >= b), None)
        if when is not None:
            lat.append(when - t)
            if fixed is not None and t >= fixed:
                steady.append(when - t)
            stages["settled"].append(settled_t.get(f, np.nan) - t)
            stages["batch_start"].append(batch_t.get(b, np.nan) - t)
            stages["batch_done"].append(done_t.get(b, np.nan) - t)
    step_s: dict[str, float] = {}
    step_cpu: dict[str, float] = {}
    for e in events:
        if e["e"] == "step":
            step_s[e["step"]] = step_s.get(e["step"], 0.0) + e["s"]
            step_cpu[e["step"]] = step_cpu.get(e["step"], 0.0) + e.get("cpu", 0.0)  # 0: skipped (no good micrograph)
    batch_cpu = sum(e.get("cpu", 0.0) for e in events if e["e"] == "done")
    refreshes = [e for e in events if e["e"] == "feedback" and e.get("upto")]
    step_cpu["batch_overhead"] = batch_cpu - sum(step_cpu.values())  # journal, folders, manifests outside the steps
    step_cpu["refresh_read"] = sum(e.get("read_cpu") or 0.0 for e in refreshes)
    step_cpu["refresh_write_feedback"] = sum(e.get("cpu") or 0.0 for e in refreshes)  # in the child when background
    last = max(t for t, _ in refreshed) if refreshed else time.time()
    lat = np.array(lat)
    half = len(lat) // 2
    n = max(len(written), 1)
    result = audit(out, inp)
    result.update(
        {
            "micrographs": big,
            "interval_s": interval,
            "shape": "4096x4096",
            "latency_s": {
                "median": round(float(np.median(lat)), 2) if len(lat) else None,
                "p90": round(float(np.quantile(lat, 0.9)), 2) if len(lat) else None,
                "max": round(float(lat.max()), 2) if len(lat) else None,
                "first_half_median": round(float(np.median(lat[:half])), 2) if half else None,
                "second_half_median": round(float(np.median(lat[half:])), 2) if half else None,
            },
            # the files written after picking's diameter and threshold were fixed (the first batch's
            # search, a one-off start-up of ~7 s of CPU): how the watcher keeps up in a session
            "steady_latency_s": {
                "files": len(steady),
                "median": round(float(np.median(steady)), 2) if steady else None,
                "p90": round(float(np.quantile(steady, 0.9)), 2) if steady else None,
                "max": round(float(np.max(steady)), 2) if steady else None,
            },
            # median seconds from the last byte written to each stage of the file's way to feedback
            "latency_stages_median_s": {k: round(float(np.nanmedian(v)), 2) for k, v in stages.items() if len(v)},
            "latencies_s": [round(float(x), 2) for x in lat],  # in the order the files were written
            "throughput_per_s": round(len(lat) / max(last - t0, 1e-9), 3),
            "batches": len(done_t),
            "refreshes": len(refreshes),
            "step_seconds_per_micrograph": {k: round(v / n, 3) for k, v in step_s.items()},
            "step_cpu_seconds_per_micrograph": {k: round(v / n, 3) for k, v in step_cpu.items()},
            "cores": os.cpu_count(),
            "steps": steps,
            "ctf": "full" if ctf_full else "fast",
            "options": options,
            "load_average_start": load_start,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "particles": _particle_figures(out, events, t0),
        }
    )
    return result


def _particle_figures(out: Path, events: list[dict], t0: float) -> dict:
    """The particle stage of a watch run: 2D rounds (when they started and took, s after the first
    file), batches scored by a particle model, and the cumulative clean stack (run/particles)."""
    rounds = {
        e["r"]: {"started_s": round(e["t"] - t0, 1), "particles": e.get("particles")}
        for e in events
        if e["e"] == "round"
    }
    for e in events:
        if e["e"] in ("round_done", "round_failed") and e["r"] in rounds:
            rounds[e["r"]].update(ended_s=round(e["t"] - t0, 1), outcome=e["e"], wall_s=e.get("wall_s"))
            rounds[e["r"]].update({k: e[k] for k in ("trained", "clean_particles") if k in e})
    manifests = [json.loads(m.read_text(encoding="utf-8")) for m in sorted((out / "batches").glob("b*/manifest.json"))]
    summary = out / "run" / "particles" / "summary.json"
    extract = out / "run" / "extract" / "summary.json"
    return {
        "rounds": rounds,
        "batches_scored_by_a_model": sum(1 for m in manifests if m.get("particle_model")),
        "extracted": json.loads(extract.read_text(encoding="utf-8")).get("particles") if extract.exists() else 0,
        "run_particles": json.loads(summary.read_text(encoding="utf-8")) if summary.exists() else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="cryoflow bench watch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000, help="tiny files for the kill -9 check (0: skip)")
    parser.add_argument("--rate", type=float, default=200.0, help="tiny files written per second")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of the watcher during the check")
    parser.add_argument(
        "--big",
        type=int,
        default=30,
        help="4096² micrographs for latency/throughput (0: skip; 30: a minute of arrivals)",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between 4096² micrographs")
    parser.add_argument("--batch", type=int, default=4, help="watch --batch for the 4096² run")
    parser.add_argument("--steps", default="ctf,micassess,pick", help="watch --steps for the 4096² run")
    parser.add_argument("--ctf-full", action="store_true", help="watch --ctf-full: cryoflow ctf's default settings")
    parser.add_argument(
        "--max-latency",
        type=float,
        default=0.0,
        help="watch --max-latency for the 4096² run (0: a batch starts as soon as a worker is free)",
    )
    parser.add_argument(
        "--classify-min", type=int, default=3000, help="watch --classify-min for the 4096² run (particles per 2D round)"
    )
    parser.add_argument("--no-particles", action="store_true", help="watch --no-particles: stop after pick")
    parser.add_argument("--pool", help="folder of micrographs to copy (default: simulate 4 realistic ones)")
    parser.add_argument("--work", help="folder to work in (default: the system's temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (journal, batches) for a look")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    figures: dict = {}
    if args.keep:
        keep = tempfile.mkdtemp(prefix="bench_watch_", dir=args.work)
        print(f"working folder (kept): {keep}")
    with contextlib.nullcontext(keep) if args.keep else tempfile.TemporaryDirectory(dir=args.work) as tmp:
        if args.files:
            k = kill_check(Path(tmp) / "kill", args.files, args.rate, args.kills, seed=args.seed)
            figures["kill9"] = k
            print(
                f"kill -9 check: {k['written']} written, {k['processed']} processed, {k['missed']} missed, "
                f"{k['duplicated']} twice, {k['kills']} SIGKILLs, {k['seconds']} s"
            )
        if args.big:
            r = latency_check(
                Path(tmp) / "big",
                args.big,
                args.interval,
                args.pool,
                batch=args.batch,
                max_latency=args.max_latency,
                steps=args.steps,
                ctf_full=args.ctf_full,
                classify_min=args.classify_min,
                particles=not args.no_particles,
            )
            figures["latency"] = r
            print(
                f"4096² every {args.interval:g} s on {r['cores']} cores: latency median {r['latency_s']['median']} s, "
                f"p90 {r['latency_s']['p90']} s, max {r['latency_s']['max']} s (first half "
                f"{r['latency_s']['first_half_median']}, second half {r['latency_s']['second_half_median']}); "
                f"after the start-up (the {r['steady_latency_s']['files']} files written once picking was fixed): "
                f"median {r['steady_latency_s']['median']} s, p90 {r['steady_latency_s']['p90']} s, max "
                f"{r['steady_latency_s']['max']} s; "
                f"throughput {r['throughput_per_s']} micrographs/s; {r['missed']} missed, {r['duplicated']} twice; "
                f"{r['batches']} batches, {r['refreshes']} refreshes; stages (median s after the last byte) "
                f"{r['latency_stages_median_s']}; step wall s/micrograph {r['step_seconds_per_micrograph']}; "
                f"CPU s/micrograph {r['step_cpu_seconds_per_micrograph']}; load average {r['load_average_start']} "
                f"at the start, {r['load_average']} at the end"
            )
            p = r["particles"]
            print(
                f"particles: {p['extracted']} extracted; 2D rounds {p['rounds']}; {p['batches_scored_by_a_model']} "
                f"batches scored by a particle model; run/particles {p['run_particles']}"
            )
    return figures


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
