"""Build a guest test tool (C, no libc) at test time: static x86_64, against the kernel's
``tools/include/nolibc`` taken from ``$VMBOOT_NOLIBC`` or Debian's linux-source-6.1
tarball. A missing compiler or nolibc skips the test that needs the tool, naming why."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GUEST_SOURCES = Path(__file__).parent / "guest"
LINUX_SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
NOLIBC_IN_TARBALL = "linux-source-6.1/tools/include/nolibc/"
NOLIBC_ENV = "VMBOOT_NOLIBC"
CFLAGS = ("-Os", "-static", "-nostdlib", "-fno-asynchronous-unwind-tables",
          "-fno-stack-protector", "-Wall", "-Werror", "-Wno-unused-function")


def _nolibc(scratch: Path) -> Path:
    explicit = os.environ.get(NOLIBC_ENV)
    if explicit:
        return Path(explicit)
    if not LINUX_SOURCE_TARBALL.is_file():
        pytest.skip(f"no nolibc: set ${NOLIBC_ENV} or install linux-source-6.1")
    subprocess.run(["tar", "-C", str(scratch), "-xJf", str(LINUX_SOURCE_TARBALL), "--wildcards",
                    NOLIBC_IN_TARBALL + "*"], check=True, capture_output=True)
    return scratch / NOLIBC_IN_TARBALL


def build_tool(source_name: str, out_dir: Path) -> Path:
    """Compile ``tests/guest/<source_name>`` into ``out_dir``; the binary's path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("building the guest tool needs gcc")
    headers = _nolibc(out_dir)
    binary = out_dir / Path(source_name).stem
    subprocess.run([gcc, *CFLAGS, "-include", str(headers / "nolibc.h"), "-o", str(binary),
                    str(GUEST_SOURCES / source_name), "-lgcc"], check=True, capture_output=True)
    return binary
