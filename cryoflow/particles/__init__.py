"""Particle-level classifier: good particles from one image, trained on the dataset's own 2D decisions.

:func:`~cryoflow.particles.train.train_particles` (``cryoflow particles train``) learns from
classassess's kept and rejected particles; :func:`~cryoflow.particles.score.score_particles`
(``cryoflow particles score``) writes the clean stack and the yield per micrograph.
"""

from cryoflow.particles.score import score_particles
from cryoflow.particles.train import train_particles

__all__ = ["score_particles", "train_particles"]
