"""Save a paused VM: every vCPU's state, the VM's, the devices' and guest memory, to one file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from vmboot.devices.state import SavesState
from vmboot.hv.kvm.state import capabilities, get_vcpu_state, get_vm_state
from vmboot.hv.kvm.vm import KvmVM
from vmboot.snapshot.format import write_snapshot_file
from vmboot.snapshot.manifest import BootFacts, Manifest


@dataclass(frozen=True)
class SaveReport:
    memory_bytes_written: int
    """Guest RAM bytes stored (zero pages are holes in the file)."""
    vcpus: int
    msrs: int
    """MSRs saved per vCPU (those of KVM_GET_MSR_INDEX_LIST that the vCPU could read)."""


def save_snapshot(path: str | os.PathLike[str], vm: KvmVM, devices: Mapping[str, SavesState],
                  boot: BootFacts) -> SaveReport:
    """Write a snapshot of ``vm`` to ``path``. No vCPU of ``vm`` may be running."""
    caps = capabilities(vm)
    msr_list = vm.kvm.msr_index_list()
    vcpus = [get_vcpu_state(v, msr_list, caps) for v in vm.vcpus]
    vm_state = get_vm_state(vm)
    device_states = {name: dev.state() for name, dev in devices.items()}
    manifest = Manifest(boot, caps, vm_state, vcpus, device_states)
    written = write_snapshot_file(path, manifest.to_plain(), vm.memory)
    return SaveReport(written, len(vcpus), len(vcpus[0].msrs) if vcpus else 0)
