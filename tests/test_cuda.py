"""The CUDA paths give the CPU's results: each step run with --device cpu and --device cuda on the same data.

Skipped without a CUDA GPU (CI has none): run ``pytest tests/test_cuda.py`` on a GPU machine. It found
the CTF step's device mismatch that the CPU-only tests could not (session 14, on an H100).
"""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import torch

from cryoflow.cli import main as cli_main
from cryoflow.io import read_table

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

DEVICES = ("cpu", "cuda")


def _run(*args: str) -> None:
    assert cli_main([str(a) for a in args]) == 0, args


def _summary(folder) -> dict:
    return json.loads((folder / "summary.json").read_text())


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """8 demo-preset micrographs through ctf, micassess, pick and extract on each device; the later steps of
    each device read the CPU's inputs, so every difference is the step's own."""
    from cryoflow.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("cuda")
    sim = simulate_dataset(root / "sim", preset="demo", seed=0, n_micrographs=8, report=False).path
    for d in DEVICES:
        _run("ctf", "--out", root / f"ctf_{d}", "--device", d, sim / "micrographs.star")
        _run(
            "micassess",
            "--micrographs",
            root / "ctf_cpu/micrographs_ctf.star",
            "--out",
            root / f"mic_{d}",
            "--device",
            d,
        )
        good = root / "mic_cpu/micrographs_good.star"
        _run(
            "pick", "--micrographs", good, "--out", root / f"pick_{d}", "--picker", "blob", "--no-report", "--device", d
        )
        for name, extra in (("plain", []), ("bin2flip", ["--bin", "2", "--phase-flip"]), ("f16", ["--float16"])):
            out = root / f"ext_{name}_{d}"
            _run(
                "extract",
                "--micrographs",
                good,
                "--coordinates",
                root / "pick_cpu",
                "--out",
                out,
                *extra,
                "--device",
                d,
            )
    return root


def test_ctf_on_cuda(chain):
    cpu = read_table(chain / "ctf_cpu/micrographs_ctf.star", "micrographs").table
    cuda = read_table(chain / "ctf_cuda/micrographs_ctf.star", "micrographs").table
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnCtfMaxResolution"):
        np.testing.assert_allclose(cuda[column].to_numpy(float), cpu[column].to_numpy(float), rtol=1e-4)


def test_micassess_on_cuda(chain):
    names = [
        set(read_table(chain / f"mic_{d}/micrographs_good.star", "micrographs").table["rlnMicrographName"])
        for d in DEVICES
    ]
    assert names[0] == names[1] and names[0]


def test_pick_on_cuda(chain):
    cpu, cuda = (_summary(chain / f"pick_{d}") for d in DEVICES)
    assert cuda["diameter_A"] == pytest.approx(cpu["diameter_A"], rel=0.01)
    assert abs(cuda["particles"] - cpu["particles"]) <= max(2, 0.01 * cpu["particles"])


@pytest.mark.parametrize(("name", "tolerance"), [("plain", 1e-4), ("bin2flip", 1e-4), ("f16", 4e-3)])
def test_extract_on_cuda(chain, name, tolerance):
    folders = [chain / f"ext_{name}_{d}" for d in DEVICES]
    tables = [read_table(f / "particles.star", "particles").table for f in folders]
    assert tables[0].equals(tables[1])
    stacks = sorted(p.relative_to(folders[0]) for p in folders[0].rglob("*.mrcs"))
    assert stacks and stacks == sorted(p.relative_to(folders[1]) for p in folders[1].rglob("*.mrcs"))
    for stack in stacks:
        with mrcfile.open(folders[0] / stack) as a, mrcfile.open(folders[1] / stack) as b:
            np.testing.assert_allclose(b.data.astype(np.float32), a.data.astype(np.float32), atol=tolerance)


def test_classify2d_and_classassess_on_cuda(chain):
    particles = chain / "ext_plain_cpu/particles.star"
    for d in DEVICES:
        _run("classify2d", "--particles", particles, "--out", chain / f"c2d_{d}", "--seed", "1", "--device", d)
        _run("classassess", "--classes", chain / "c2d_cpu", "--out", chain / f"ca_{d}", "--device", d)
    cpu, cuda = (_summary(chain / f"c2d_{d}") for d in DEVICES)
    assert cuda["classes"] == cpu["classes"]
    assert cuda["median_resolution_angstrom"] == pytest.approx(cpu["median_resolution_angstrom"], rel=0.1)
    kept = [_summary(chain / f"ca_{d}")["kept_classes"] for d in DEVICES]
    assert kept[0] == kept[1]
