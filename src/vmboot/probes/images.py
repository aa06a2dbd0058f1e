"""The prebuilt probe kernels shipped with vmboot (built by :mod:`vmboot.probes.build`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from vmboot.errors import KernelFormatError

ProbeKind = Literal["bzimage", "elf64", "pvh"]
PROBE_FILES: dict[str, str] = {
    "bzimage": "probe-bzimage.bin",
    "elf64": "probe-elf64.bin",
    "pvh": "probe-pvh.bin",
}


def probe_path(kind: str) -> Path:
    """The path of the bundled probe kernel ``kind`` ("bzimage", "elf64" or "pvh")."""
    name = PROBE_FILES.get(kind)
    if name is None:
        raise KernelFormatError(f"probe kind {kind!r} is unknown; valid kinds: {', '.join(PROBE_FILES)}")
    path = Path(str(resources.files("vmboot.probes") / name))
    if not path.is_file():
        raise KernelFormatError(
            f"{path}: the prebuilt {kind} probe kernel is missing from the installed package; "
            f"reinstall vmboot, or rebuild it with: python -m vmboot.probes.build"
        )
    return path


def probe_image(kind: str) -> bytes:
    """The bytes of the bundled probe kernel ``kind``."""
    return probe_path(kind).read_bytes()
