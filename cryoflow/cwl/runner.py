"""Running a CWL workflow with cwltool: container choice, environment, log and step timings.

cwltool runs in this Python (``CWLTOOL``), not as ``python -m cwltool``, whose ``__main__``
drops the exit status (a failed run would end with status 0). The tools call ``cryoflow``, so
the folder of this Python's executables comes first on PATH.

Containers: ``--container podman|docker|...`` makes cwltool run each tool in the image its
DockerRequirement hint names (``cryoflow:cpu``, built by ``docker/build.sh``); the engine must
answer (``podman info``) and hold the image, else a one-line error. cwltool gives podman
``--userns=keep-id``, which rootful podman refuses: as root, a two-line ``podman`` wrapper that
drops that flag is written into the run's folder and put first on PATH (:func:`podman_shim`).

Step timings come from cwltool's own log (``--timestamps``): ``[step X] start`` to
``[step X] completed success``, ``Max memory used`` and ``Using cached output``
(:func:`parse_log`), so any step added to a workflow is timed with no change here.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from cryoflow.errors import CryoflowError

CWLTOOL = [sys.executable, "-c", "import sys; from cwltool.main import run; sys.exit(run(sys.argv[1:]))"]
ENGINES = ("docker", "podman", "singularity", "apptainer")
IMAGE = "cryoflow:cpu"  # what tools/*.cwl name in their DockerRequirement hint

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]\s+\w+\s+\[(step|job) ([^\]]+)\] (.*)$")


def cwltool_env(extra_path: Iterable[Path] = ()) -> dict[str, str]:
    """The environment for cwltool: ``extra_path`` then this Python's bin folder first on PATH."""
    folders = [str(p) for p in extra_path] + [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    return dict(os.environ, PATH=os.pathsep.join(folders), CRYOFLOW_QUIET="1")


def engine_works(engine: str) -> bool:
    """Whether container engine ``engine`` is on PATH and answers (``ENGINE info``)."""
    exe = shutil.which(engine)
    if exe is None:
        return False
    if engine in ("singularity", "apptainer"):
        return True
    try:
        return subprocess.run([exe, "info"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def image_present(engine: str, image: str) -> bool:
    """Whether ``image`` is in the local store of ``engine`` (docker or podman)."""
    try:
        result = subprocess.run([engine, "image", "inspect", image], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def podman_shim(folder: Path) -> Path:
    """Write ``folder/podman``: the real podman without ``--userns=keep-id`` (refused when rootful)."""
    real = shutil.which("podman")
    if real is None:
        raise CryoflowError(None, "podman not found on PATH")
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "podman"
    shim.write_text(
        "#!/bin/sh\n# written by cryoflow: rootful podman refuses cwltool's --userns=keep-id, so drop it\n"
        'for a; do shift; [ "$a" = --userns=keep-id ] || set -- "$@" "$a"; done\n'
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    return shim


def container_setup(choice: str | None, shim_dir: Path, image: str | None = IMAGE) -> tuple[list[str], list[Path]]:
    """cwltool's flags and the PATH folders to prepend for a container choice.

    ``choice``: None (no container: the cryoflow on PATH runs the tools), ``auto`` (the first
    working engine of ENGINES) or an engine name. ``image``: checked to be present for docker
    and podman (None: not checked). Raises CryoflowError with what to do when unavailable.
    """
    if choice is None:
        return ["--no-container"], []
    engines = ENGINES if choice == "auto" else (choice,)
    for engine in engines:
        if not engine_works(engine):
            continue
        if image and engine in ("docker", "podman") and not image_present(engine, image):
            raise CryoflowError(None, f"--container {engine}: no image {image} (build it with docker/build.sh)")
        if engine == "docker":
            return [], []
        if engine == "podman":
            shims = [podman_shim(shim_dir.resolve()).parent] if os.geteuid() == 0 else []
            return ["--podman"], shims
        return ["--singularity"], []
    raise CryoflowError(None, f"--container: no container engine found that answers (looked for {', '.join(engines)})")


def parse_log(lines: Iterable[str]) -> dict[str, dict]:
    """Per-step timings from cwltool ``--timestamps`` log lines.

    Returns ``{step: {"seconds", "status", "max_memory_mib", "started"}}`` in the order the
    steps started; ``status`` is ``success``, ``cached``, ``failed`` or ``running`` (no end
    seen). A cached step's ``seconds`` is the time cwltool took to fetch it (about 0).
    """
    steps: dict[str, dict] = {}
    for raw in lines:
        match = _LINE.match(_ANSI.sub("", raw).strip())
        if not match:
            continue
        stamp, kind, name, message = match.groups()
        when = _dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
        name = name.strip()
        if kind == "job":
            # a scattered job is named STEP_N; the step it belongs to is the longest known prefix
            owner = next(
                (s for s in sorted(steps, key=len, reverse=True) if name == s or name.startswith(s + "_")), None
            )
            if owner is None:
                continue
            if message.startswith("Using cached output"):
                steps[owner]["status"] = "cached"
            elif message.startswith("Max memory used:"):
                mem = re.search(r"([\d.]+)\s*MiB", message)
                if mem:
                    steps[owner]["max_memory_mib"] = max(steps[owner].get("max_memory_mib") or 0, float(mem.group(1)))
            continue
        if message == "start":
            if steps.get(name, {}).get("status") == "running":
                continue  # a scattered step logs a start per job; its time runs from the first
            steps[name] = {"started": when, "seconds": None, "status": "running", "max_memory_mib": None}
        elif message.startswith("completed") and name in steps:
            step = steps[name]
            step["seconds"] = (when - step["started"]).total_seconds()
            if "success" not in message:
                step["status"] = "failed"
            elif step["status"] != "cached":
                step["status"] = "success"
    for step in steps.values():
        step["started"] = step["started"].isoformat()
    return steps


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_cwltool(
    args: list[str],
    *,
    env: dict[str, str],
    log: Path,
    echo: Callable[[str], None] | None = None,
) -> tuple[int, str, dict[str, dict]]:
    """Run ``cwltool ARGS`` (``--timestamps`` added); return (exit status, stdout, step timings).

    cwltool's log (stderr) goes to ``log`` in full; each line is also passed to ``echo`` when
    given. stdout is cwltool's output object (JSON).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(
            [*CWLTOOL, "--timestamps", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()
        # SIGTERM or SIGHUP (a closed terminal) stop cwltool too, as Ctrl-C does, instead of
        # leaving it running on its own
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                handlers[sig] = signal.signal(sig, _interrupt)
        try:
            for line in proc.stderr:
                fh.write(line)
                fh.flush()
                lines.append(line)
                if echo:
                    echo(line.rstrip("\n"))
            code = proc.wait()
        except BaseException:
            proc.terminate()  # cwltool stops its running tools on SIGTERM
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        reader.join()
    return code, "".join(out), parse_log(lines)
