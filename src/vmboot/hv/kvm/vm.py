"""A KVM virtual machine: guest RAM registered as memslots, the in-kernel irqchip and PIT, vCPUs."""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import struct

from vmboot.errors import HypervisorError, KvmIoctlError
from vmboot.hv.base import VirtualMachine
from vmboot.hv.cpuid_entry import CpuidEntry
from vmboot.hv.guest_memory import GuestMemory
from vmboot.hv.kvm import abi
from vmboot.hv.kvm.cpuid import CpuidPolicyName, build_cpuid, resolve_policy
from vmboot.hv.kvm.host import host_is_emulating
from vmboot.hv.kvm.ioctl import ioctl_ulong, kvm_ioctl
from vmboot.hv.kvm.system import KVM
from vmboot.hv.kvm.vcpu import KvmVCPU

log = logging.getLogger("vmboot.hv.kvm")

TSS_ADDRESS = 0xFFFBD000
"""Three pages KVM needs for its real-mode TSS on Intel (KVM_SET_TSS_ADDR), in the MMIO hole."""
IDENTITY_MAP_ADDRESS = 0xFFFBC000
"""One page for KVM's real-mode identity page table on Intel, just below the TSS."""

MAX_VCPUS_DEFAULT = 1
"""vCPUs the CPUID topology describes unless ``vcpu_count`` says otherwise."""

_IRQ_LEVEL = struct.Struct("<II")

def host_address(mapping: mmap.mmap) -> int:
    """The host virtual address of ``mapping``'s first byte (for KVM_SET_USER_MEMORY_REGION)."""
    anchor = ctypes.c_char.from_buffer(mapping)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor  # release the buffer export so the mmap can be closed later


class KvmVM(VirtualMachine):
    """A KVM guest with ``memory_bytes`` of RAM at guest-physical 0 (split around the MMIO hole).

    ``kvm``: an open :class:`KVM` (the VM then borrows it); by default the VM opens
    ``/dev/kvm`` itself and closes it with the VM. ``irqchip``: create the in-kernel PIC,
    IOAPIC, LAPIC and PIT (a PC); without it, HLT exits to user space (KVM_EXIT_HLT).
    ``cpuid_policy``: see :mod:`vmboot.hv.kvm.cpuid`. ``vcpu_count``: the number of vCPUs
    the CPUID topology leaves describe. ``memory``: guest RAM to use (e.g. mapped from a
    snapshot file) instead of fresh zeroed RAM; the VM owns and closes it.

    Use as a context manager; :meth:`close` is idempotent and safe after any error.
    """

    def __init__(
        self,
        memory_bytes: int,
        *,
        kvm: KVM | None = None,
        irqchip: bool = True,
        cpuid_policy: CpuidPolicyName = "auto",
        vcpu_count: int = MAX_VCPUS_DEFAULT,
        memory: GuestMemory | None = None,
        shared_memory: bool = False,
    ) -> None:
        self._fd: int | None = None
        self._closing = False
        """close() was called from inside a vCPU run; the rest happens when that run ends."""
        self._vcpus: dict[int, KvmVCPU] = {}
        self._own_kvm = kvm is None
        self._kvm: KVM | None = None
        if memory is not None and memory.size != memory_bytes:
            raise HypervisorError(f"KVM VM: memory_bytes {memory_bytes} differs from the given "
                                  f"guest memory's size {memory.size}")
        if memory is not None and shared_memory and not memory.shared:
            raise HypervisorError("KVM VM: shared_memory=True but the given guest memory is "
                                  "private; make it with GuestMemory(size, shared=True)")
        self.memory = (memory if memory is not None
                       else GuestMemory(memory_bytes, shared=shared_memory))
        try:
            self._kvm = KVM() if kvm is None else kvm
            resolve_policy(cpuid_policy, host_is_emulating())  # validate early
            self.cpuid_policy: CpuidPolicyName = cpuid_policy
            self.irqchip = irqchip
            self.vcpu_count = vcpu_count
            self._fd = self._kvm.create_vm_fd()
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        # Memory first, as Firecracker orders it: a slot added once the in-kernel irqchip
        # exists took 5-7 ms (256 MiB) on a PVM host, against 0.2 ms before it.
        base = host_address(self.memory.mapping)
        for slot, region in enumerate(self.memory.regions):
            slot_desc = abi.KvmUserspaceMemoryRegion(
                slot=slot, flags=0, guest_phys_addr=region.gpa, memory_size=region.size,
                userspace_addr=base + region.offset,
            )
            self._ioctl(abi.KVM_SET_USER_MEMORY_REGION, bytes(slot_desc),
                        f"KVM_SET_USER_MEMORY_REGION (slot {slot}, guest-physical "
                        f"[{region.gpa:#x}, {region.end:#x}))")
        ioctl_ulong(self.fd, abi.KVM_SET_TSS_ADDR, TSS_ADDRESS, who="KVM VM",
                    what=f"KVM_SET_TSS_ADDR {TSS_ADDRESS:#x}")
        self._ioctl(abi.KVM_SET_IDENTITY_MAP_ADDR, struct.pack("<Q", IDENTITY_MAP_ADDRESS),
                    "KVM_SET_IDENTITY_MAP_ADDR")
        if self.irqchip:
            self._ioctl(abi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")
            pit = abi.KvmPitConfig(flags=abi.KVM_PIT_SPEAKER_DUMMY)
            self._ioctl(abi.KVM_CREATE_PIT2, bytes(pit), "KVM_CREATE_PIT2")

    # -- access -------------------------------------------------------------------------------
    @property
    def fd(self) -> int:
        if self._fd is None:
            raise HypervisorError("KVM VM: used after close()")
        return self._fd

    @property
    def kvm(self) -> KVM:
        if self._kvm is None:
            raise HypervisorError("KVM VM: used after close()")
        return self._kvm

    @property
    def closed(self) -> bool:
        return self._fd is None or self._closing

    def _ioctl(self, request: int, arg: int | bytes, what: str) -> int | bytes:
        return kvm_ioctl(self.fd, request, arg, who="KVM VM", what=what)

    def tsc_khz(self) -> int:
        """The rate of the guest's time-stamp counter, in kHz (``KVM_GET_TSC_KHZ`` on the VM:
        no vCPU is stopped to read it)."""
        khz = self._ioctl(abi.KVM_GET_TSC_KHZ, 0, "KVM_GET_TSC_KHZ")
        assert isinstance(khz, int)
        return khz

    # -- devices ------------------------------------------------------------------------------
    def irq_line(self, irq: int, level: bool | int) -> None:
        """Drive interrupt line ``irq`` (GSI 0-23 of the in-kernel PIC/IOAPIC) to ``level``."""
        try:
            kvm_ioctl(self.fd, abi.KVM_IRQ_LINE, _IRQ_LEVEL.pack(irq, 1 if level else 0),
                      who="KVM VM", what=f"KVM_IRQ_LINE irq={irq} level={int(bool(level))}")
        except KvmIoctlError as e:
            if self.irqchip:
                raise
            raise HypervisorError(f"{e} (the VM was created without an in-kernel irqchip)"
                                  ) from None
        except struct.error:
            raise HypervisorError(f"KVM VM: irq {irq!r} is not an interrupt line number") from None

    def notification_fds_supported(self) -> bool:
        """True when this KVM has both KVM_CAP_IOEVENTFD and KVM_CAP_IRQFD (and an irqchip)."""
        return (self.irqchip and self.kvm.check_extension(abi.KVM_CAP_IOEVENTFD) > 0
                and self.kvm.check_extension(abi.KVM_CAP_IRQFD) > 0)

    def register_ioeventfd(self, address: int, length: int, fd: int,
                           datamatch: int | None = None) -> None:
        """Have a guest MMIO write of ``length`` bytes to ``address`` (with value ``datamatch``
        if given) signal eventfd ``fd`` inside KVM, without an exit to user space."""
        flags = 0 if datamatch is None else abi.KVM_IOEVENTFD_FLAG_DATAMATCH
        desc = abi.KvmIoeventfd(datamatch=datamatch or 0, addr=address, len=length, fd=fd,
                                flags=flags)
        self._ioctl(abi.KVM_IOEVENTFD, bytes(desc),
                    f"KVM_IOEVENTFD (address {address:#x}, length {length}, datamatch {datamatch})")

    def register_irqfd(self, fd: int, gsi: int) -> None:
        """Have a write to eventfd ``fd`` raise interrupt ``gsi`` (an edge) inside KVM."""
        self._ioctl(abi.KVM_IRQFD, bytes(abi.KvmIrqfd(fd=fd, gsi=gsi)),
                    f"KVM_IRQFD (gsi {gsi})")

    # -- vCPUs --------------------------------------------------------------------------------
    @property
    def has_local_apic(self) -> bool:
        """Each vCPU has a LAPIC when the VM has the in-kernel irqchip."""
        return self.irqchip

    def cpuid_table(self, index: int) -> list[CpuidEntry]:
        """The CPUID table this VM's policy gives vCPU ``index`` (KVM's supported leaves, the
        topology of ``vcpu_count`` vCPUs; set with :meth:`KvmVCPU.set_cpuid`)."""
        return build_cpuid(
            (CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
             for e in self.kvm.supported_cpuid()),
            self.cpuid_policy, emulating=host_is_emulating(), vcpu_index=index,
            vcpu_count=self.vcpu_count,
        )

    def create_vcpu(self, index: int = 0) -> KvmVCPU:
        """Create vCPU ``index`` in KVM's reset state (a boot's state is set by
        :func:`vmboot.linux.configurator.cpu_reset.set_firmware_state`)."""
        _ = self.fd  # refuse use after close() before anything else
        if self._closing:
            raise HypervisorError("KVM VM: used after close() (the close waits for the vCPU "
                                  "run it was called from to end)")
        if index in self._vcpus:
            raise HypervisorError(
                f"KVM VM: vCPU index {index} already exists; indices in use: {sorted(self._vcpus)}"
            )
        if not 0 <= index < self.vcpu_count:
            raise HypervisorError(
                f"KVM VM: vCPU index {index} is outside 0..{self.vcpu_count - 1} "
                f"(vcpu_count={self.vcpu_count})"
            )
        vcpu = KvmVCPU(self, self.fd, index, self.kvm.vcpu_mmap_size)
        self._vcpus[index] = vcpu
        return vcpu

    @property
    def vcpus(self) -> tuple[KvmVCPU, ...]:
        return tuple(self._vcpus[i] for i in sorted(self._vcpus))

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release vCPUs, the VM fd, guest RAM and (if owned) /dev/kvm; idempotent."""
        vcpus, self._vcpus = list(self._vcpus.values()), {}
        for vcpu in vcpus:
            vcpu.close()
        waiting = [v for v in vcpus if v.close_deferred]
        if waiting:
            # Closed from a device handler inside a run: that run still uses the vCPU (and,
            # to finish its last I/O, the guest): release the rest when it has ended.
            self._closing = True
            waiting[0].call_after_close(self.close)
            return
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        if self._own_kvm and self._kvm is not None:
            self._kvm.close()
        self._kvm = None
        if not self.memory.closed:
            try:
                self.memory.close()
            except BufferError:
                log.warning("KVM VM: guest RAM is still referenced by a view; it is unmapped "
                            "when the last view is released")

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()
