"""Particle picking (pickers, automatic parameter search) and particle extraction.

``cryoflow pick`` finds particles on micrographs and writes per-micrograph coordinate STAR
files plus ``coordinates.star``; ``cryoflow extract`` (:mod:`cryoflow.picking.extract`) cuts
them out into normalized ``.mrcs`` stacks with ``particles.star`` and a cryoSPARC ``.cs``.
"""
