"""cryoflow: data-driven cryo-EM preprocessing, from micrographs to a clean particle stack.

Every step is a plain Python function, a ``cryoflow <step>`` command, and a CWL tool.
Steps talk through RELION 3.1+ STAR and MRC files (see ``cryoflow.io``).
"""

from importlib.metadata import PackageNotFoundError, version

from cryoflow.errors import CryoflowError

try:
    __version__ = version("cryoflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["CryoflowError", "__version__"]
