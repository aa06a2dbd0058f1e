"""``/dev/kvm`` itself: opening it, the API version, capabilities, supported CPUID, new VMs."""

from __future__ import annotations

import ctypes
import errno
import os

from vmboot.closeable import Closeable
from vmboot.errors import HypervisorError, KvmIoctlError, KvmUnavailableError
from vmboot.hv.kvm import abi
from vmboot.hv.kvm.host import host_is_emulating
from vmboot.hv.kvm.ioctl import kvm_ioctl

DEFAULT_DEVICE = "/dev/kvm"

REQUIRED_CAPS: dict[int, str] = {
    abi.KVM_CAP_USER_MEMORY: "KVM_CAP_USER_MEMORY",
    abi.KVM_CAP_SET_TSS_ADDR: "KVM_CAP_SET_TSS_ADDR",
    abi.KVM_CAP_EXT_CPUID: "KVM_CAP_EXT_CPUID",
    abi.KVM_CAP_IRQCHIP: "KVM_CAP_IRQCHIP",
    abi.KVM_CAP_PIT2: "KVM_CAP_PIT2",
    abi.KVM_CAP_SET_IDENTITY_MAP_ADDR: "KVM_CAP_SET_IDENTITY_MAP_ADDR",
    abi.KVM_CAP_IMMEDIATE_EXIT: "KVM_CAP_IMMEDIATE_EXIT",
}
"""Capabilities vmboot cannot work without (all in mainline Linux since 4.11)."""

_CPUID_MAX_ENTRIES = 1024
"""Upper bound when growing the KVM_GET_SUPPORTED_CPUID buffer (KVM's own limit is 256)."""
_CPUID_FIRST_TRY = 128


class KVM(Closeable):
    """An open ``/dev/kvm`` (or ``device``, so tests can point it elsewhere).

    Raises :class:`KvmUnavailableError` with what to do when the device is missing, not
    accessible, of the wrong API version, or lacks a capability vmboot needs.
    """

    _fd: int | None = None

    def __init__(self, device: str | os.PathLike[str] = DEFAULT_DEVICE) -> None:
        self.device = os.fspath(device)
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailableError(
                f"{self.device}: does not exist. KVM is not available on this host: load the "
                "module (modprobe kvm_intel or kvm_amd), enable virtualisation in the firmware, "
                "or run on a host/VM that exposes nested virtualisation"
            ) from None
        except PermissionError:
            raise KvmUnavailableError(
                f"{self.device}: permission denied (needs read and write access). Add your user "
                "to the group that owns it (usually: sudo usermod -aG kvm $USER, then log in "
                "again) or run as root"
            ) from None
        except OSError as e:
            raise KvmUnavailableError(f"{self.device}: cannot open: {e.strerror}") from None
        self._fd = fd
        try:
            self._check()
        except BaseException:
            self.close()
            raise
        self.vcpu_mmap_size: int = self._ioctl(abi.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        self._supported_cpuid: list[abi.KvmCpuidEntry2] | None = None

    # -- checks -------------------------------------------------------------------------------
    def _check(self) -> None:
        try:
            version = self._ioctl(abi.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        except KvmIoctlError as e:
            raise KvmUnavailableError(
                f"{self.device}: KVM_GET_API_VERSION failed ({os.strerror(e.errno)}); this is "
                "not a KVM device node"
            ) from None
        if version != abi.KVM_API_VERSION:
            raise KvmUnavailableError(
                f"{self.device}: KVM API version {version}, vmboot needs version "
                f"{abi.KVM_API_VERSION} (every mainline Linux since 2.6.22 has it)"
            )
        missing = [name for cap, name in REQUIRED_CAPS.items() if not self.check_extension(cap)]
        if missing:
            raise KvmUnavailableError(
                f"{self.device}: the host KVM lacks {', '.join(missing)}; vmboot needs all of "
                f"{', '.join(REQUIRED_CAPS.values())} (Linux 4.11 or newer)"
            )

    # -- basic access -------------------------------------------------------------------------
    @property
    def fd(self) -> int:
        if self._fd is None:
            raise HypervisorError(f"{self.device}: used after close()")
        return self._fd

    def _ioctl(self, request: int, arg: int, what: str) -> int:
        return int(kvm_ioctl(self.fd, request, arg, who=str(self.device), what=what))

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when ``cap`` is missing, else a positive (cap-specific) value."""
        try:
            return self._ioctl(abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")
        except KvmIoctlError:
            return 0

    @property
    def is_emulating(self) -> bool:
        """True when the host KVM emulates guest ring 0 (PVM): see :mod:`vmboot.hv.kvm.cpuid`."""
        return host_is_emulating()

    @property
    def max_vcpus(self) -> int:
        return self.check_extension(abi.KVM_CAP_MAX_VCPUS) or self.check_extension(abi.KVM_CAP_NR_VCPUS)

    @property
    def nr_memslots(self) -> int:
        return self.check_extension(abi.KVM_CAP_NR_MEMSLOTS)

    def supported_cpuid(self) -> list[abi.KvmCpuidEntry2]:
        """KVM_GET_SUPPORTED_CPUID: every leaf KVM can expose (copies; cached)."""
        if self._supported_cpuid is None:
            n = _CPUID_FIRST_TRY
            while True:
                buf = abi.kvm_cpuid2_type(n)()
                buf.nent = n
                try:
                    self._ioctl_buf(abi.KVM_GET_SUPPORTED_CPUID, buf,
                                    f"KVM_GET_SUPPORTED_CPUID with {n} entries")
                except KvmIoctlError as e:
                    if e.errno == errno.E2BIG and n < _CPUID_MAX_ENTRIES:
                        n *= 2
                        continue
                    raise
                break
            self._supported_cpuid = [_copy_entry(buf.entries[i]) for i in range(buf.nent)]
        return [_copy_entry(e) for e in self._supported_cpuid]

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores."""
        probe = abi.kvm_msr_list_type(0)()
        try:
            self._ioctl_buf(abi.KVM_GET_MSR_INDEX_LIST, probe, "KVM_GET_MSR_INDEX_LIST")
        except KvmIoctlError as e:
            if e.errno != errno.E2BIG:
                raise
        n = probe.nmsrs
        buf = abi.kvm_msr_list_type(n)()
        buf.nmsrs = n
        self._ioctl_buf(abi.KVM_GET_MSR_INDEX_LIST, buf, "KVM_GET_MSR_INDEX_LIST")
        return list(buf.indices[: buf.nmsrs])

    def _ioctl_buf(self, request: int, buf: ctypes.Structure, what: str) -> None:
        kvm_ioctl(self.fd, request, buf, who=str(self.device), what=what)

    # -- VMs ----------------------------------------------------------------------------------
    def create_vm_fd(self) -> int:
        """KVM_CREATE_VM: a raw VM file descriptor (the caller owns it)."""
        try:
            return self._ioctl(abi.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        except KvmIoctlError as e:
            if e.errno not in (errno.ENOMEM, errno.EMFILE):
                raise
            raise HypervisorError(f"{e} (too many VMs or out of memory)") from None

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the device fd; idempotent. VMs created from it stay usable."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def _copy_entry(e: abi.KvmCpuidEntry2) -> abi.KvmCpuidEntry2:
    c = abi.KvmCpuidEntry2()
    ctypes.memmove(ctypes.addressof(c), ctypes.addressof(e), ctypes.sizeof(c))
    return c
