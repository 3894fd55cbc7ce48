"""``cryoflow bench micassess``: accuracy on held-out simulated sessions, speed, real micrographs.

Held-out set: simulated sessions with other seeds, other species and other parameter
ranges than the training (non-square 512 x 640 frames, pixel size 1.0-1.9 Å, defocus
0.8-3.0 µm, dose 25-60 e/Å²), each session cycling through every defect, so every reason
is present. Figures: good/bad accuracy (target >= 97%), recall per reason (>= 90%), the
misses. Speed: seconds per micrograph excluding the CTF step (reading the MRC, features,
both models, batch inference; target <= 0.2 s on 2 CPU cores) on the held-out frames and on
4096² frames. Real data: the micrographs in ``../shared/data/micrographs`` (all good) go
through ``cryoflow ctf`` (one run per microscope session) and ``cryoflow micassess``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cryoflow.micassess.data import Ranges, simulate_examples
from cryoflow.micassess.model import MicAssessModel
from cryoflow.micassess.train import figures, predict_examples

HELD_OUT = Ranges(
    shape=(512, 640),
    pixel_size=(1.0, 1.9),
    defocus_um=(0.8, 3.0),
    dose=(25.0, 60.0),
    ice_nm=(20.0, 80.0),
    diameter_A=(90.0, 280.0),
    density=(0.1, 0.4),
    species_seed_offset=5_000_000,
    good_fraction=0.4,
    balanced=True,
)
REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "micrographs"


def _speed(model: MicAssessModel, shape: tuple[int, int], pixel_size: float, n: int, device) -> float:
    """Seconds per micrograph: read MRC, features, batch prediction (no CTF; CTF columns faked)."""
    from cryoflow.io import read_micrograph, write_mrc
    from cryoflow.micassess.features import feature_vector, inputs_from_image, tabular_ctf, tiles
    from cryoflow.micassess.run import predict
    from cryoflow.simulate.micrograph import MicrographSpec, simulate_micrograph
    from cryoflow.simulate.structures import procedural_species

    species = [procedural_species(150.0, pixel_size, seed=3)]
    row = {"rlnCtfFigureOfMerit": 0.2, "rlnCtfMaxResolution": 4.0, "rlnDefocusU": 15000.0, "rlnDefocusV": 14900.0}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n):
            spec = MicrographSpec(shape=shape, pixel_size=pixel_size, n_particles=60, detector="falcon4", seed=i)
            paths.append(Path(tmp) / f"m{i}.mrc")
            write_mrc(paths[-1], simulate_micrograph(spec, species).image, pixel_size)
        warm = inputs_from_image(read_micrograph(paths[0])[0], pixel_size, device)  # first-call costs
        predict(
            model,
            feature_vector(tabular_ctf(row, pixel_size, True), warm["stats"])[None],
            [tiles(warm["cnn"].astype(np.float32))],
            warm["spectrum"][None],
            model.threshold,
            device,
        )
        t0 = time.perf_counter()
        feats, tile_sets, spectra = [], [], []
        for p in paths:
            image, apix = read_micrograph(p, mmap=True)  # as run_micassess reads
            inp = inputs_from_image(image, apix, device)
            feats.append(feature_vector(tabular_ctf(row, apix, True), inp["stats"]))
            tile_sets.append(tiles(inp["cnn"].astype(np.float32)))
            spectra.append(inp["spectrum"])
        predict(model, np.stack(feats), tile_sets, np.stack(spectra), model.threshold, device)
        return (time.perf_counter() - t0) / n


def _real(model_path, device) -> dict:
    from cryoflow.ctf import Optics, run_ctf
    from cryoflow.micassess.run import run_micassess

    if not REAL.is_dir():
        return {"skipped": f"{REAL} is absent"}
    out = {}
    groups: dict[str, list[Path]] = {}
    for f in sorted(REAL.glob("*.mrc")):
        groups.setdefault(f.stem.split("_")[0], []).append(f)
    with tempfile.TemporaryDirectory() as tmp:
        for name, files in groups.items():
            ctf_dir = Path(tmp) / f"ctf_{name}"
            run_ctf([str(f) for f in files], ctf_dir, optics=Optics(300.0, 2.7, 0.1), device=device)
            run_micassess(ctf_dir / "micrographs_ctf.star", Path(tmp) / f"ma_{name}", model=model_path, device=device)
            import starfile

            for kind in ("good", "rejected"):
                table = starfile.read(Path(tmp) / f"ma_{name}" / f"micrographs_{kind}.star", always_dict=True)[
                    "micrographs"
                ]
                for _, r in table.iterrows():
                    out[Path(str(r["rlnMicrographName"])).name] = {
                        "call": r["cryoflowMicassessReason"],
                        "p_good": float(r["cryoflowMicassessPGood"]),
                        "evidence": r["cryoflowMicassessEvidence"],
                    }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="cryoflow bench micassess", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=16, help="held-out simulated sessions of 12 micrographs")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the held-out set (training used 0)")
    parser.add_argument("--model", help="model file (default: the shipped one)")
    parser.add_argument("--cache", help="folder caching the held-out set (default: a temp folder)")
    parser.add_argument("--speed-n", type=int, default=8, help="micrographs per speed figure (0: skip)")
    parser.add_argument("--no-real", action="store_true", help="skip the real micrographs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = MicAssessModel.load(args.model)
    figures_out: dict = {}

    if args.sessions:
        if args.cache:
            examples = simulate_examples(args.sessions, args.seed, HELD_OUT, cache=args.cache)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                examples = simulate_examples(args.sessions, args.seed, HELD_OUT, cache=tmp)
        p, _, _ = predict_examples(model, examples, device)
        truth = [e.reason for e in examples]
        fig = figures(model, p, truth)
        groups = model.group_proba(p)
        from cryoflow.micassess.features import REASONS

        p_good = groups[:, 0]
        bad = groups.copy()
        bad[:, 0] = -1
        called = np.where(p_good >= model.threshold, "good", np.array(REASONS)[bad.argmax(1)])
        from cryoflow.micassess.features import GROUP

        fig["misses"] = [
            f"{e.name}: truth {e.reason}, called {c} (P(good) {pg:.2f})"
            for e, c, pg in zip(examples, called, p_good, strict=True)
            if c != GROUP[e.reason]
        ]
        figures_out["held_out"] = fig
    if args.speed_n:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        figures_out["speed"] = {
            "seconds_per_micrograph_512x640": _speed(model, HELD_OUT.shape, 1.4, args.speed_n, device),
            "seconds_per_micrograph_4096x4096": _speed(model, (4096, 4096), 0.83, max(2, args.speed_n // 4), device),
            "threads": torch.get_num_threads(),
        }
    if not args.no_real:
        figures_out["real"] = _real(args.model, device)

    print(
        "micassess benchmark (targets: good/bad accuracy >= 0.97, recall per reason >= 0.90, <= 0.2 s per micrograph)"
    )
    if "held_out" in figures_out:
        f = figures_out["held_out"]
        print(f"  held-out simulated set: {f['micrographs']} micrographs")
        print(f"    good/bad accuracy                  {f['good_bad_accuracy']:.4f}")
        print(f"    reason accuracy                    {f['reason_accuracy']:.4f}")
        for g, r in f["recall_per_reason"].items():
            print(f"    recall {g:<27} {r:.3f}  (n={f['counts'][g]})")
        for g, r in f["bad_called_bad_per_fine_reason"].items():
            print(f"    called {'good' if g == 'good' else 'bad'} when {g:<20} {r:.3f}")
        for m in f["misses"]:
            print(f"    miss: {m}")
    if "speed" in figures_out:
        print("  speed (excluding CTF):")
        for k, v in figures_out["speed"].items():
            print(f"    {k:<34} {v:.4g}" if isinstance(v, float) else f"    {k:<34} {v}")
    if "real" in figures_out:
        print("  real micrographs (all should be good):")
        for k, v in figures_out["real"].items():
            print(f"    {k:<30} {v}")
    return figures_out
