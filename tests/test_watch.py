"""cryoflow watch: settling, batches, resume after a crash (kill -9), cumulative outputs and feedback."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from cryoflow.cli import main as cli
from cryoflow.feedback.journal import Journal, read_journal
from cryoflow.feedback.watch import BATCHES, JOURNAL, Watcher, WatchOptions, audit, watch
from cryoflow.feedback.watch_bench import _tiny_mrc, epu_name, kill_check

QUICK = dict(settle_s=0.05, poll_s=0.02, steps=(), quiet=True)


def _write(folder, n, start=0):
    blob = _tiny_mrc()
    for i in range(start, start + n):
        p = folder / epu_name(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob)
    return blob


def test_journal_drops_a_cut_line(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    j.append({"e": "seen", "f": "a"}, {"e": "seen", "f": "b"})
    j.close()
    with open(tmp_path / "j.jsonl", "ab") as fh:
        fh.write(b'{"e": "batch", "b"')  # a crash in the middle of a line
    j = Journal(tmp_path / "j.jsonl")
    assert [e["f"] for e in j.events] == ["a", "b"]
    j.append({"e": "seen", "f": "c"})
    j.close()
    assert [e["f"] for e in read_journal(tmp_path / "j.jsonl")] == ["a", "b", "c"]


def test_settle_invalid_fractions_and_once(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    blob = _write(inp, 5)
    (inp / "GridSquare_1000/Data/FoilHole_1_Data_1_fractions.mrc").write_bytes(blob)  # a movie: skipped
    (inp / "GridSquare_1000/Data/.FoilHole_2_Data_1.mrc").write_bytes(blob)  # a hidden temporary: skipped
    half = inp / epu_name(5)
    half.write_bytes(blob[: len(blob) // 2])  # cut short: settles but does not open
    counters = watch(inp, out, WatchOptions(batch=2, once=True, **QUICK))
    assert counters.processed == 5 and counters.batches == 3
    events = read_journal(out / JOURNAL)
    assert [e["f"] for e in events if e["e"] == "invalid"] == [epu_name(5)]
    # the file is completed later: it settles now and is processed once; nothing else is redone
    half.write_bytes(blob)
    os.utime(half, (time.time() + 1, time.time() + 1))
    counters = watch(inp, out, WatchOptions(batch=2, once=True, **QUICK))
    assert counters.processed == 1
    a = audit(out, inp)
    assert (a["files"], a["processed"], a["missed"], a["duplicated"], a["unknown"]) == (6, 6, 0, 0, 0)


def test_fresh_file_waits_for_settle(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _write(inp, 1)
    w = Watcher(inp, out, WatchOptions(**{**QUICK, "settle_s": 30.0}))
    w.scan()
    assert [s.state for s in w.files.values()] == ["seen"]  # just written: not settled yet
    w.journal.close()


def test_half_done_batch_is_redone_and_complete_one_is_not(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _write(inp, 4)
    watch(inp, out, WatchOptions(batch=2, once=True, **QUICK))
    # simulate a crash: batch 2's folder half built (temporary), its "done" never journaled;
    # batch 1 complete on disk but its "done" lost too
    events = read_journal(out / JOURNAL)
    lines = [json.dumps(e) + "\n" for e in events if e["e"] not in ("done", "feedback", "stop")]
    (out / JOURNAL).write_text("".join(lines))
    shutil.move(out / BATCHES / "b000002", out / BATCHES / ".b000002.xyz.part")
    before = (out / BATCHES / "b000001" / "manifest.json").stat().st_mtime_ns
    counters = watch(inp, out, WatchOptions(batch=2, once=True, **QUICK))
    assert counters.processed == 2  # only batch 2 redone
    assert (out / BATCHES / "b000001" / "manifest.json").stat().st_mtime_ns == before
    assert not list((out / BATCHES).glob(".*.part"))
    events = read_journal(out / JOURNAL)
    assert any(e["e"] == "done" and e["b"] == "b000001" and e.get("recovered") for e in events)
    a = audit(out, inp)
    assert (a["processed"], a["missed"], a["duplicated"]) == (4, 0, 0)


def test_kill9_none_missed_none_twice(tmp_path):
    r = kill_check(tmp_path, files=60, rate=20.0, kills=1, batch=5, seed=1, step_delay=0.1)
    assert r["kills"] == 1 and r["written"] == 60
    assert r["processed_at_each_start"][1] > 0  # the kill came after some batches were done
    assert (r["files"], r["processed"], r["missed"], r["duplicated"], r["unknown"]) == (60, 60, 0, 0, 0)


def test_stop_file_and_bad_options(tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    _write(inp, 3)
    out.mkdir()
    (out / "STOP").touch()
    (out / JOURNAL).touch()
    assert (
        cli(
            [
                "watch",
                str(inp),
                "--out",
                str(out),
                "--steps",
                "none",
                "--settle",
                "0",
                "--batch",
                "1",
                "--poll",
                "0.05",
                "--quiet",
            ]
        )
        == 0
    )
    assert not (out / "STOP").exists()
    assert any(e["e"] == "stop" and e["why"] == "STOP file" for e in read_journal(out / JOURNAL))
    assert cli(["watch", str(inp), "--out", str(tmp_path / "o2"), "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err
    assert cli(["watch", str(inp), "--out", str(tmp_path / "o2"), "--extract-box", "63"]) == 2
    assert "--extract-box must be an even number" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.txt").write_text("mine")
    assert cli(["watch", str(inp), "--out", str(full)]) == 2
    assert "holds no watch journal" in capsys.readouterr().err


def test_background_refresh_is_journaled_and_reaped(tmp_path):
    """Feedback refreshes run in a forked child while batches go on; each is journaled once it ends."""
    inp, out = tmp_path / "in", tmp_path / "out"
    _write(inp, 4)
    options = WatchOptions(batch=2, settle_s=0.05, poll_s=0.02, steps=("ctf",), stop_after=4, quiet=True)
    w = Watcher(inp, out, options)
    counters = w.loop()
    w.journal.close()
    assert counters.processed == 4 and w._child is None  # the last child was waited for
    events = read_journal(out / JOURNAL)
    refreshes = [e for e in events if e["e"] == "feedback"]
    assert any(e.get("background") for e in refreshes)
    assert refreshes[-1]["upto"] == max(e["b"] for e in events if e["e"] == "done")
    assert all("error" in e for e in refreshes)  # no micassess step: feedback says so, the watcher goes on
    assert (out / "run" / "index.html").exists()
    a = audit(out, inp)
    assert (a["processed"], a["missed"], a["duplicated"]) == (4, 0, 0)


def test_batches_split_between_free_workers_and_wait_for_the_search(tmp_path):
    """Settled files are split between the idle workers (latency); until picking is fixed, one
    batch at a time of at least search_min files (or after search_wait_s)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    _write(inp, 6)
    w = Watcher(inp, out, WatchOptions(batch=4, settle_s=0, steps=(), quiet=True, workers=2))
    w.scan()
    assert [len(w.batches[b]) for b in w._form(2)] == [3, 3]
    assert [len(w.batches[b]) for b in w._form(1)] == []  # nothing left
    w.journal.close()

    inp2, out2 = tmp_path / "in2", tmp_path / "out2"
    _write(inp2, 3)
    options = WatchOptions(batch=2, settle_s=0, quiet=True, workers=2, search_min=4, search_wait_s=30)
    w = Watcher(inp2, out2, options)
    w.scan()
    assert w._form(2) == []  # 3 < search_min: wait for more
    _write(inp2, 2, start=3)
    w.scan()
    assert [len(w.batches[b]) for b in w._form(2)] == [4]  # one batch, of search_min files
    assert w._slots(None, set()) == 1 and w._slots(object(), {"b000001"}) == 0  # the others wait for it
    w.files[w.pending()[0]].settled_t -= 31
    w.params = None
    assert [len(w.batches[b]) for b in w._form(2)] == [1]  # waited search_wait_s: goes alone
    w.journal.close()

    # a search batch with too few good micrographs (bad holes) doubles the next one
    inp3, out3 = tmp_path / "in3", tmp_path / "out3"
    _write(inp3, 9)
    w = Watcher(inp3, out3, options)
    w.scan()
    w.search_misses = 1
    assert [len(w.batches[b]) for b in w._form(2)] == [8]
    w.journal.close()


def test_worker_failures(tmp_path, monkeypatch):
    """A batch failing in a worker is journaled as failed (retried at the next start) and the
    others go on; a bug in a worker stops the watcher with its traceback and no worker left."""
    import multiprocessing

    from cryoflow.errors import CryoflowError
    from cryoflow.feedback import watch as watch_module

    def refuse_second(context):
        if context.files[0].name == epu_name(1).split("/")[-1]:
            raise CryoflowError(context.files[0], "refused by the hook")

    inp, out = tmp_path / "in", tmp_path / "out"
    _write(inp, 3)
    monkeypatch.setattr(watch_module, "BATCH_HOOKS", [refuse_second])
    counters = watch(inp, out, WatchOptions(batch=1, once=True, workers=2, **QUICK))
    assert (counters.processed, counters.failed) == (2, 1)
    events = read_journal(out / JOURNAL)
    assert [e["why"].split(": ")[-1] for e in events if e["e"] == "failed"] == ["refused by the hook"]
    assert {e.get("worker") for e in events if e["e"] == "done"} - {None}  # built in the workers

    monkeypatch.setattr(watch_module, "BATCH_HOOKS", [lambda context: 1 / 0])
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        watch(inp, out, WatchOptions(batch=1, once=True, workers=2, **QUICK))
    assert not multiprocessing.active_children()
    monkeypatch.setattr(watch_module, "BATCH_HOOKS", [])
    counters = watch(inp, out, WatchOptions(batch=1, once=True, workers=2, **QUICK))
    assert counters.processed == 1  # the failed batch, redone with the same file
    a = audit(out, inp)
    assert (a["processed"], a["missed"], a["duplicated"]) == (3, 0, 0)


def test_cumulative_run_takes_batches_in_order(tmp_path):
    """Batches finishing out of order (two workers) join the run only once every earlier one is done."""
    inp, out = tmp_path / "in", tmp_path / "out"
    _write(inp, 3)
    w = Watcher(inp, out, WatchOptions(batch=1, settle_s=0, steps=(), quiet=True))
    w.scan()
    b1, b2, b3 = (w.assign([f]) for f in w.pending())
    w.done = {b2, b3}
    assert w._includable({b1}) == set()
    assert w._includable(set()) == {b2, b3}  # b1 failed (not waiting any more): the others go on
    w.done.add(b1)
    assert w._includable({b3}) == {b1, b2}
    w.journal.close()


def test_relative_thickness_against_the_session():
    """A batch's relative ice thickness uses the session's earlier micrographs too (a batch of one
    is not its own reference), as if every micrograph had been given at once."""
    import numpy as np
    import pandas as pd

    from cryoflow.ctf.run import add_relative_thickness

    def thickness(intensities, others=()):
        fitted = pd.DataFrame({"cryoflowMeanIntensity": intensities})
        add_relative_thickness(fitted, pd.DataFrame(), others)
        return fitted["cryoflowRelativeIceThickness"].to_numpy()

    session = [100.0, 98.0, 80.0, 101.0, 99.0]
    whole = thickness(session)
    assert thickness([80.0])[0] == 0.0  # alone, the thick micrograph looks like the thinnest ice
    assert np.allclose(thickness([80.0], session[:2] + session[3:])[0], whole[2])


@pytest.mark.slow
def test_full_steps_cumulative_and_feedback(tmp_path):
    """ctf + micassess + pick on 6 tiny simulated micrographs in 2 batches; the cumulative run
    folder has every micrograph once and feedback sees them all."""
    from cryoflow.io import read_table
    from cryoflow.simulate import simulate_dataset

    data = tmp_path / "sim"
    simulate_dataset(data, "tiny", seed=1, device="cpu", report=False)
    inp, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(data, inp, ignore=shutil.ignore_patterns("*.star", "*.json", "*.html", "*.png"))
    counters = watch(inp, out, WatchOptions(batch=3, once=True, settle_s=0.05, poll_s=0.02, quiet=True))
    assert counters.processed == 6
    run = out / "run"
    ctf = read_table(run / "ctf" / "micrographs_ctf.star", "micrographs").table
    failed = run / "ctf" / "micrographs_ctf_failed.star"
    n_failed = len(read_table(failed, "micrographs").table) if failed.exists() else 0
    assert len(ctf) + n_failed == 6 and ctf["rlnMicrographName"].is_unique
    good = read_table(run / "micassess" / "micrographs_good.star", "micrographs").table
    rejected = read_table(run / "micassess" / "micrographs_rejected.star", "micrographs").table
    assert len(good) + len(rejected) == 6
    feedback = json.loads((run / "feedback" / "feedback.json").read_text())
    assert feedback["grid"]["micrographs"] == 6
    assert (run / "index.html").exists() and (run / "pick" / "coordinates.star").exists()
    assert (run / "feedback" / "report.html").exists()  # drawn at the end at the latest
    assert not list((out / BATCHES).glob("b*/ctf/report.html"))  # no per-batch step reports by default

    # the same in the watcher itself, one batch at a time, with every step's report: the same results
    out1 = tmp_path / "out1"
    options = WatchOptions(batch=3, once=True, settle_s=0.05, poll_s=0.02, quiet=True, workers=1, step_reports=True)
    assert watch(inp, out1, options).processed == 6
    assert list((out1 / BATCHES).glob("b*/ctf/report.html"))

    def table(o, step, name):
        t = read_table(o / "run" / step / name, "micrographs").table
        return t.sort_values("rlnMicrographName").reset_index(drop=True)

    ctf1 = table(out1, "ctf", "micrographs_ctf.star")
    measured = [c for c in ctf.columns if c not in ("cryoflowDiagnostic", "cryoflowRelativeIceThickness")]
    assert table(out, "ctf", "micrographs_ctf.star")[measured].equals(ctf1[measured])
    for name in ("micrographs_good.star", "micrographs_rejected.star"):
        assert list(table(out, "micassess", name)["rlnMicrographName"]) == list(
            table(out1, "micassess", name)["rlnMicrographName"]
        )
    picks = [json.loads((o / "run" / "pick" / "summary.json").read_text())["picks_per_micrograph"] for o in (out, out1)]
    assert picks[0] == picks[1]


def _truth_precision(star, truth, radius_px: float = 20.0) -> tuple[float, int]:
    """Share of the particles of ``star`` within ``radius_px`` of a true (not junk) particle of the simulator."""
    import numpy as np

    from cryoflow.io import read_table

    t = read_table(star, "particles").table
    if not len(t):
        return float("nan"), 0
    by_mic = {}
    for name, g in truth.groupby(truth["rlnMicrographName"].map(lambda n: n.split("/")[-1])):
        by_mic[name] = (g[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float), g["cfIsJunk"].to_numpy(int))
    good = 0
    for name, g in t.groupby(t["rlnMicrographName"].map(lambda n: str(n).split("/")[-1])):
        xy, junk = by_mic[name]
        d = np.hypot(*(xy[None] - g[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)[:, None]).transpose(2, 0, 1))
        nearest = d.argmin(1)
        good += int(((d.min(1) <= radius_px) & (junk[nearest] == 0)).sum())
    return good / len(t), len(t)


def _particle_keys(star) -> list[tuple[str, float, float]]:
    from cryoflow.io import read_table

    t = read_table(star, "particles").table
    return [
        (str(m).split("/")[-1], round(float(x), 1), round(float(y), 1))
        for m, x, y in zip(t["rlnMicrographName"], t["rlnCoordinateX"], t["rlnCoordinateY"], strict=True)
    ]


@pytest.mark.slow
def test_particles_2d_round_kill_resume_and_scoring(tmp_path):
    """Extraction per batch; a 2D round (classify2d + classassess + particles train) in the background
    once enough particles gathered, killed (-9) mid-round and resumed with no particle lost or twice;
    later batches scored by its model; the clean stack measured against the simulator's truth."""
    import signal
    import subprocess
    import sys

    from cryoflow.io import read_table
    from cryoflow.simulate import simulate_dataset
    from cryoflow.simulate.presets import get_preset

    preset = get_preset("tiny").replace(
        n_micrographs=12, shape=(512, 512), particles=(50, 70), junk_fraction=0.35, squares=("good", "good", "medium")
    )
    data = simulate_dataset(tmp_path / "sim", preset, seed=3, device="cpu", report=False).path
    truth = read_table(data / "truth" / "particles_truth.star", "particles").table
    mics = sorted(p for p in data.rglob("Data/*.mrc"))
    inp, out = tmp_path / "in", tmp_path / "out"

    def arrive(paths):
        for p in paths:
            dst = inp / p.relative_to(data)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst)

    arrive(mics[:8])
    args = dict(batch=3, settle_s=0.05, poll_s=0.02, quiet=True, classify_min=80, classify_iterations=8)
    args.update(classify_classes=6, particle_epochs=3)
    cmd = [sys.executable, "-m", "cryoflow", "watch", str(inp), "--out", str(out), "--once", "--quiet"]
    cmd += "--batch 3 --settle 0.05 --poll 0.02 --classify-min 80 --classify-iterations 8".split()
    cmd += "--classify-classes 6 --particle-epochs 3 --round-delay 0.5".split()
    proc = subprocess.Popen(cmd)
    part = out / "rounds" / ".r0001.part"
    end = time.time() + 300
    while time.time() < end and proc.poll() is None:  # kill once 2D has checkpointed an iteration
        if (part / ".classify2d.classify2d" / "state.pt").exists() or (part / "classify2d").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the watcher ended before the 2D round could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # the round process dies with the watcher (PR_SET_PDEATHSIG)
    assert not (out / "rounds" / "r0001").exists()
    assert watch(inp, out, WatchOptions(once=True, **args)).processed == 0  # resumes the round only

    events = read_journal(out / JOURNAL)
    assert [e["r"] for e in events if e["e"] == "round"] == ["r0001"]  # journaled once, started twice
    assert [e["r"] for e in events if e["e"] == "round_done"] == ["r0001"]
    manifest = json.loads((out / "rounds" / "r0001" / "manifest.json").read_text())
    assert manifest["trained"] and manifest["particles"] >= 80
    extracted = _particle_keys(out / "run" / "extract" / "particles.star")
    in_round = _particle_keys(out / "rounds" / "r0001" / "particles.star")
    run_p = out / "run" / "particles"
    labelled = _particle_keys(run_p / "particles_clean.star") + _particle_keys(run_p / "particles_rejected.star")
    assert len(set(extracted)) == len(extracted) and sorted(in_round) == sorted(extracted)  # none lost, none twice
    assert sorted(labelled) == sorted(extracted)

    # later micrographs: extracted and scored by the round's model in their batch, no 2D
    arrive(mics[8:])
    watch(inp, out, WatchOptions(once=True, **{**args, "classify_min": 10_000}))
    later = [json.loads(m.read_text()) for m in sorted((out / BATCHES).glob("b*/manifest.json"))][2:]
    assert later and all(m["particle_model"].endswith("rounds/r0001/model/particle_model.pt") for m in later)
    scored = [b for b in sorted((out / BATCHES).glob("b*")) if (b / "particles" / "particles_clean.star").exists()]
    assert len(scored) == len(later)
    extracted = _particle_keys(out / "run" / "extract" / "particles.star")
    labelled = _particle_keys(run_p / "particles_clean.star") + _particle_keys(run_p / "particles_rejected.star")
    assert sorted(labelled) == sorted(extracted) and len(set(extracted)) == len(extracted)
    summary = json.loads((run_p / "summary.json").read_text())
    assert summary["pending_particles"] == 0 and summary["clean_particles"] > 0
    feedback = json.loads((out / "run" / "feedback" / "feedback.json").read_text())
    assert feedback["grid"]["good_particles_per_micrograph"] > 0  # feedback reads the yield

    # against the truth: the clean stack is cleaner than what was picked, the rejected set dirtier
    picked, n_picked = _truth_precision(out / "run" / "extract" / "particles.star", truth)
    clean, n_clean = _truth_precision(run_p / "particles_clean.star", truth)
    rejected, _ = _truth_precision(run_p / "particles_rejected.star", truth)
    assert n_clean >= 0.4 * n_picked
    assert clean >= picked and clean > rejected and clean >= 0.7, (picked, clean, rejected)
    index = (out / "run" / "index.html").read_text()
    assert all(f'href="{s}/report.html"' in index for s in ("extract", "classify2d", "classassess", "particles"))
