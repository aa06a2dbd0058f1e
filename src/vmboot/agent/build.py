"""Build the guest agent from ``vmboot-agent.c``: ``python -m vmboot.agent.build``.

The agent is a static x86_64 program with no libc: it is compiled against the kernel's
``tools/include/nolibc``, taken from Debian's ``linux-source-6.1`` package (its tarball at
``/usr/src/linux-source-6.1.tar.xz``), or from ``--nolibc DIR`` / ``$VMBOOT_NOLIBC``. The
flags leave no build ID, path or timestamp in the binary, so the same gcc produces the
committed ``vmboot-agent`` byte for byte.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from vmboot.agent import BINARY_NAME
from vmboot.errors import FetchError

SOURCE_NAME = "vmboot-agent.c"
LINUX_SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
NOLIBC_IN_TARBALL = "linux-source-6.1/tools/include/nolibc/"
NOLIBC_ENV = "VMBOOT_NOLIBC"
CFLAGS = ("-Os", "-static", "-nostdlib", "-fno-asynchronous-unwind-tables", "-fno-ident",
          "-fno-stack-protector", "-Wl,--build-id=none", "-s", "-Wall", "-Wno-unused-function")
PACKAGE_HINT = ("install Debian's linux-source-6.1 (apt-get install linux-source-6.1), or point "
                f"${NOLIBC_ENV} or --nolibc at a kernel tree's tools/include/nolibc")


def _extract_nolibc(into: Path) -> Path:
    if not LINUX_SOURCE_TARBALL.is_file():
        raise FetchError(f"nolibc: {LINUX_SOURCE_TARBALL} is missing: {PACKAGE_HINT}")
    # GNU tar with xz is several times faster than tarfile at skipping the other 1 GB.
    cmd = ["tar", "-C", str(into), "-xJf", str(LINUX_SOURCE_TARBALL), "--wildcards",
           NOLIBC_IN_TARBALL + "*"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    headers = into / NOLIBC_IN_TARBALL
    if proc.returncode != 0 or not (headers / "nolibc.h").is_file():
        raise FetchError(f"nolibc: extracting {NOLIBC_IN_TARBALL} from {LINUX_SOURCE_TARBALL} failed: "
                         f"{proc.stderr.strip() or 'no nolibc.h in it'}")
    return headers


def find_nolibc(explicit: Path | None, scratch: Path) -> Path:
    for candidate in (explicit, Path(os.environ[NOLIBC_ENV]) if os.environ.get(NOLIBC_ENV) else None):
        if candidate is not None:
            if not (candidate / "nolibc.h").is_file():
                raise FetchError(f"nolibc: {candidate} has no nolibc.h")
            return candidate
    return _extract_nolibc(scratch)


def compile_static(source: Path, output: Path, nolibc: Path | None = None,
                   extra_flags: Sequence[str] = ()) -> Path:
    """Compile one C file into a static x86_64 program against nolibc; returns ``output``.

    The compile runs in a scratch directory under relative names only, so nothing of this
    machine's paths can reach the binary.
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FetchError(f"building {source.name} needs gcc (Debian package gcc)")
    with tempfile.TemporaryDirectory(prefix="vmboot-nolibc-build-") as tmp:
        work = Path(tmp)
        headers = find_nolibc(nolibc, work)
        (work / source.name).write_bytes(source.read_bytes())
        include = os.path.relpath(headers / "nolibc.h", work)
        cmd = [gcc, *CFLAGS, *extra_flags, "-include", include, "-o", output.name, source.name, "-lgcc"]
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise FetchError(f"building {source.name} failed ({' '.join(cmd)}):\n{proc.stderr}")
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / output.name, output)
        output.chmod(0o755)
        return output


def build(out_dir: Path, nolibc: Path | None = None) -> Path:
    """Compile the agent into ``out_dir``; returns the binary's path."""
    with tempfile.TemporaryDirectory(prefix="vmboot-agent-src-") as tmp:
        source = Path(tmp) / SOURCE_NAME
        source.write_bytes(resources.files(__package__).joinpath(SOURCE_NAME).read_bytes())
        return compile_static(source, out_dir / BINARY_NAME, nolibc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmboot.agent.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(str(resources.files(__package__))),
                        help="where to write vmboot-agent (default: next to this module)")
    parser.add_argument("--nolibc", type=Path, help="a kernel tree's tools/include/nolibc")
    args = parser.parse_args(argv)
    print(build(args.out, args.nolibc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
