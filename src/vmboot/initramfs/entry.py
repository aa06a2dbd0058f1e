"""One member of an initramfs: what it is, where it goes, and where its bytes come from.

Guest paths are normalised to the form cpio archives use: relative to the root, no
leading ``/``, no ``.`` or empty components (``"/usr//bin/./x/"`` becomes
``"usr/bin/x"``). ``..`` is refused rather than resolved, so an entry can never land
outside the directory the kernel unpacks into. Paths are ``str``; bytes that are not
UTF-8 travel as surrogate escapes (``os.fsencode``/``os.fsdecode``), so any file name a
Linux host can have round-trips.
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from vmboot.errors import InitramfsError
from vmboot.initramfs.newc import FIELD_MAX, MAJOR_LIMIT, MINOR_LIMIT, NAME_MAX, PATH_MAX

PERMISSION_BITS = 0o7777
"""The part of st_mode an entry's ``mode`` holds (setuid, setgid, sticky, rwx)."""

DEFAULT_FILE_MODE = 0o644
DEFAULT_EXECUTABLE_MODE = 0o755
DEFAULT_DIR_MODE = 0o755
DEFAULT_SYMLINK_MODE = 0o777
DEFAULT_DEVICE_MODE = 0o600


class EntryKind(enum.Enum):
    """The file type, valued by its S_IFMT bits."""

    FILE = stat.S_IFREG
    DIRECTORY = stat.S_IFDIR
    SYMLINK = stat.S_IFLNK
    CHAR_DEVICE = stat.S_IFCHR
    BLOCK_DEVICE = stat.S_IFBLK
    FIFO = stat.S_IFIFO
    SOCKET = stat.S_IFSOCK

    @classmethod
    def from_mode(cls, mode: int, where: str) -> EntryKind:
        try:
            return cls(stat.S_IFMT(mode))
        except ValueError:
            raise InitramfsError(
                f"{where}: mode {mode:#o} has file type {stat.S_IFMT(mode):#o}, which is none of "
                "regular file, directory, symlink, char/block device, FIFO, socket"
            ) from None


def normalize_guest_path(path: str | os.PathLike[str], what: str = "guest path") -> str:
    """``path`` in archive form (see the module docstring); :class:`InitramfsError` if unusable."""
    text = os.fspath(path)
    if "\0" in text:
        raise InitramfsError(f"{what} {text!r} contains a NUL byte (valid: any bytes but NUL)")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InitramfsError(
            f"{what} {text!r} contains '..' (valid: a path that stays inside the archive root)"
        )
    if not parts:
        raise InitramfsError(f"{what} {text!r} names the archive root itself (valid: a path below it)")
    for part in parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise InitramfsError(
                f"{what} {text!r}: component {part[:40]!r}... is {size} bytes (valid: at most {NAME_MAX})"
            )
    normal = "/".join(parts)
    size = len(os.fsencode(normal)) + 1
    if size > PATH_MAX:
        raise InitramfsError(
            f"{what} {text[:60]!r}... is {size} bytes with its NUL (valid: at most {PATH_MAX})"
        )
    return normal


def parent_of(path: str) -> str:
    """The normalised parent of a normalised path; ``""`` for a top-level entry."""
    return path.rpartition("/")[0]


def sort_key(path: str) -> tuple[bytes, ...]:
    """Depth-first order, siblings by name bytes: a directory comes before what it contains."""
    return tuple(os.fsencode(path).split(b"/"))


def _check_field(value: int, name: str, where: str, limit: int = FIELD_MAX + 1) -> None:
    if not 0 <= value < limit:
        raise InitramfsError(f"{where}: {name}={value} is out of range (valid: 0..{limit - 1})")


@dataclass(frozen=True, slots=True)
class Entry:
    """One archive member.

    Build them with the class methods (:meth:`file`, :meth:`host_file`, :meth:`directory`,
    :meth:`symlink`, :meth:`char_device`, :meth:`block_device`); :func:`read_cpio` also
    returns them. ``mtime``, ``ino`` and ``nlink`` left as ``None`` are filled in by the
    writer under its documented rules; :func:`read_cpio` sets them from the archive.
    """

    path: str
    kind: EntryKind
    mode: int
    """Permission bits only (``& 0o7777``); the file type is ``kind``."""
    uid: int = 0
    gid: int = 0
    mtime: int | None = None
    data: bytes | None = None
    """A regular file's contents, when held in memory."""
    source: Path | None = None
    """A regular file's contents, streamed from this host file when the archive is written."""
    source_size: int = 0
    """``source``'s size when the entry was made; the writer checks it did not change."""
    target: str = ""
    """A symlink's target."""
    rdev_major: int = 0
    rdev_minor: int = 0
    ino: int | None = None
    nlink: int | None = None
    dev_major: int = 0
    dev_minor: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", normalize_guest_path(self.path))
        where = f"cpio entry {self.path!r}"
        if self.mode & ~PERMISSION_BITS:
            raise InitramfsError(
                f"{where}: mode {self.mode:#o} has bits outside permissions (valid: 0..0o7777; "
                "the file type is given by kind)"
            )
        for name in ("uid", "gid", "dev_major", "dev_minor"):
            _check_field(getattr(self, name), name, where)
        if self.mtime is not None:
            _check_field(self.mtime, "mtime", where)
        if self.ino is not None:
            _check_field(self.ino, "ino", where)
        if self.nlink is not None:
            _check_field(self.nlink, "nlink", where)
        is_device = self.kind in (EntryKind.CHAR_DEVICE, EntryKind.BLOCK_DEVICE)
        if is_device:
            _check_field(self.rdev_major, "rdev_major", where, MAJOR_LIMIT)
            _check_field(self.rdev_minor, "rdev_minor", where, MINOR_LIMIT)
        elif self.rdev_major or self.rdev_minor:
            raise InitramfsError(f"{where}: a {self.kind.name.lower()} has no device number")
        if self.kind is EntryKind.FILE:
            if self.data is not None and self.source is not None:
                raise InitramfsError(f"{where}: give the contents as data or as a source file, not both")
            _check_field(self.size, "file size", where)
        elif self.data is not None or self.source is not None:
            raise InitramfsError(f"{where}: only a regular file has contents, not a {self.kind.name.lower()}")
        if self.kind is EntryKind.SYMLINK:
            target = os.fsencode(self.target)
            if not target or b"\0" in target or len(target) + 1 > PATH_MAX:
                raise InitramfsError(
                    f"{where}: symlink target {self.target[:60]!r} is unusable (valid: 1..{PATH_MAX - 1} "
                    "bytes, no NUL)"
                )
        elif self.target:
            raise InitramfsError(f"{where}: only a symlink has a target, not a {self.kind.name.lower()}")

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def file(cls, path: str, data: bytes, mode: int = DEFAULT_FILE_MODE, *, uid: int = 0,
             gid: int = 0, mtime: int | None = None) -> Entry:
        """A regular file whose contents are ``data``."""
        return cls(path, EntryKind.FILE, mode, uid, gid, mtime, data=bytes(data))

    @classmethod
    def host_file(cls, path: str, source: str | os.PathLike[str], mode: int | None = None, *,
                  uid: int = 0, gid: int = 0, mtime: int | None = None) -> Entry:
        """A regular file streamed from the host file ``source`` when the archive is written.

        ``mode`` defaults to the host file's permission bits. ``source`` is followed if
        it is a symlink; it must end at a regular file.
        """
        src = Path(source)
        try:
            st = src.stat()
        except OSError as e:
            raise InitramfsError(f"cpio entry {path!r}: cannot read host file {src}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise InitramfsError(
                f"cpio entry {path!r}: host file {src} is not a regular file (mode {st.st_mode:#o})"
            )
        perms = stat.S_IMODE(st.st_mode) if mode is None else mode
        return cls(path, EntryKind.FILE, perms, uid, gid, mtime, source=src, source_size=st.st_size)

    @classmethod
    def directory(cls, path: str, mode: int = DEFAULT_DIR_MODE, *, uid: int = 0, gid: int = 0,
                  mtime: int | None = None) -> Entry:
        return cls(path, EntryKind.DIRECTORY, mode, uid, gid, mtime)

    @classmethod
    def symlink(cls, path: str, target: str, *, mode: int = DEFAULT_SYMLINK_MODE, uid: int = 0,
                gid: int = 0, mtime: int | None = None) -> Entry:
        return cls(path, EntryKind.SYMLINK, mode, uid, gid, mtime, target=target)

    @classmethod
    def char_device(cls, path: str, major: int, minor: int, mode: int = DEFAULT_DEVICE_MODE, *,
                    uid: int = 0, gid: int = 0, mtime: int | None = None) -> Entry:
        return cls(path, EntryKind.CHAR_DEVICE, mode, uid, gid, mtime, rdev_major=major, rdev_minor=minor)

    @classmethod
    def block_device(cls, path: str, major: int, minor: int, mode: int = DEFAULT_DEVICE_MODE, *,
                     uid: int = 0, gid: int = 0, mtime: int | None = None) -> Entry:
        return cls(path, EntryKind.BLOCK_DEVICE, mode, uid, gid, mtime, rdev_major=major, rdev_minor=minor)

    @classmethod
    def fifo(cls, path: str, mode: int = DEFAULT_FILE_MODE, *, uid: int = 0, gid: int = 0,
             mtime: int | None = None) -> Entry:
        return cls(path, EntryKind.FIFO, mode, uid, gid, mtime)

    # -- derived --------------------------------------------------------------------------

    @property
    def st_mode(self) -> int:
        """File type and permissions, as the header's mode field holds them."""
        return self.kind.value | self.mode

    @property
    def size(self) -> int:
        """The header's filesize: contents length, or the symlink target's length in bytes."""
        if self.kind is EntryKind.FILE:
            return len(self.data) if self.data is not None else self.source_size
        if self.kind is EntryKind.SYMLINK:
            return len(os.fsencode(self.target))
        return 0

    def with_path(self, path: str) -> Entry:
        """The same entry at another guest path."""
        return replace(self, path=path)
