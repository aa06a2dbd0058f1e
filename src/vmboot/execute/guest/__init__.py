"""Guest-side files shipped as package data: the ``/init`` of ``vmboot exec`` images.

- ``init.sh`` becomes ``/init``: mounts, serial set-up, then sources ``run.sh``, then
  ``reboot -f``;
- ``run.sh`` becomes ``/vmboot/run.sh``: runs the command and reports its exit status.

The protocol both implement is documented in :mod:`vmboot.execute.image`.
"""

from __future__ import annotations

from pathlib import Path

INIT_SCRIPT = "init.sh"
RUN_SCRIPT = "run.sh"


def guest_file(name: str) -> bytes:
    """The bytes of the guest file ``name`` shipped in this package."""
    return Path(__file__).with_name(name).read_bytes()
