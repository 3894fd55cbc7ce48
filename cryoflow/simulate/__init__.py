"""Synthetic cryo-EM datasets with complete ground truth.

Layers, bottom up:

- :mod:`~cryoflow.simulate.structures`: particle species (a Coulomb potential from a PDB
  model, a map, or a procedural protein-like particle) and their projections;
- :mod:`~cryoflow.simulate.micrograph` (with :mod:`physics` and :mod:`defects`): one
  micrograph from a :class:`MicrographSpec` (CTF, ice, dose, detector, defects, junk);
- :mod:`~cryoflow.simulate.grid`: squares, holes and exposures with EPU names, stage
  positions and square-dependent ice quality;
- :mod:`~cryoflow.simulate.dataset`: :func:`simulate_dataset` writes a whole session
  from a preset (:mod:`presets`: ``tiny``, ``demo``, ``realistic``) with its ground truth
  (:mod:`truth`) and a report; :mod:`realism` compares simulated and real micrographs.

Example::

    from cryoflow.simulate import simulate_dataset, read_truth

    data = simulate_dataset("demo_data", preset="demo", seed=0)
    micrographs, particles = read_truth(data.path)   # RELION STAR tables with the truth

Names are imported lazily, so ``import cryoflow.simulate`` does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # datasets
    "simulate_dataset": "cryoflow.simulate.dataset",
    "SimulatedDataset": "cryoflow.simulate.dataset",
    "resolve_preset": "cryoflow.simulate.dataset",
    "make_species": "cryoflow.simulate.dataset",
    "micrograph_spec": "cryoflow.simulate.dataset",
    "plan_dataset": "cryoflow.simulate.dataset",
    # particle stacks (the extract contract) with truth columns
    "simulate_stack": "cryoflow.simulate.stack",
    "SimulatedStack": "cryoflow.simulate.stack",
    "JUNK_KINDS": "cryoflow.simulate.stack",
    # presets
    "PRESETS": "cryoflow.simulate.presets",
    "Preset": "cryoflow.simulate.presets",
    "SpeciesSpec": "cryoflow.simulate.presets",
    "get_preset": "cryoflow.simulate.presets",
    # grid
    "plan_grid": "cryoflow.simulate.grid",
    "render_square": "cryoflow.simulate.grid",
    "REASONS": "cryoflow.simulate.grid",
    "BAD_REASONS": "cryoflow.simulate.grid",
    # truth
    "read_truth": "cryoflow.simulate.truth",
    "MICROGRAPHS_STAR": "cryoflow.simulate.truth",
    "MICROGRAPHS_TRUTH": "cryoflow.simulate.truth",
    "PARTICLES_TRUTH": "cryoflow.simulate.truth",
    # realism
    "write_realism_report": "cryoflow.simulate.realism",
    # lower layers
    "MicrographSpec": "cryoflow.simulate.micrograph",
    "SimulatedMicrograph": "cryoflow.simulate.micrograph",
    "simulate_micrograph": "cryoflow.simulate.micrograph",
    "Species": "cryoflow.simulate.structures",
    "species_from_pdb": "cryoflow.simulate.structures",
    "species_from_map": "cryoflow.simulate.structures",
    "reference_species": "cryoflow.simulate.structures",
    "procedural_species": "cryoflow.simulate.structures",
    "random_rotations": "cryoflow.simulate.structures",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cryoflow.simulate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
