"""Snapshots: a running guest saved to one file and restored in milliseconds.

- :mod:`~vmboot.snapshot.format`: the file (header, JSON manifest, checksum, page-aligned
  sparse memory) and how it is checked when opened;
- :mod:`~vmboot.snapshot.manifest`: the boot facts and state the manifest holds;
- :mod:`~vmboot.snapshot.host`: whether this host offers what the saved guest used;
- :mod:`~vmboot.snapshot.save` and :mod:`~vmboot.snapshot.restore`.

:meth:`vmboot.Machine.snapshot` and :meth:`vmboot.Machine.restore` are the usual way in.
"""

from vmboot.snapshot.format import FORMAT_VERSION, SnapshotFile, open_snapshot
from vmboot.snapshot.manifest import BootFacts, Manifest
from vmboot.snapshot.restore import load_manifest, restore_devices, restore_vm
from vmboot.snapshot.save import SaveReport, save_snapshot

__all__ = [
    "FORMAT_VERSION", "BootFacts", "Manifest", "SaveReport", "SnapshotFile", "load_manifest",
    "open_snapshot", "restore_devices", "restore_vm", "save_snapshot",
]
