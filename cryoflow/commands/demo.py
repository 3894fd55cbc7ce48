"""Simulate the demo dataset and run the preprocessing workflow (CWL, cwltool) on it.

Simulates a dataset with ground truth into RUN/simulate/, then runs workflows/preprocess.cwl
on its micrographs with cwltool, no container unless ``--container`` names an engine (which
must answer and hold the cryoflow:cpu image, built by docker/build.sh). Every Directory the
workflow outputs (one per step: ctf/, micassess/, ...) is moved to RUN/<its name>; RUN/index.html
then shows the pipeline graph, micrographs and particles at each stage, each step's time and
a link to each step's report. The path of the index is printed last.

A run can be interrupted and re-run: the simulated dataset is kept when it matches --preset and
--seed, and cwltool's cache (RUN/.cwl/cache) holds every finished step, so only unfinished
steps run again. RUN/cwltool.log is cwltool's full log, RUN/outputs.json lists the workflow's
outputs where they now lie, RUN/run.json the timings.

Examples::

    cryoflow demo                              # into ./demo_run
    cryoflow demo --out /data/try1 --seed 7
    cryoflow demo --preset tiny --out quick    # 6 small micrographs, under a minute
    cryoflow demo --container podman           # each step in the cryoflow:cpu image
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import json
import re
import shutil
import sys
import time
from pathlib import Path

from cryoflow.errors import CryoflowError

WORKFLOW = "preprocess"
RESERVED = {"simulate", ".cwl"}  # run sub-folders that workflow outputs must not replace
# workflow inputs filled from the simulated dataset's optics (data_optics of micrographs.star)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STEP_EVENT = re.compile(r"\[step ([^\]]+)\] (start|completed \w+)")
OPTICS_INPUTS = {
    "voltage": "rlnVoltage",
    "cs": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
    "pixel_size": "rlnMicrographPixelSize",
}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_run", metavar="DIR", help="run folder (created; resumed if it exists)")
    parser.add_argument("--preset", default="demo", choices=["tiny", "demo", "realistic"], help="simulator preset")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the simulated dataset")
    parser.add_argument(
        "--container",
        choices=["podman", "docker"],
        help="run each step in the cryoflow:cpu image with this engine (default: no container, "
        "the cryoflow beside this Python runs the steps)",
    )


def say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def simulate(run: Path, preset: str, seed: int) -> dict | None:
    """Simulate into RUN/simulate unless a matching dataset is there; return its timing (None: kept)."""
    from cryoflow.cli import main as cryoflow

    data = run / "simulate"
    summary = data / "summary.json"
    if summary.is_file():
        done = json.loads(summary.read_text(encoding="utf-8"))
        if (done.get("preset"), done.get("seed")) != (preset, seed):
            raise CryoflowError(
                data,
                f"holds the dataset of --preset {done.get('preset')} --seed {done.get('seed')}, "
                f"not --preset {preset} --seed {seed}; give another --out",
            )
        say("simulate: dataset already there, kept")
        return None
    say(f"simulate: --preset {preset} --seed {seed}")
    start = time.perf_counter()
    code = cryoflow(["simulate", "--preset", preset, "--seed", str(seed), "--out", str(data)])
    if code:
        raise CryoflowError(data, f"simulation failed (exit status {code})")
    return {"seconds": round(time.perf_counter() - start, 1), "status": "success", "max_memory_mib": None}


def job_inputs(workflow: Path, dataset: Path) -> dict:
    """The workflow's inputs for the simulated dataset: its micrographs and its optics."""
    import starfile
    from ruamel.yaml import YAML

    declared = YAML(typ="safe").load(workflow.read_text(encoding="utf-8"))["inputs"]
    if isinstance(declared, list):  # the list form of CWL inputs
        declared = {str(entry.get("id", "")).rsplit("#", 1)[-1]: entry for entry in declared}
    job: dict = {"micrographs": {"class": "Directory", "path": str(dataset.resolve())}}
    optics = starfile.read(dataset / "micrographs.star", always_dict=True).get("optics")
    if optics is not None and len(optics):
        for name, column in OPTICS_INPUTS.items():
            if name in declared and column in optics:
                job[name] = float(optics[column].iloc[0])
    return job


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing an older ``dst`` only once ``src`` is in place."""
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        dst.rename(old)
    shutil.move(str(src), str(dst))
    if old.exists():
        shutil.rmtree(old)


def _files_in(listing: list, prefix: Path) -> dict[tuple[str, str], Path]:
    """(basename, checksum) -> path relative to a Directory output, from cwltool's listing."""
    found = {}
    for entry in listing or []:
        rel = prefix / entry["basename"]
        if entry.get("class") == "File":
            found[(entry["basename"], entry.get("checksum", ""))] = rel
        elif entry.get("class") == "Directory":
            found.update(_files_in(entry.get("listing", []), rel))
    return found


def place_outputs(outputs: dict, run: Path) -> dict:
    """Move the workflow's outputs from cwltool's staging folder into the run folder.

    Every Directory (a step's folder) goes to RUN/<its name>; a File that is also inside one of
    those folders (same name and checksum) is not copied again but pointed to there; any other
    File goes to RUN/<its name>. Returns the output object as ``{name: path | [paths] | None}``,
    paths relative to the run folder.
    """
    inside: dict[tuple[str, str], Path] = {}

    def directories(value):
        if isinstance(value, list):
            return [directories(v) for v in value]
        if isinstance(value, dict) and value.get("class") == "Directory":
            src = Path(value["path"])
            if src.name in RESERVED:
                raise CryoflowError(src, f"a workflow output may not be named {src.name} (a folder of the demo run)")
            _replace_dir(src, run / src.name)
            for key, rel in _files_in(value.get("listing", []), Path(src.name)).items():
                inside[key] = rel
            return src.name
        return value

    def files(value):
        if isinstance(value, list):
            return [files(v) for v in value]
        if isinstance(value, dict) and value.get("class") == "File":
            key = (value["basename"], value.get("checksum", ""))
            if key in inside:
                return str(inside[key])
            shutil.move(value["path"], run / value["basename"])
            return value["basename"]
        return value

    placed = {name: directories(value) for name, value in outputs.items()}
    return {name: files(value) for name, value in placed.items()}


def _merge_timings(previous: dict, current: dict) -> dict:
    """This run's step timings; a step served from cache keeps the time it took when it ran."""
    merged = {}
    for name, step in current.items():
        before = previous.get(name) or {}
        if step["status"] == "cached" and before.get("seconds") is not None:
            step = {**step, "seconds": before["seconds"], "max_memory_mib": before.get("max_memory_mib")}
        merged[name] = step
    return merged


def main(args: argparse.Namespace) -> int:
    from cryoflow import cwl
    from cryoflow.cwl.runner import container_setup

    started = time.perf_counter()
    run = Path(args.out)
    if run.exists() and not run.is_dir():
        raise CryoflowError(run, "--out exists and is not a folder")
    workflow = cwl.workflow(WORKFLOW)
    work = run / ".cwl"
    flags, extra_path = container_setup(args.container, work / "bin")  # before any work: fails fast
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CryoflowError(run, "another cryoflow demo is running in this folder") from None
        return _demo(args, run, workflow, flags, extra_path, started)


def _demo(args: argparse.Namespace, run: Path, workflow: Path, flags: list, extra_path: list, started: float) -> int:
    from cryoflow.cwl.runner import cwltool_env, parse_log, run_cwltool
    from cryoflow.io.atomic import write_text
    from cryoflow.report import write_index

    work = run / ".cwl"
    record = run / "run.json"
    previous = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    # steps carried from an earlier run; one that was running then was interrupted
    steps = {
        name: {**step, "status": "interrupted"} if step.get("status") == "running" else step
        for name, step in previous.get("steps", {}).items()
    }

    info = {
        "workflow": workflow.stem,
        "engine": args.container or "no container",
        "preset": args.preset,
        "seed": args.seed,
    }

    def save(status: str) -> None:
        """run.json as it stands (also after a failure or an interruption, for the next run's timings)."""
        info.update(
            status=status,
            finished=_dt.datetime.now().isoformat(timespec="seconds"),
            wall_seconds=round(time.perf_counter() - started, 1),
            steps=steps,
        )
        write_text(record, json.dumps(info, indent=2) + "\n")

    timing = simulate(run, args.preset, args.seed)
    if timing:
        steps["simulate"] = timing
    else:
        steps["simulate"] = {**steps.get("simulate", {"seconds": None, "max_memory_mib": None}), "status": "cached"}
    save("running")

    job = work / "job.json"
    write_text(job, json.dumps(job_inputs(workflow, run / "simulate"), indent=2) + "\n")
    staging = work / "out"
    if staging.exists():
        shutil.rmtree(staging)
    (work / "tmp").mkdir(exist_ok=True)
    cwl_args = [
        *flags,
        "--outdir",
        str(staging),
        "--cachedir",
        str(work / "cache"),
        "--tmpdir-prefix",
        str(work / "tmp") + "/",
        str(workflow),
        str(job),
    ]
    log = run / "cwltool.log"
    say(f"cwltool {workflow.name} ({info['engine']}); log in {log}")

    started_steps: set[str] = set()

    def echo(line: str) -> None:
        event = STEP_EVENT.search(ANSI.sub("", line))
        if event:
            if event.group(2) == "start":  # a scattered step logs a start per job: said once
                if event.group(1) in started_steps:
                    return
                started_steps.add(event.group(1))
            say(f"{event.group(1)}: {event.group(2)}")

    code = None
    try:
        code, stdout, _ = run_cwltool(cwl_args, env=cwltool_env(extra_path), log=log, echo=echo)
    finally:
        # the timings of what ran, also when interrupted (read back from the log)
        timings = parse_log(log.read_text(encoding="utf-8", errors="replace").splitlines()) if log.is_file() else {}
        steps.update(_merge_timings(previous.get("steps", {}), timings))
        save("success" if code == 0 else "interrupted" if code is None else "failed")
    if code != 0:
        failed = [name for name, step in timings.items() if step["status"] in ("failed", "running")]
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr)
        where = f" in step {failed[0]}" if failed else ""
        raise CryoflowError(workflow, f"workflow failed{where} (cwltool exit status {code}; log: {log})")
    outputs = place_outputs(json.loads(stdout or "{}"), run)
    shutil.rmtree(staging, ignore_errors=True)
    write_text(run / "outputs.json", json.dumps(outputs, indent=2) + "\n")
    save("success")
    index = write_index(run, title="cryoflow demo run")
    say(f"done in {info['wall_seconds']:.0f} s; open the index report in a browser:")
    print(index)
    return 0
