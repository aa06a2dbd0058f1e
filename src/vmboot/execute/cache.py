"""Where vmboot keeps what it downloads and the guests it saves, and how big that may grow.

:func:`cache_dir` is ``$VMBOOT_CACHE`` if set, else ``$XDG_CACHE_HOME/vmboot``, else
``~/.cache/vmboot``. Layout::

    <cache>/busybox/busybox                     static x86-64 busybox (vmboot fetch busybox)
    <cache>/busybox/SOURCE                      the .deb it came from
    <cache>/debian-kernels/<ABI>/boot/vmlinuz-<ABI>-cloud-amd64   (vmboot fetch kernel;
                                                same layout as scripts/fetch-debian-kernel.sh)
    <cache>/kernel-drivers/<key>.json           the exec channels' drivers a kernel file has
                                                (vmboot.execute.channel)
    <cache>/images/agent-<key>.cpio             the warm guest's agent image (its inputs' key)
    <cache>/file-digests/<version>              SHA-256 of a file version (vmboot.file_digest)
    <cache>/snapshots/exec-<key>.snap           saved guests: vmboot exec --warm,
    <cache>/snapshots/pytest-<key>.snap         the pytest plugin (one per guest configuration)
    <cache>/snapshots/<name>.lock               held (shared) while a process uses the snapshot
    <cache>/snapshots/<name>.make.lock          held (exclusive) while one process makes it

Nothing here is created until something is stored.

The cache is bounded: whatever stores an entry (warm exec and the pytest plugin their
snapshots, warm exec its image, ``vmboot fetch`` its downloads) then calls
:func:`keep_within_limit`, whose :func:`enforce_limit` removes the least recently used
entries (an entry is one snapshot with its lock, one image, one cached kernel, the busybox;
a directory of other files, such as the remembered digests, is one) until the cache fits in
:func:`cache_limit` bytes: ``$VMBOOT_CACHE_MAX`` (a size such as ``2G``, or ``unlimited``),
else :data:`DEFAULT_CACHE_MAX`. An entry counts as used when a file of it was last modified:
users of a snapshot :func:`touch` it. Sizes are what the files take on disk (snapshots are
sparse). An entry whose lock another process holds (a snapshot being made or in use) is
never removed. ``vmboot cache ls|clear`` shows and empties the cache.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from vmboot.errors import FetchError, UsageError
from vmboot.units import GiB, KiB, MiB, parse_size

CACHE_ENV = "VMBOOT_CACHE"
XDG_CACHE_ENV = "XDG_CACHE_HOME"
CACHE_NAME = "vmboot"
BUSYBOX_SUBDIR = "busybox"
KERNELS_SUBDIR = "debian-kernels"
SNAPSHOTS_SUBDIR = "snapshots"
IMAGES_SUBDIR = "images"
DIGESTS_SUBDIR = "file-digests"
SNAPSHOT_SUFFIX = ".snap"
LOCK_SUFFIX = ".lock"
MAKE_LOCK_SUFFIX = ".make.lock"
CACHE_MAX_ENV = "VMBOOT_CACHE_MAX"
DEFAULT_CACHE_MAX = "4G"
"""The cache's size limit when ``$VMBOOT_CACHE_MAX`` is not set."""
UNLIMITED = "unlimited"
"""``$VMBOOT_CACHE_MAX=unlimited``: never remove anything."""
DISK_BLOCK = 512
"""``st_blocks`` counts these."""


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The cache root (not created)."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV])
    if env.get(XDG_CACHE_ENV):
        return Path(env[XDG_CACHE_ENV]) / CACHE_NAME
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".cache" / CACHE_NAME


def cache_subdir(name: str, *, create: bool = False) -> Path:
    """``<cache>/<name>``, made (with parents) when ``create``."""
    path = cache_dir() / name
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FetchError(
                f"cache directory {path}: cannot create it: {e.strerror} "
                f"(set ${CACHE_ENV} to a writable directory)"
            ) from None
    return path


def cache_limit(environ: Mapping[str, str] | None = None) -> int | None:
    """The cache's size limit in bytes (None: unlimited), from ``$VMBOOT_CACHE_MAX``."""
    env = os.environ if environ is None else environ
    text = env.get(CACHE_MAX_ENV) or DEFAULT_CACHE_MAX
    if text.strip().lower() == UNLIMITED:
        return None
    try:
        return parse_size(text, f"${CACHE_MAX_ENV}")
    except UsageError as e:
        raise UsageError(f"{e} (or {UNLIMITED}; default {DEFAULT_CACHE_MAX})") from None


# -- entries --------------------------------------------------------------------------------


class EntryKind(enum.StrEnum):
    """What a cache entry holds."""

    SNAPSHOT = "snapshot"
    KERNEL = "kernel"
    BUSYBOX = "busybox"
    IMAGE = "image"
    OTHER = "other"


@dataclass(frozen=True)
class CacheEntry:
    """One removable unit of the cache."""

    kind: EntryKind
    path: Path
    """The snapshot file, or the entry's directory."""
    size: int
    """Bytes on disk (its lock included)."""
    last_used: float
    """The newest modification time of its files (seconds since the epoch)."""

    @property
    def lock_paths(self) -> tuple[Path, ...]:
        return snapshot_locks(self.path) if self.kind is EntryKind.SNAPSHOT else ()

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind.value, "path": str(self.path), "size": self.size,
                "last_used": self.last_used}


def snapshot_locks(snapshot: Path) -> tuple[Path, Path]:
    """The lock files that go with a snapshot file: (in use, being made)."""
    stem = snapshot.name.removesuffix(SNAPSHOT_SUFFIX)
    return snapshot.with_name(stem + LOCK_SUFFIX), snapshot.with_name(stem + MAKE_LOCK_SUFFIX)


def _snapshot_of_lock(lock: Path) -> Path:
    stem = lock.name.removesuffix(MAKE_LOCK_SUFFIX).removesuffix(LOCK_SUFFIX)
    return lock.with_name(stem + SNAPSHOT_SUFFIX)


def _disk_usage(path: Path) -> tuple[int, float]:
    """(bytes on disk, newest mtime) of a file or a tree; (0, 0) for what has gone."""
    try:
        st = path.lstat()
    except OSError:
        return 0, 0.0
    size, newest = st.st_blocks * DISK_BLOCK, st.st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in [*dirs, *files]:
                try:
                    sub = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                size += sub.st_blocks * DISK_BLOCK
                newest = max(newest, sub.st_mtime)
    return size, newest


def _entry(kind: EntryKind, path: Path) -> CacheEntry:
    size, used = _disk_usage(path)
    if kind is EntryKind.SNAPSHOT:
        size += sum(_disk_usage(lock)[0] for lock in snapshot_locks(path))
    return CacheEntry(kind, path, size, used)


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Everything in the cache, least recently used first."""
    base = cache_dir() if root is None else root
    if not base.is_dir():
        return []
    entries: list[CacheEntry] = []
    for child in sorted(base.iterdir()):
        if child.name == SNAPSHOTS_SUBDIR and child.is_dir():
            for item in sorted(child.iterdir()):
                if item.name.endswith(SNAPSHOT_SUFFIX):
                    entries.append(_entry(EntryKind.SNAPSHOT, item))
                elif not item.name.endswith(LOCK_SUFFIX) or not _snapshot_of_lock(item).exists():
                    entries.append(_entry(EntryKind.OTHER, item))  # a temporary or a lone lock
        elif child.name == IMAGES_SUBDIR and child.is_dir():
            entries.extend(_entry(EntryKind.IMAGE, item) for item in sorted(child.iterdir()))
        elif child.name == KERNELS_SUBDIR and child.is_dir():
            entries.extend(_entry(EntryKind.KERNEL, item) for item in sorted(child.iterdir()))
        elif child.name == BUSYBOX_SUBDIR:
            entries.append(_entry(EntryKind.BUSYBOX, child))
        else:
            entries.append(_entry(EntryKind.OTHER, child))
    return sorted(entries, key=lambda e: (e.last_used, str(e.path)))


def touch(path: Path) -> None:
    """Mark a cache file as just used (for the least-recently-used order)."""
    with contextlib.suppress(OSError):
        os.utime(path)


# -- locks ----------------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (made if missing) for the ``with`` block, waiting for it."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _open_lock(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise FetchError(f"cache lock {path}: cannot open it: {e.strerror} "
                         f"(set ${CACHE_ENV} to a writable directory)") from None


class HeldLock:
    """A shared lock held until :meth:`release` (a snapshot in use for a whole session)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = _open_lock(path)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def in_use(entry: CacheEntry) -> bool:
    """True when a process holds one of the entry's locks (shared or exclusive)."""
    for path in entry.lock_paths:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    return False


# -- removal --------------------------------------------------------------------------------


def remove_entry(entry: CacheEntry) -> None:
    """Delete one entry (a snapshot mapped by a running guest stays readable to it)."""
    if entry.path.is_dir() and not entry.path.is_symlink():
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
    for lock in entry.lock_paths:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def clear_cache(root: Path | None = None, kinds: frozenset[EntryKind] | None = None
                ) -> list[CacheEntry]:
    """Remove every entry (of ``kinds``, when given); returns what was removed."""
    removed = []
    for entry in cache_entries(root):
        if kinds is None or entry.kind in kinds:
            remove_entry(entry)
            removed.append(entry)
    return removed


def enforce_limit(limit: int | None = None, root: Path | None = None,
                  keep: frozenset[Path] = frozenset()) -> list[CacheEntry]:
    """Remove least recently used entries until the cache fits in ``limit`` bytes
    (default :func:`cache_limit`); entries in ``keep`` and entries in use are spared.
    Returns what was removed."""
    if limit is None:
        limit = cache_limit()
        if limit is None:
            return []
    entries = cache_entries(root)
    total = sum(e.size for e in entries)
    removed: list[CacheEntry] = []
    for entry in entries:
        if total <= limit:
            break
        if entry.path in keep or in_use(entry):
            continue
        remove_entry(entry)
        removed.append(entry)
        total -= entry.size
    return removed


def keep_within_limit(stored: Path) -> list[CacheEntry]:
    """Called by whatever stores an entry in the cache (a saved guest, a download) once it
    is complete: mark ``stored`` (a snapshot or image file, or a kernel's or the busybox's
    directory) as just used and remove the least recently used entries until the cache fits
    in :func:`cache_limit`, sparing ``stored`` and every entry in use. Returns what was removed.
    A store checks :func:`cache_limit` before it writes anything, so a wrong
    ``$VMBOOT_CACHE_MAX`` is refused first."""
    touch(stored)
    return enforce_limit(keep=frozenset({stored}))


def describe_entry(entry: CacheEntry) -> str:
    """One line: kind, size, when it was last used, path."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
    return f"{entry.kind.value:<9} {approx_size(entry.size):>10}  {when}  {entry.path}"


def approx_size(n: int) -> str:
    """``n`` bytes to one decimal in the largest binary unit it reaches: ``14.2 MiB``."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit:
            return f"{n / unit:.1f} {name}"
    return f"{n} B"
