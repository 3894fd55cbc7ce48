"""CTF estimation and per-micrograph quality metrics (the ``cryoflow ctf`` step).

- :mod:`.spectrum`: block-averaged power spectra and background subtraction
- :mod:`.fit`: defocus/astigmatism search and refinement
- :mod:`.metrics`: fit resolution, ice ring, envelope, anisotropy, dark areas, tilt
- :mod:`.estimate`: one micrograph, end to end
- :mod:`.run`: a micrograph set → ``micrographs_ctf.star``, diagnostics, report
"""

from cryoflow.ctf.estimate import METRIC_DOCS, CtfResult, Settings, estimate
from cryoflow.ctf.fit import CtfFit, Optics
from cryoflow.ctf.run import run_ctf

__all__ = ["METRIC_DOCS", "CtfFit", "CtfResult", "Optics", "Settings", "estimate", "run_ctf"]
