"""Run a CWL workflow on your job file with cwltool, outputs into one folder.

A thin layer over cwltool, so you need not learn its flags: the tools run without a
container unless ``--container`` is given (the ``cryoflow`` command must then be on PATH,
as it is in an activated .venv), every output of the workflow lands in ``--out``, and
``--out/outputs.json`` records them (cwltool's output object). Finished steps are cached in
``--out/.cwl-cache``, so re-running an interrupted job skips the steps already done
(``--no-cache`` turns this off).

The workflow is ``--workflow``, else the one named like the job file (``NAME.job.yml``
runs ``NAME.cwl`` from beside it or from the repository's workflows/ folder).

Examples::

    cryoflow run workflows/simulate_inspect.job.yml --out runs/first
    cryoflow run my_job.yml --workflow workflows/simulate_inspect.cwl --out runs/mine
    cryoflow run my_job.yml --workflow W.cwl --container    # in the cryoflow image (docker or podman)

For a cluster or the cloud run the same workflow and job file with Toil
(``toil-cwl-runner``); see the README, section "Scale-out".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cryoflow.cwl import workflows_dir
from cryoflow.cwl.runner import CWLTOOL, ENGINES, container_setup, cwltool_env
from cryoflow.errors import CryoflowError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB.yml", help="job file: the workflow's inputs (YAML or JSON)")
    parser.add_argument("--workflow", metavar="W.cwl", help="CWL workflow (default: NAME.cwl for NAME.job.yml)")
    parser.add_argument("--out", default="cwl_run", metavar="DIR", help="folder for the workflow's outputs")
    parser.add_argument(
        "--container",
        nargs="?",
        const="auto",
        choices=["auto", *ENGINES],
        help="run every tool in its container image (engine: auto picks the first of docker, podman, "
        "singularity, apptainer on PATH); default: no container, the cryoflow on PATH runs the tools",
    )
    parser.add_argument("--no-cache", action="store_true", help="do not cache finished steps in DIR/.cwl-cache")
    parser.add_argument("--validate", action="store_true", help="only check the workflow and job file, run nothing")


def find_workflow(job: Path, workflow: str | None) -> Path:
    """The workflow to run: the one given, else ``NAME.cwl`` for a job file ``NAME.job.yml``."""
    if workflow:
        path = Path(workflow)
        if not path.is_file():
            raise CryoflowError(path, "no such workflow file")
        return path
    name = job.name
    for suffix in (".job.yml", ".job.yaml", ".job.json"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            for candidate in (job.parent / f"{stem}.cwl", workflows_dir() / f"{stem}.cwl"):
                if candidate.is_file():
                    return candidate
            raise CryoflowError(job, f"no workflow {stem}.cwl beside it or in {workflows_dir()}; give --workflow")
    raise CryoflowError(job, "which workflow? give --workflow W.cwl (or name the job file NAME.job.yml)")


def check_job(job: Path) -> None:
    """The job file exists and holds a mapping of input names to values."""
    if not job.is_file():
        raise CryoflowError(job, "no such job file")
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="safe").load(job.read_text())
    except (YAMLError, UnicodeDecodeError) as exc:
        raise CryoflowError(job, f"not a YAML or JSON job file ({str(exc).splitlines()[0]})") from None
    if doc is not None and not isinstance(doc, dict):
        raise CryoflowError(job, "a job file maps the workflow's input names to values; this one is a list or scalar")


def cwltool_command(args: argparse.Namespace, workflow: Path, job: Path, out: Path, flags: list[str]) -> list[str]:
    """The cwltool command line for these options (``flags``: the container choice's)."""
    cmd = [*CWLTOOL, *flags]
    if args.validate:
        return [*cmd, "--validate", str(workflow), str(job)]
    cmd += ["--outdir", str(out), "--tmpdir-prefix", str(out / ".tmp") + os.sep]
    if not args.no_cache:
        cmd += ["--cachedir", str(out / ".cwl-cache")]
    return [*cmd, str(workflow), str(job)]


def main(args: argparse.Namespace) -> int:
    job = Path(args.job)
    check_job(job)
    workflow = find_workflow(job, args.workflow)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CryoflowError(out, "--out exists and is not a folder")
    if not args.validate:
        out.mkdir(parents=True, exist_ok=True)
    # the tools call `cryoflow`: the one beside this Python comes first on PATH
    flags, extra_path = container_setup(args.container, out / ".cwl-bin", image=None)
    env = cwltool_env(extra_path)
    cmd = cwltool_command(args, workflow, job, out, flags)
    print(f"[run] {workflow} with {job}" + ("" if args.validate else f" -> {out}/"), file=sys.stderr)
    # cwltool logs to stderr (shown as it goes) and prints the output object on stdout
    try:
        result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    finally:
        if (out / ".tmp").is_dir() and not any((out / ".tmp").iterdir()):
            (out / ".tmp").rmdir()
    if result.returncode != 0:
        what = "is not valid" if args.validate else "failed"
        raise CryoflowError(workflow, f"workflow {what} (cwltool exit status {result.returncode}; its log is above)")
    if args.validate:
        print(f"[run] {workflow} and {job} are valid")
        return 0
    outputs = json.loads(result.stdout or "{}")
    tmp = out / "outputs.json.part"
    tmp.write_text(json.dumps(outputs, indent=2) + "\n")
    tmp.replace(out / "outputs.json")
    for name, value in outputs.items():
        where = value.get("path") if isinstance(value, dict) else value
        print(f"{name}: {where}")
    print(f"[run] outputs recorded in {out / 'outputs.json'}", file=sys.stderr)
    return 0
