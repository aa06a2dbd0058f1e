"""A host directory shared with the guest over virtio-fs: ``HOST_DIR[:TAG][,ro]``.

The guest mounts it with ``mount -t virtiofs TAG /mnt``. Everything is checked here, before
any process starts or any VM exists: the directory must exist, the tag must fit the
device's 36-byte configuration field, and no two shares may have the same tag.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmboot.errors import UsageError

TAG_BYTES = 36
"""virtio-fs configuration: ``tag[36]``, UTF-8, NUL-padded (virtio 1.2 section 5.11.4)."""
READ_ONLY_OPTION = "ro"
ROOT_TAG = "vmboot-root"
"""The tag of the host's root filesystem with ``rootfs="/"``."""


@dataclass(frozen=True, slots=True)
class Share:
    """A host directory, the tag the guest mounts it by, and whether the guest may write."""

    source: Path
    tag: str
    read_only: bool = False

    def check(self) -> None:
        """Raise :class:`UsageError` unless the share can be served."""
        if not self.source.is_dir():
            why = "does not exist" if not self.source.exists() else "is not a directory"
            raise UsageError(f"share {self.source}: {why}; give an existing host directory")
        size = len(self.tag.encode())
        if not 0 < size <= TAG_BYTES:
            raise UsageError(f"share {self.source}: tag {self.tag!r} is {size} bytes; a tag is "
                             f"1-{TAG_BYTES} bytes (HOST_DIR:TAG)")
        if "\0" in self.tag:
            raise UsageError(f"share {self.source}: tag {self.tag!r} contains a NUL byte")


def default_tag(source: Path) -> str:
    """The directory's own name, as the tag when none is given (cut to fit)."""
    name = source.resolve().name or "root"
    return name.encode()[:TAG_BYTES].decode(errors="ignore") or "share"


def parse_share(text: str) -> Share:
    """``HOST_DIR[:TAG][,ro]`` as given to ``--share``."""
    spec, read_only = text, False
    head, sep, option = text.rpartition(",")
    if sep and option == READ_ONLY_OPTION:
        spec, read_only = head, True
    path, sep, tag = spec.rpartition(":")
    if not sep or "/" in tag:
        path, tag = spec, ""
    if not path:
        raise UsageError(f"--share {text!r}: no host directory; use HOST_DIR[:TAG][,ro]")
    source = Path(os.path.abspath(os.path.expanduser(path)))
    share = Share(source, tag or default_tag(source), read_only)
    share.check()
    return share


def check_shares(shares: Sequence[Share]) -> None:
    """Each share valid, and every tag used once."""
    seen: dict[str, Path] = {}
    for share in shares:
        share.check()
        if share.tag in seen:
            raise UsageError(f"share {share.source}: tag {share.tag!r} is already used by "
                             f"{seen[share.tag]}; give each share its own tag (HOST_DIR:TAG)")
        seen[share.tag] = share.source
