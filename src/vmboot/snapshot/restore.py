"""Restore a saved VM: guest memory mapped copy-on-write from the file, then KVM state.

:func:`load_manifest` opens and checks everything that can be checked without a VM
(header, checksum, version, boot facts); :func:`restore_vm` then builds the VM on the
file's memory and puts each vCPU's state back after checking this host offers what the
saved guest used. The caller restores device state (:func:`restore_devices`) and then the
VM's interrupt controllers and clock (:func:`vmboot.hv.kvm.state.set_vm_state`), so a
device's interrupt line, driven when it is reconnected, ends up as the saved irqchip says.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from vmboot.devices.state import SavesState
from vmboot.errors import DeviceStateError, SnapshotFormatError
from vmboot.hv.kvm.cpuid import CpuidPolicyName
from vmboot.hv.kvm.state import capabilities, set_vcpu_state
from vmboot.hv.kvm.vm import KvmVM
from vmboot.snapshot.format import SnapshotFile, open_snapshot
from vmboot.snapshot.host import check_capabilities, check_cpuid
from vmboot.snapshot.manifest import BootFacts, Manifest


def load_manifest(path: str | os.PathLike[str], boot: BootFacts | None = None
                  ) -> tuple[SnapshotFile, Manifest]:
    """Open ``path``, check it, and (with ``boot``) that it was taken from the same boot."""
    snap = open_snapshot(path)
    try:
        manifest = Manifest.from_plain(snap.manifest)
        if manifest.boot.memory_bytes != snap.memory_length:
            raise SnapshotFormatError(
                f"snapshot {snap.path}: the manifest says {manifest.boot.memory_bytes} bytes of "
                f"memory, the header {snap.memory_length}: damaged"
            )
        if boot is not None:
            manifest.boot.check_same(boot)
    except BaseException:
        snap.close()
        raise
    return snap, manifest


def restore_vm(snap: SnapshotFile, manifest: Manifest, cpuid_policy: CpuidPolicyName = "auto",
               shared_memory: bool = False) -> KvmVM:
    """A VM on the snapshot's memory with every vCPU's state restored (not yet run); with
    ``shared_memory`` (a device served by another process) the memory is a copy in a memfd,
    else the file mapped copy-on-write."""
    memory = snap.copy_memory_shared() if shared_memory else snap.map_memory()
    try:
        vm = KvmVM(memory.size, cpuid_policy=cpuid_policy, irqchip=bool(manifest.vm.irqchips),
                   vcpu_count=len(manifest.vcpus), memory=memory)
    except BaseException:
        memory.close()
        raise
    try:
        check_capabilities(manifest.capabilities, capabilities(vm))
        for state in manifest.vcpus:
            vcpu = vm.create_vcpu(state.index)
            check_cpuid(state.cpuid_entries(), vm.cpuid_table(state.index), state.index)
            set_vcpu_state(vcpu, state)
    except BaseException:
        vm.close()
        raise
    return vm


def restore_devices(devices: Mapping[str, SavesState], saved: Mapping[str, dict[str, object]]
                    ) -> None:
    """Give each device its saved state; every name must match both ways."""
    if set(devices) != set(saved):
        raise DeviceStateError(
            f"snapshot: saved devices {sorted(saved)} differ from this machine's "
            f"{sorted(devices)}: restore with the same devices the snapshot was taken with"
        )
    for name, device in devices.items():
        device.restore(saved[name])
