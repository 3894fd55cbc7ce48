"""Where the CWL tools, workflows and workflow pictures are, and running them with cwltool.

The repository's top-level ``tools/``, ``workflows/`` and ``docs/graphs/`` install inside this
package as ``cryoflow/cwl/tools``, ``cryoflow/cwl/workflows`` and ``cryoflow/cwl/graphs``
(pyproject.toml maps them), so the workflows' relative ``run: ../tools/x.cwl`` resolve in an
installed cryoflow as they do in a source checkout. :func:`tools_dir`, :func:`workflows_dir`
and :func:`graph` find whichever layout is present.

:mod:`cryoflow.cwl.runner` runs cwltool (container choice, step timings from its log);
``cryoflow run`` and ``cryoflow demo`` are built on it.
"""

from __future__ import annotations

from pathlib import Path

from cryoflow.errors import CryoflowError

_HERE = Path(__file__).resolve().parent
_SOURCE = _HERE.parents[1]  # the repository root, in a source checkout or an editable install


def _locate(installed: str, source: str) -> Path:
    for candidate in (_HERE / installed, _SOURCE / source):
        if candidate.is_dir():
            return candidate
    raise CryoflowError(
        _HERE / installed, "cryoflow's CWL files are missing from this installation (reinstall cryoflow)"
    )


def tools_dir() -> Path:
    """The folder of CWL CommandLineTools (``tools/``)."""
    return _locate("tools", "tools")


def workflows_dir() -> Path:
    """The folder of CWL workflows and their example job files (``workflows/``)."""
    return _locate("workflows", "workflows")


def workflow(name: str) -> Path:
    """The path of workflow ``name`` (``preprocess`` or ``preprocess.cwl``)."""
    path = workflows_dir() / (name if name.endswith(".cwl") else f"{name}.cwl")
    if not path.is_file():
        raise CryoflowError(path, "no such workflow")
    return path


def graph(name: str) -> Path | None:
    """The rendered picture (PNG) of workflow ``name``, or None when it has none."""
    try:
        path = _locate("graphs", "docs/graphs") / f"{Path(name).stem}.png"
    except CryoflowError:
        return None
    return path if path.is_file() else None


__all__ = ["graph", "tools_dir", "workflow", "workflows_dir"]
