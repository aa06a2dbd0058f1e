"""Save a paused VM: every vCPU's state, the VM's, the devices' and guest memory, to one file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from vmboot.devices.state import SavesState
from vmboot.errors import HypervisorError, SnapshotError
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


@contextlib.contextmanager
def _paused(vm: KvmVM) -> Iterator[None]:
    """Hold every vCPU out of KVM_RUN while the state is read (refuse one that is running)."""
    held = []
    try:
        for vcpu in vm.vcpus:
            try:
                vcpu.begin_run(lambda: None)
            except HypervisorError as e:
                raise SnapshotError(
                    f"snapshot: {e}; stop the run first (Machine.request_stop) and save "
                    "between runs"
                ) from None
            held.append(vcpu)
        yield
    finally:
        for vcpu in held:
            vcpu.end_run()


def save_snapshot(path: str | os.PathLike[str], vm: KvmVM, devices: Mapping[str, SavesState],
                  boot: BootFacts, agent_mailbox: int | None = None) -> SaveReport:
    """Write a snapshot of ``vm`` to ``path``; refused while a vCPU of ``vm`` is running.
    ``agent_mailbox``: where the guest's agent waits for its next frames (see
    :attr:`~vmboot.snapshot.manifest.Manifest.agent_mailbox`)."""
    with _paused(vm):
        return _save(path, vm, devices, boot, agent_mailbox)


def _save(path: str | os.PathLike[str], vm: KvmVM, devices: Mapping[str, SavesState],
          boot: BootFacts, agent_mailbox: int | None) -> SaveReport:
    caps = capabilities(vm)
    msr_list = vm.kvm.msr_index_list()
    vcpus = [get_vcpu_state(v, msr_list, caps) for v in vm.vcpus]
    vm_state = get_vm_state(vm)
    device_states = {name: dev.state() for name, dev in devices.items()}
    manifest = Manifest(boot, caps, vm_state, vcpus, device_states, agent_mailbox=agent_mailbox)
    written = write_snapshot_file(path, manifest.to_plain(), vm.memory)
    return SaveReport(written, len(vcpus), len(vcpus[0].msrs) if vcpus else 0)
