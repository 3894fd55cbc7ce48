"""An append-only journal of JSON lines, flushed and fsynced, that a crashed watcher resumes from.

One event per line, ``{"e": <kind>, "t": <wall clock, s since the epoch>, ...}``. Events are
written ahead of the work they announce (a batch is journaled before it runs), so after a
crash or ``kill -9`` the journal plus the outputs on disk tell exactly what was done. A
line cut short by a crash (no newline, or not valid JSON) can only be the last one: it is
dropped, and cut off the file, when the journal is opened again.

Event kinds written by :mod:`cryoflow.feedback.watch`:

- ``start`` / ``stop``: a watcher began (options, pid) / ended cleanly (why);
- ``seen``: a micrograph file appeared (``f`` path relative to the input folder, ``size``
  bytes, ``mtime`` s);
- ``settled``: its size and mtime stopped changing for the settle time and it opens as a
  valid MRC; ``invalid``: it stopped changing but does not open (``why``), re-checked if
  it changes again;
- ``batch``: settled files assigned to batch ``b`` (each file is assigned once, ever);
- ``step``: step ``step`` of batch ``b`` finished in its temporary folder (``s`` seconds,
  ``cpu`` CPU seconds of the process that ran it); journaled with the batch's outcome;
- ``done``: batch ``b``'s output folder is complete (renamed into place; ``s``, ``cpu``,
  ``worker`` the process that built it, ``intensities`` the mean intensities of its
  micrographs with a CTF fit); ``failed``: it raised a cryoflow error (``why``; retried at
  the next start);
- ``params``: picking diameter (Å) and threshold (noise σ) fixed from batch ``b``;
- ``feedback``: the cumulative run folder and feedback were refreshed up to batch ``upto``
  (every complete batch up to it; ``t`` when feedback was swapped in, ``report`` whether
  its report.html was redrawn, ``cpu`` the refresh's CPU seconds);
- ``changed``: a processed file changed on disk afterwards (not processed again).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cryoflow.errors import CryoflowError


class Journal:
    """The journal file at ``path`` (created if missing); :attr:`events` holds what it held."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.events: list[dict] = []
        good = 0
        if self.path.exists():
            data = self.path.read_bytes()
            for line in data.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break  # cut short by a crash
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    if good + len(line) < len(data):
                        raise CryoflowError(
                            self.path, f"line {len(self.events) + 1} is not JSON: not a watch journal?"
                        ) from None
                    break
                if not isinstance(event, dict) or "e" not in event:
                    raise CryoflowError(self.path, f"line {len(self.events) + 1} is not a journal event")
                self.events.append(event)
                good += len(line)
            if good < len(data):
                with open(self.path, "r+b") as fh:
                    fh.truncate(good)
                    fh.flush()
                    os.fsync(fh.fileno())
        self._fh = open(self.path, "ab")
        _fsync_dir(self.path.parent)

    def append(self, *events: dict) -> None:
        """Write ``events`` (each gets ``t`` if it has none), then flush and fsync before returning."""
        if not events:
            return
        now = time.time()
        lines = []
        for event in events:
            event.setdefault("t", round(now, 4))
            lines.append(json.dumps(event, separators=(",", ":"), sort_keys=True) + "\n")
            self.events.append(event)
        self._fh.write("".join(lines).encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def read_journal(path: str | os.PathLike) -> list[dict]:
    """The events of a journal file (a cut-short last line ignored), without modifying it."""
    events = []
    for line in Path(path).read_bytes().splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return events


def _fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
