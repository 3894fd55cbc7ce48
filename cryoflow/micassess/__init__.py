"""Bad-micrograph detection (the ``cryoflow micassess`` step): explainable, calibrated, retrainable.

- :mod:`.features`: what the models read (CTF metrics, image statistics, CNN tiles, spectrum)
- :mod:`.model`: the logistic part, the CNN and their calibrated combination; model files
- :mod:`.data`: simulated training sessions (with truth) and cached examples
- :mod:`.train`: training and fine-tuning on user labels
- :mod:`.run`: a CTF-step output -> ``micrographs_good.star`` / ``micrographs_rejected.star``
- :mod:`.report`: the HTML report; :mod:`.bench`: ``cryoflow bench micassess``
"""

from cryoflow.micassess.features import FEATURES, FINE, REASONS
from cryoflow.micassess.model import MicAssessModel
from cryoflow.micassess.run import run_micassess

__all__ = ["FEATURES", "FINE", "REASONS", "MicAssessModel", "run_micassess"]
