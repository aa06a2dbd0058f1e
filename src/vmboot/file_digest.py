"""SHA-256 of a file, read once per version of the file.

A file's version is what ``stat`` says of it: device, inode, size, modification and
change times (nanoseconds). The change time cannot be set back by anyone, so a rewritten
file is a new version even when its size and modification time are kept. Within a process
the digest of a version is remembered in memory; with ``memo_dir`` it is also kept on disk,
one small file per version, so the next process need not read the file either (as git's
index trusts a file's stat data).

A version changed less than :data:`RACY_SECONDS` ago is hashed but not written to disk: a
write within the timestamps' granularity after the hash could leave the same stat data
with other bytes (git's "racy clean" case).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

from vmboot.atomic_file import write_atomically

RACY_SECONDS = 2.0
"""A version younger than this is not remembered on disk (see the module docstring)."""
READ_BLOCK = 1 << 20
DIGEST_HEX_LEN = 64

FileVersion = tuple[str, int, int, int, int, int]
"""(real path, device, inode, size, mtime_ns, ctime_ns)."""

_remembered: dict[FileVersion, str] = {}


def file_version(path: str | os.PathLike[str]) -> tuple[FileVersion, os.stat_result]:
    """The version of the file at ``path`` (its real path: links resolved), and its stat.
    Raises OSError when it cannot be stat'ed."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), st


def file_sha256(path: str | os.PathLike[str], memo_dir: Path | None = None) -> str:
    """The SHA-256 (hex) of the file at ``path``, read only when this version of it was not
    hashed before in this process (or, with ``memo_dir``, by any process that kept it
    there). Raises OSError when the file cannot be read."""
    version, st = file_version(path)
    digest = _remembered.get(version)
    if digest is not None:
        return digest
    entry = None
    if memo_dir is not None:
        entry = memo_dir / hashlib.sha256(repr(version).encode()).hexdigest()
        with contextlib.suppress(OSError, UnicodeDecodeError):
            kept = entry.read_text(encoding="ascii").strip()
            if len(kept) == DIGEST_HEX_LEN and all(c in "0123456789abcdef" for c in kept):
                _remembered[version] = kept
                return kept
    h = hashlib.sha256()
    with open(version[0], "rb") as f:
        while block := f.read(READ_BLOCK):
            h.update(block)
    digest = h.hexdigest()
    _remembered[version] = digest
    newest_change = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
    if entry is not None and time.time() - newest_change > RACY_SECONDS:
        _keep(entry, digest)
    return digest


def _keep(entry: Path, digest: str) -> None:
    """Write ``digest`` to ``entry`` whole or not at all (a full disk just means no memo)."""
    with contextlib.suppress(OSError):
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(entry, f"{digest}\n".encode("ascii"))


def forget() -> None:
    """Drop the digests remembered in this process (tests)."""
    _remembered.clear()
