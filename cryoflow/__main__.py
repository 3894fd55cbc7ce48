"""``python -m cryoflow`` is the ``cryoflow`` command."""

import sys

from cryoflow.cli import main

sys.exit(main())
