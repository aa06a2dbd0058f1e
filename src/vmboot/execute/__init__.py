"""Run one command in a fresh guest: ``vmboot.exec()`` and everything it needs.

- :mod:`~vmboot.execute.api`: :func:`exec_command` (``vmboot.exec``), :class:`ExecResult`,
  how a run ended (:class:`ExecReason`);
- :mod:`~vmboot.execute.image`: the initramfs it boots and the host/guest protocol;
- :mod:`~vmboot.execute.guest`: the guest's ``/init`` scripts, shipped as package data;
- :mod:`~vmboot.execute.default_guest`: the kernel and busybox shipped in ``vmboot/guest_image/``;
- :mod:`~vmboot.execute.guest_choice`: which kernel and which busybox a guest gets;
- :mod:`~vmboot.execute.discovery`: the kernels and busyboxes this host has;
- :mod:`~vmboot.execute.fetch`: busybox-static and Debian kernels with apt, into the cache;
- :mod:`~vmboot.execute.cache`: where the cache is.
- :mod:`~vmboot.execute.result`: what a run gives back (:class:`ExecResult`).

The names below are imported when first used (PEP 562): a process that needs one module of
this package (``vmboot exec`` first reads :mod:`~vmboot.execute.channel`'s choices) does
not load the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmboot.lazy_names import names_from

if TYPE_CHECKING:
    from vmboot.execute.api import classify, exec_command
    from vmboot.execute.discovery import cached_kernels, find_kernel
    from vmboot.execute.layout import EXEC_CMDLINE
    from vmboot.execute.result import ExecReason, ExecResult, ExecTimings

_HOMES = {
    "classify": "api", "exec_command": "api",
    "cached_kernels": "discovery", "find_kernel": "discovery",
    "EXEC_CMDLINE": "layout",
    "ExecReason": "result", "ExecResult": "result", "ExecTimings": "result",
}
"""Each public name's module under ``vmboot.execute``."""

__all__ = [
    "EXEC_CMDLINE",
    "ExecReason",
    "ExecResult",
    "ExecTimings",
    "cached_kernels",
    "classify",
    "exec_command",
    "find_kernel",
]


__getattr__ = names_from(__name__, _HOMES)
