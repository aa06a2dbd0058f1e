"""``Kernel``: what every loaded kernel offers, whatever file it came from.

:class:`~vmboot.linux.loader.bzimage.BzImage` and
:class:`~vmboot.linux.loader.elf_kernel.ElfKernel` both satisfy it; :class:`Machine`,
``vmboot exec`` and the command line use this protocol, not the concrete types.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from vmboot.hv.base import VirtualMachine
    from vmboot.linux.configurator.plan import EntryPlan
    from vmboot.linux.options import BootOptions


class KernelFormat(enum.StrEnum):
    """The kind of file a kernel was loaded from."""

    BZIMAGE = "bzImage"
    VMLINUX = "ELF vmlinux"


@runtime_checkable
class Kernel(Protocol):
    """A kernel file read into memory, ready to be laid out in a guest and entered."""

    @property
    def name(self) -> str:
        """Where it came from (a path, or ``<bytes>``), for messages."""

    @property
    def data(self) -> bytes:
        """The whole file."""

    @property
    def format(self) -> KernelFormat: ...

    @property
    def kernel_version(self) -> str | None:
        """The version string the image carries, if it has one."""

    def entries(self) -> dict[Any, Any]:
        """Every entry the kernel offers (name -> what it is and whether it can be used)."""

    def plan(self, vm: VirtualMachine, options: BootOptions | None = None) -> EntryPlan:
        """Check ``options`` against the kernel and ``vm`` and decide the layout; write nothing."""

    def prepare(self, vm: VirtualMachine, options: BootOptions | None = None) -> EntryPlan:
        """:meth:`plan`, then write the kernel and its boot structures into guest memory."""
