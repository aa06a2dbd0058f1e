"""The one exception hierarchy of vmboot.

Every error vmboot raises on bad input, a bad guest or a bad host derives from
:class:`VmbootError`. Messages name the file or field, the offending value and
what would have been valid, so that a user can act on them without reading
vmboot's source.

Hierarchy::

    VmbootError
    ├── KernelImageError          a kernel file that cannot be used
    │   ├── KernelFormatError     not a kernel vmboot knows (wrong magic, truncated)
    │   └── UnsupportedKernelError  a real kernel, but not bootable this way
    ├── BootConfigError           BootOptions that cannot be honoured
    │   ├── LayoutError           regions that overlap or do not fit in guest RAM
    │   └── CmdlineError          a command line that is too long or malformed
    ├── GuestMemoryError          an access outside guest RAM
    ├── HypervisorError           the host hypervisor (KVM) refused or failed
    │   └── KvmUnavailableError   /dev/kvm missing, not permitted, too old
    ├── GuestError                the guest did something that stops the run
    │   └── EmulationFailure      KVM could not emulate a guest instruction
    ├── DebugError                introspection of a guest failed
    │   ├── SymbolSourceError     no usable symbol table
    │   ├── PageWalkError         a guest virtual address does not translate
    │   ├── StackWalkError        the frame chain is broken
    │   └── NoVcpuError           no vCPU to inspect
    ├── SymbolFileError           a System.map / ELF symbol file that is malformed
    │   └── ElfFormatError        (also a KernelFormatError) a malformed ELF file
    ├── UsageError                a command-line argument that is malformed
    ├── InitramfsError            a cpio entry or archive that cannot be written or read
    ├── DecompressionLimitError   compressed input that expands past its limit (a bomb?)
    ├── FetchError                a host tool or download (busybox, Debian kernel) failed
    └── SnapshotError             a snapshot that cannot be written or restored
        ├── SnapshotFormatError   truncated, corrupted, or from another vmboot version
        ├── SnapshotMismatchError another kernel, command line or host than the saved one
        └── DeviceStateError      a device's saved state that does not fit the device
"""

from __future__ import annotations

__all__ = [
    "BootConfigError",
    "CmdlineError",
    "DebugError",
    "DecompressionLimitError",
    "DeviceStateError",
    "ElfFormatError",
    "EmulationFailure",
    "FetchError",
    "GuestError",
    "GuestMemoryError",
    "HypervisorError",
    "InitramfsError",
    "KernelFormatError",
    "KernelImageError",
    "KvmUnavailableError",
    "LayoutError",
    "NoVcpuError",
    "PageWalkError",
    "SnapshotError",
    "SnapshotFormatError",
    "SnapshotMismatchError",
    "StackWalkError",
    "SymbolFileError",
    "SymbolSourceError",
    "UnsupportedKernelError",
    "UsageError",
    "VmbootError",
]


class VmbootError(Exception):
    """Base of every error vmboot raises on bad input, a bad guest or a bad host."""


class KernelImageError(VmbootError):
    """A kernel image that cannot be used."""


class KernelFormatError(KernelImageError):
    """The file is not a kernel image vmboot can read (wrong magic, truncated, corrupt)."""


class UnsupportedKernelError(KernelImageError):
    """A readable kernel that cannot be booted the requested way (protocol too old, 32-bit...)."""


class BootConfigError(VmbootError):
    """Boot options that cannot be honoured for this kernel and this guest."""


class LayoutError(BootConfigError):
    """Guest-physical regions that overlap, or that do not fit in guest RAM."""


class CmdlineError(BootConfigError):
    """A kernel command line that is too long or contains a NUL byte."""


class GuestMemoryError(VmbootError):
    """An access to guest-physical memory outside guest RAM."""


class HypervisorError(VmbootError):
    """The host hypervisor refused an operation or failed."""


class KvmIoctlError(HypervisorError):
    """A KVM ioctl failed; ``errno`` says why, for callers that expect a particular one."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


class KvmUnavailableError(HypervisorError):
    """/dev/kvm is missing, not accessible, or lacks a needed capability."""


class GuestError(VmbootError):
    """The guest did something that stops the run."""


class EmulationFailure(GuestError):
    """KVM stopped the guest because it could not emulate an instruction."""


class DebugError(VmbootError):
    """Introspection of a guest failed."""


class SymbolSourceError(DebugError):
    """No usable symbol table: both sources missing, or none yields a function symbol."""


class PageWalkError(DebugError):
    """A guest virtual address does not translate through the guest's page tables."""


class StackWalkError(DebugError):
    """The frame-pointer chain is broken; ``frames`` holds what was collected before."""

    def __init__(self, message: str, frames: list[object] | None = None) -> None:
        super().__init__(message)
        self.frames: list[object] = list(frames or [])


class NoVcpuError(DebugError):
    """No vCPU was given to inspect."""


class SymbolFileError(VmbootError):
    """A symbol file (System.map, ELF) that is malformed."""


class ElfFormatError(KernelFormatError, SymbolFileError):
    """An ELF file that is truncated, malformed, or not ELF64 little-endian x86-64."""


class UsageError(VmbootError):
    """A malformed command-line argument (size, number, address)."""


class InitramfsError(VmbootError):
    """A cpio (initramfs) entry or archive that cannot be written or read."""


class DecompressionLimitError(VmbootError):
    """Compressed input (kernel payload, initramfs) that decompresses past its output limit."""


class FetchError(VmbootError):
    """Finding or downloading a host-side artefact (busybox, a Debian kernel) failed."""


class SnapshotError(VmbootError):
    """A snapshot of a running guest that cannot be written or restored."""


class SnapshotFormatError(SnapshotError):
    """A snapshot file that is truncated, corrupted, or written by another format version."""


class SnapshotMismatchError(SnapshotError):
    """A snapshot taken with another kernel, command line, vmboot version or host than now."""


class DeviceStateError(SnapshotError):
    """A device's saved state with a missing field or a value the device cannot hold."""
