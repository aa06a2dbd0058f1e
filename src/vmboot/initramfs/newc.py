"""The newc ("070701", SVR4 portable ASCII without CRC) cpio header, as the kernel reads it.

Layout of one member (Linux Documentation/driver-api/early-userspace/buffer-format.rst)::

    header   110 bytes: "070701" then 13 fields of 8 upper-case hex digits
    name     namesize bytes including the terminating NUL
    pad      NULs up to a multiple of 4 counted from the start of the header
    data     filesize bytes (a symlink's data is its target)
    pad      NULs up to a multiple of 4

An archive ends with a member named ``TRAILER!!!`` (every field 0 except nlink=1 and
namesize=11). Both the kernel's ``usr/gen_init_cpio.c`` and GNU ``cpio -o -H newc``
then pad the whole archive with NULs to a multiple of :data:`ARCHIVE_BLOCK` bytes.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

from vmboot.errors import InitramfsError

NEWC_MAGIC = b"070701"
"""newc magic; the CRC variant "070702" is not written (the kernel ignores its checksum)."""
FIELD_DIGITS = 8
"""Every header field is this many hex digits."""
FIELD_MAX = 0xFFFF_FFFF
"""The largest value an 8-digit hex field holds."""
HEADER_SIZE = len(NEWC_MAGIC) + 13 * FIELD_DIGITS  # 110
ALIGNMENT = 4
"""Name (with header) and data are each padded to this many bytes."""
ARCHIVE_BLOCK = 512
"""The archive (after the trailer) is padded to a multiple of this, like gen_init_cpio and GNU cpio."""
TRAILER_NAME = "TRAILER!!!"

PATH_MAX = 4096
"""Linux PATH_MAX: the kernel refuses a name (with its NUL) or symlink target longer than this."""
NAME_MAX = 255
"""Linux NAME_MAX: the longest single path component, in bytes."""
MAJOR_LIMIT = 1 << 12
"""The kernel's device numbers (MKDEV) keep 12 bits of major..."""
MINOR_LIMIT = 1 << 20
"""...and 20 bits of minor."""


def padding(offset: int) -> int:
    """How many NULs bring ``offset`` to the next multiple of :data:`ALIGNMENT`."""
    return -offset % ALIGNMENT


@dataclass(frozen=True, slots=True)
class NewcHeader:
    """The 13 numeric fields of a newc header, in wire order."""

    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    filesize: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    namesize: int
    check: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0 <= value <= FIELD_MAX:
                raise InitramfsError(
                    f"newc header field {f.name}={value} does not fit in 8 hex digits "
                    f"(valid: 0..{FIELD_MAX:#x})"
                )

    def pack(self) -> bytes:
        """The 110 header bytes."""
        return NEWC_MAGIC + b"".join(b"%08X" % v for v in astuple(self))

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> NewcHeader:
        """Parse the header at ``offset`` (magic included); errors name the offset and field."""
        raw = bytes(data[offset : offset + HEADER_SIZE])
        if len(raw) >= len(NEWC_MAGIC) and raw[: len(NEWC_MAGIC)] != NEWC_MAGIC:
            raise InitramfsError(
                f"cpio header at offset {offset}: magic {raw[:6]!r} is not newc (valid: {NEWC_MAGIC!r})"
            )
        if len(raw) < HEADER_SIZE:
            raise InitramfsError(
                f"cpio header at offset {offset}: truncated ({len(raw)} of {HEADER_SIZE} bytes)"
            )
        values: list[int] = []
        for i, f in enumerate(fields(cls)):
            start = len(NEWC_MAGIC) + i * FIELD_DIGITS
            text = raw[start : start + FIELD_DIGITS]
            try:
                values.append(int(text, 16))
            except ValueError:
                raise InitramfsError(
                    f"cpio header at offset {offset}: field {f.name} is {text!r}, "
                    "not 8 hex digits"
                ) from None
        return cls(*values)


TRAILER_HEADER = NewcHeader(
    ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, filesize=0, devmajor=0, devminor=0,
    rdevmajor=0, rdevminor=0, namesize=len(TRAILER_NAME) + 1,
)
"""The trailer header exactly as gen_init_cpio and GNU cpio write it."""
