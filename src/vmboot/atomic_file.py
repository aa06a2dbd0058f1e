"""Writing a file so that no reader ever sees half of it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name beside ``path`` and rename it over ``path``: a
    reader sees the old file or the whole new one. Raises OSError (the temporary is gone
    then); the directory must exist."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):  # the first error is the one to report
            tmp.unlink()
        raise
