"""A set of micrographs given as files, globs, folders or a STAR file.

Folders are searched recursively for ``*.mrc``. EPU writes the exposures as
``GridSquare_*/Data/FoilHole_*_Data_*.mrc`` beside square and hole overview images; when a
folder holds ``Data/`` sub-folders only the files inside them are taken. Movies written
by EPU as ``*_fractions.mrc`` are skipped. Hidden files (such as cryoflow's own
``.name.part.mrc`` temporaries) are skipped.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryoflow.errors import CryoflowError
from cryoflow.io.star import StarTable, read_table, require_columns, resolve_star_path

STAR_SUFFIX = ".star"
_GLOB_CHARS = set("*?[")


@dataclass
class MicrographSet:
    """Resolved micrograph paths, plus the STAR table when the set came from one.

    ``star`` rows are in the same order as ``paths`` (``None`` when files were given).
    """

    paths: list[Path]
    star: StarTable | None = None

    def __len__(self) -> int:
        return len(self.paths)


def _wanted(path: Path) -> bool:
    name = path.name
    return not name.startswith(".") and not name.lower().endswith("_fractions.mrc")


def _search_folder(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".mrc" and p.is_file() and _wanted(p))
    in_data = [p for p in found if "Data" in p.relative_to(folder).parts[:-1]]
    return in_data or found


def _from_star(path: Path) -> MicrographSet:
    table = read_table(path, kind="micrographs")
    require_columns(table.table, ["rlnMicrographName"], path, "micrographs")
    paths = [resolve_star_path(name, path) for name in table.table["rlnMicrographName"]]
    return MicrographSet(paths=paths, star=table)


def find_micrographs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> MicrographSet:
    """Resolve micrograph inputs to a list of files.

    ``inputs``: one or several of: MRC file, glob pattern (quote it in a shell), folder
    (searched recursively), STAR file with rlnMicrographName (for example RELION's
    ``corrected_micrographs.star``). A STAR file must be the only input.
    Raises :class:`CryoflowError` when an input does not exist, a folder holds no MRC
    file, or the set is empty. Duplicates are removed, order kept.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [str(i) for i in inputs]
    if not inputs:
        raise CryoflowError(None, "no micrographs given")
    stars = [i for i in inputs if i.lower().endswith(STAR_SUFFIX)]
    if stars:
        if len(inputs) > 1:
            raise CryoflowError(stars[0], "a STAR file must be the only micrograph input")
        result = _from_star(Path(stars[0]))
        if not result.paths:
            raise CryoflowError(stars[0], "STAR file lists no micrographs")
        return result
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _search_folder(path)
            if not found:
                raise CryoflowError(path, "folder holds no MRC files (*.mrc)")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        elif _GLOB_CHARS & set(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if _wanted(Path(p)))
            if not found:
                raise CryoflowError(item, "pattern matches no files")
            paths.extend(found)
        else:
            raise CryoflowError(path, "file not found")
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise CryoflowError(inputs[0], "empty micrograph set")
    return MicrographSet(paths=unique)


def find_image(name: str, star_path: Path, images: Path | None, bases: list[Path]) -> Path:
    """The micrograph file of a STAR name: as RELION resolves it, else under ``images``, else
    under a sibling folder of the STAR file's folder or of its parents (a CTF step's STAR
    names micrographs relative to the folder of *its* input, e.g. ``run/simulate/``); the
    folder that worked is remembered in ``bases`` for the next names."""
    path = resolve_star_path(name, star_path)
    if path.exists():
        return path
    parts = Path(name).parts
    if images is not None:  # the longest tail of the name found under images
        for i in range(1 if Path(name).is_absolute() else 0, len(parts)):
            candidate = images.joinpath(*parts[i:])
            if candidate.exists():
                return candidate
        return path
    if Path(name).is_absolute():
        return path
    for base in bases:
        if (base / name).exists():
            return base / name
    for ancestor in list(star_path.resolve().parents)[:3]:
        for sibling in sorted(p for p in ancestor.iterdir() if p.is_dir()):
            if (sibling / name).exists():
                bases.append(sibling)
                return sibling / name
    return path


def rebase_image_names(names, star_path: Path, images: Path | None, folder: Path) -> list[str]:
    """``N@stack`` names (or plain file names) of a STAR file at ``star_path``, rewritten for a
    STAR file that will live in ``folder``: relative to ``folder``'s parent (the run or
    project folder, which :func:`resolve_star_path` searches, as RELION names files relative
    to its project folder) when the file is inside it, else absolute; names whose file is
    not found (see :func:`find_image`) are kept as they are."""
    import os

    bases: list[Path] = []
    root = Path(folder).resolve().parent
    cache: dict[str, str] = {}
    out = []
    for text in map(str, names):
        number, sep, stack = text.rpartition("@")
        if stack not in cache:
            path = find_image(stack, Path(star_path), images, bases)
            if path.exists():
                rel = os.path.relpath(path.resolve(), root)
                cache[stack] = rel if not rel.startswith("..") else str(path.resolve())
            else:
                cache[stack] = stack
        out.append(f"{number}{sep}{cache[stack]}")
    return out
