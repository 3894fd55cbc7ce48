"""Jinja2 environment over the packaged templates (``reports/`` installs as ``cryoflow.templates``)."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import jinja2


@functools.cache
def environment() -> jinja2.Environment:
    """The template environment; autoescaping is always on (HTML and everything else)."""
    loader = jinja2.FunctionLoader(_load)
    return jinja2.Environment(
        loader=loader, autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )


def _load(name: str) -> str:
    try:
        folder = resources.files("cryoflow.templates")
    except ModuleNotFoundError:  # a source tree that is not installed: reports/ beside the package
        folder = Path(__file__).resolve().parents[2] / "reports"
    return folder.joinpath(name).read_text(encoding="utf-8")


def stylesheet() -> str:
    """The CSS inlined into every page (no external file to lose)."""
    return _load("style.css")


def render(template: str, **context) -> str:
    """Render a packaged template with ``context`` (plus the inlined stylesheet as ``css``)."""
    return environment().get_template(template).render(css=stylesheet(), **context)
