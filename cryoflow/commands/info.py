"""Show what micrographs, particle stacks, STAR and cryoSPARC .cs files hold.

For an MRC file: shape, mode, pixel size (Å), value range, number of images.
For a STAR file: table kind, number of micrographs or particles, optics groups, columns.
For a folder or glob: the micrograph set it resolves to; with --out, a small HTML
report (thumbnails, sizes, pixel sizes) is written there.

Examples::

    cryoflow info micrograph.mrc
    cryoflow info particles.star run_it025_classes.mrcs
    cryoflow info Images-Disc1/ --out info_report/
    cryoflow info 'Movies/*.mrc' --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cryoflow.errors import CryoflowError

STACK_CHUNK = 256  # images per read when computing statistics of a stack
REQUIRED = {"micrographs": "rlnMicrographName", "particles": "rlnImageName"}  # what RELION needs per table


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="MRC/MRCS, STAR or .cs files, folders or globs")
    parser.add_argument("--pixel-size", type=float, metavar="Å", help="override the header pixel size (Å/pixel)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    parser.add_argument("--out", metavar="DIR", help="write report.html + summary.json for the micrographs into DIR")


def describe_mrc(path: Path, pixel_size: float | None = None) -> dict:
    """Header facts and value statistics of an MRC file (stacks read in chunks, memory-mapped)."""
    from cryoflow.io import open_stack, read_info
    from cryoflow.io.mrc import resolve_pixel_size

    info = read_info(path)
    apix = resolve_pixel_size(path, info.pixel_size, pixel_size)  # every step needs it: missing is an error
    lo, hi, total, total_sq, count = np.inf, -np.inf, 0.0, 0.0, 0
    with open_stack(path, pixel_size=apix) as stack:
        for start in range(0, len(stack), STACK_CHUNK):
            block = stack[start : start + STACK_CHUNK].astype(np.float64)
            lo, hi = min(lo, block.min()), max(hi, block.max())
            total, total_sq, count = total + block.sum(), total_sq + (block**2).sum(), count + block.size
    mean = total / count
    return {
        "file": str(path),
        "type": "stack" if info.is_stack or info.n_images > 1 else "micrograph",
        "shape": list(info.shape),
        "images": info.n_images,
        "mode": f"{info.mode} ({info.dtype})",
        "pixel_size_A": apix,
        "min": float(lo),
        "max": float(hi),
        "mean": float(mean),
        "std": float(np.sqrt(max(total_sq / count - mean**2, 0.0))),
    }


def describe_star(path: Path) -> dict:
    """Kind of table, counts and columns of a RELION STAR file."""
    from cryoflow.io import read_blocks, read_table, require_columns

    blocks = read_blocks(path)
    out = {"file": str(path), "type": "star", "blocks": {f"data_{k}": len(v) for k, v in blocks.items()}}
    if any(k in blocks for k in ("micrographs", "particles")) or len(blocks) == 1:
        try:
            table = read_table(path)
        except CryoflowError:
            return out
        require_columns(table.table, [REQUIRED[table.kind]], path, table.kind)
        out.update(
            {
                "kind": table.kind,
                table.kind: len(table.table),
                "optics_groups": len(table.optics),
                "relion_30_upgraded": table.upgraded,
                "pixel_size_A": sorted({float(x) for x in np.atleast_1d(table.pixel_size())})
                if len(table.table)
                else [],
                "columns": list(table.table.columns),
            }
        )
        if "rlnMicrographName" in table.table and table.kind == "particles":
            out["micrographs"] = int(table.table["rlnMicrographName"].nunique())
    return out


def describe_cs(path: Path) -> dict:
    """Number of rows and fields of a cryoSPARC ``.cs`` file (a numpy structured array)."""
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CryoflowError(path, f"not a readable cryoSPARC .cs file ({exc})") from None
    if data.dtype.names is None:
        raise CryoflowError(path, "not a cryoSPARC .cs file (no named fields)")
    return {"file": str(path), "type": "cryosparc", "rows": int(len(data)), "fields": list(data.dtype.names)}


def describe(path: Path, pixel_size: float | None = None) -> dict:
    suffix = path.suffix.lower()
    if suffix == ".star":
        return describe_star(path)
    if suffix == ".cs":
        return describe_cs(path)
    return describe_mrc(path, pixel_size)


def _text(entry: dict) -> str:
    lines = [entry["file"]]
    for key, value in entry.items():
        if key == "file":
            continue
        if key == "columns" or key == "fields":
            value = ", ".join(value)
        elif isinstance(value, float):
            value = f"{value:.6g}"
        lines.append(f"  {key:<20} {value}")
    return "\n".join(lines)


def _expand(files: list[str]) -> list[Path]:
    """STAR/.cs/MRC files as given; folders and globs through the micrograph-set resolver."""
    from cryoflow.io import find_micrographs

    paths: list[Path] = []
    for item in files:
        path = Path(item)
        if path.suffix.lower() in (".star", ".cs") or (path.is_file()):
            if not path.exists():
                raise CryoflowError(path, "file not found")
            paths.append(path)
        else:
            paths.extend(find_micrographs([item]).paths)
    return paths


def write_report(entries: list[dict], out: Path) -> Path:
    """A small report on the micrographs described: sizes, pixel sizes, thumbnails."""
    import matplotlib

    matplotlib.use("Agg")
    from cryoflow.io import read_micrograph
    from cryoflow.report import Report

    mics = [e for e in entries if e.get("type") == "micrograph"]
    report = Report("Micrograph inventory", step="info", intro="What the given files hold, before any processing.")
    section = report.section("Overview", "Counts and sizes of the micrographs found.")
    section.metric("Micrographs", len(mics), "", "Number of single 2D images found.")
    if mics:
        sizes = sorted({f"{e['shape'][-1]}x{e['shape'][-2]}" for e in mics})
        apix = sorted({e["pixel_size_A"] for e in mics})
        section.metric("Sizes (W x H, px)", ", ".join(sizes), "", "Detector frame size after motion correction.")
        section.metric(
            "Pixel sizes",
            ", ".join(f"{a:.4g}" for a in apix),
            "Å",
            "Size of one pixel at the specimen; it sets the best resolution reachable (Nyquist = 2 x pixel size).",
        )
    section.table([{k: v for k, v in e.items() if k not in ("columns", "fields")} for e in entries], caption="Files")
    thumbs, captions = [], []
    for e in mics[:24]:
        image, _ = read_micrograph(e["file"], pixel_size=e["pixel_size_A"])
        step = max(1, max(image.shape) // 256)
        thumbs.append(image[::step, ::step])
        captions.append(Path(e["file"]).name)
    if thumbs:
        report.section(
            "Thumbnails", "Downsampled views, contrast-stretched between the 0.5% and 99.5% percentiles."
        ).gallery(thumbs, captions, name="thumb")
    summary = {"files": len(entries), "micrographs": len(mics)}
    return report.write(out, summary=summary)


def main(args: argparse.Namespace) -> int:
    entries = []
    for path in _expand(args.files):
        entries.append(describe(path, args.pixel_size))
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        print("\n".join(_text(e) for e in entries))
    if args.out:
        write_report(entries, Path(args.out))
    return 0
