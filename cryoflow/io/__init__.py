"""File I/O in RELION conventions: MRC micrographs and stacks, STAR tables, micrograph sets.

Everything that writes does so atomically (temporary name, then rename), see
:mod:`cryoflow.io.atomic`. Every read failure is a :class:`cryoflow.CryoflowError` naming
the file.
"""

from cryoflow.io.atomic import atomic_dir, atomic_path, write_bytes, write_text
from cryoflow.io.micrographs import MicrographSet, find_image, find_micrographs, rebase_image_names
from cryoflow.io.mrc import (
    MRCInfo,
    ParticleStack,
    mrc_writer,
    open_stack,
    prefetch,
    read_info,
    read_micrograph,
    write_mrc,
)
from cryoflow.io.star import (
    StarTable,
    make_optics,
    read_blocks,
    read_table,
    require_columns,
    resolve_star_path,
    write_blocks,
    write_table,
)

__all__ = [
    "MRCInfo",
    "MicrographSet",
    "ParticleStack",
    "StarTable",
    "atomic_dir",
    "atomic_path",
    "find_image",
    "find_micrographs",
    "make_optics",
    "mrc_writer",
    "open_stack",
    "prefetch",
    "read_blocks",
    "read_info",
    "read_micrograph",
    "read_table",
    "rebase_image_names",
    "require_columns",
    "resolve_star_path",
    "write_blocks",
    "write_bytes",
    "write_mrc",
    "write_table",
    "write_text",
]
