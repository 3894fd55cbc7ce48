"""The one exception type for problems a user can fix (bad input, bad parameters).

The command line turns it into ``cryoflow: error: <file>: <what is wrong>`` and exit
status 2. Programming errors stay ordinary exceptions with a traceback.
"""

from __future__ import annotations

import os


class CryoflowError(Exception):
    """A user-facing problem with an input file or a parameter.

    Parameters
    ----------
    path:
        The file or folder concerned, or ``None`` when the problem is a parameter.
    message:
        What is wrong, in one line, without the file name.
    """

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else os.fspath(path)
        self.message = " ".join(str(message).split())  # always one line
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message
