"""Snapshots: a running guest saved to one file and restored in milliseconds.

- :mod:`~vmboot.snapshot.format`: the file (header, JSON manifest, checksum, page-aligned
  sparse memory) and how it is checked when opened;
- :mod:`~vmboot.snapshot.manifest`: the boot facts and state the manifest holds;
- :mod:`~vmboot.snapshot.host`: whether this host offers what the saved guest used;
- :mod:`~vmboot.snapshot.save` and :mod:`~vmboot.snapshot.restore`.

:meth:`vmboot.Machine.snapshot` and :meth:`vmboot.Machine.restore` are the usual way in.

The names below are imported when first used (PEP 562): a restore does not load
:mod:`~vmboot.snapshot.save`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmboot.lazy_names import names_from

if TYPE_CHECKING:
    from vmboot.snapshot.format import FORMAT_VERSION, SnapshotFile, open_snapshot
    from vmboot.snapshot.manifest import BootFacts, Manifest
    from vmboot.snapshot.restore import load_manifest, restore_devices, restore_vm
    from vmboot.snapshot.save import SaveReport, save_snapshot

_HOMES = {
    "FORMAT_VERSION": "format", "SnapshotFile": "format", "open_snapshot": "format",
    "BootFacts": "manifest", "Manifest": "manifest",
    "load_manifest": "restore", "restore_devices": "restore", "restore_vm": "restore",
    "SaveReport": "save", "save_snapshot": "save",
}
"""Each public name's module under ``vmboot.snapshot``."""

__all__ = [
    "FORMAT_VERSION", "BootFacts", "Manifest", "SaveReport", "SnapshotFile", "load_manifest",
    "open_snapshot", "restore_devices", "restore_vm", "save_snapshot",
]


__getattr__ = names_from(__name__, _HOMES)
