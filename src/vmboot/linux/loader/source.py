"""Where a kernel file comes from: a path, a binary file object or bytes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from vmboot.errors import KernelFormatError

KernelSource = str | os.PathLike[str] | IO[bytes] | bytes | bytearray | memoryview
"""What :func:`vmboot.linux.load_kernel` and the loaders accept."""
KERNEL_VERSION_MAX = 256
"""Longest kernel version string read from an image."""


def read_source(source: KernelSource) -> tuple[bytes, str]:
    """The bytes of a kernel given as a path, a binary file object or bytes, and a name for errors."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "<bytes>"
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            return path.read_bytes(), str(path)
        except OSError as e:
            raise KernelFormatError(f"{path}: cannot read the kernel: {e.strerror or e}") from e
    name = str(getattr(source, "name", "<file object>"))
    data = source.read()
    if not isinstance(data, bytes):
        raise KernelFormatError(f"{name}: the file object must be opened in binary mode ('rb')")
    return data, name
