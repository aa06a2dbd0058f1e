"""Snapshot and restore of a whole machine, in the pieces :class:`~vmboot.vmm.machine.Machine`
puts together.

:func:`boot_facts` says what a machine was booted from (the identity a restore must
match); :func:`save_machine` writes the machine's VM, vCPUs and devices with
:mod:`vmboot.snapshot`; :func:`load_machine` makes a VM from a snapshot file instead of
booting (guest memory mapped copy-on-write from the file, every vCPU's state put back) and,
once the machine has wired that VM to its devices, :func:`restore_state` puts back the
devices' and the VM's own state, ready for :meth:`Machine.run` to resume the guest.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vmboot.devices.pc import ExtraDevice, PcPlatform
from vmboot.devices.state import SavesState
from vmboot.errors import BootConfigError
from vmboot.hv.memory_map import ram_regions
from vmboot.snapshot import BootFacts, SaveReport, load_manifest, restore_devices, restore_vm
from vmboot.snapshot import save_snapshot as _save

if TYPE_CHECKING:
    from vmboot.devices.virtio.setup import VirtioDevices
    from vmboot.hv.kvm.cpuid import CpuidPolicyName
    from vmboot.hv.kvm.vm import KvmVM
    from vmboot.snapshot import Manifest


class BootSource(Protocol):
    """What a machine was booted from, as :func:`boot_facts` reads it."""

    @property
    def kernel_source(self) -> object: ...
    @property
    def initrd(self) -> object: ...
    @property
    def cmdline(self) -> str: ...
    @property
    def memory_bytes(self) -> int: ...
    @property
    def vmlinux(self) -> str | Path | None: ...
    @property
    def system_map(self) -> str | Path | None: ...


RTC_NAME = "rtc"
I8042_NAME = "i8042"


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, device: int, inode: int, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, computed once per (path, inode, size, mtime) in this process."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source_sha256(source: object, what: str) -> tuple[str | None, str]:
    """(sha256, name) of a kernel or initrd given as a path or bytes (None: no file)."""
    if source is None:
        return None, "none"
    if isinstance(source, bytes | bytearray | memoryview):
        return hashlib.sha256(source).hexdigest(), f"<{what} bytes>"
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            st = path.stat()
        except OSError as e:
            raise BootConfigError(f"{what} {path}: cannot read it: {e.strerror}") from None
        return _file_sha256(str(path.resolve()), st.st_dev, st.st_ino, st.st_size,
                            st.st_mtime_ns), path.name
    data = getattr(source, "data", None)
    if isinstance(data, bytes | bytearray):
        return hashlib.sha256(data).hexdigest(), str(getattr(source, "name", f"<{what}>"))
    raise BootConfigError(f"{what}: {type(source).__name__} is not a path, bytes or a loaded kernel")


def boot_facts(machine: BootSource) -> BootFacts:
    """The identity of ``machine``'s boot: kernel and initrd hashes, command line, RAM."""
    kernel_sha, kernel_name = _source_sha256(machine.kernel_source, "kernel")
    initrd_sha, _ = _source_sha256(machine.initrd, "initrd")
    if kernel_sha is None:
        raise BootConfigError("snapshot: the machine has no kernel to identify the snapshot by")
    return BootFacts(
        kernel_sha256=kernel_sha, kernel_name=kernel_name, cmdline=machine.cmdline,
        initrd_sha256=initrd_sha, memory_bytes=machine.memory_bytes,
        memory_map=[[r.gpa, r.size] for r in ram_regions(machine.memory_bytes)],
        symbols={"vmlinux": None if machine.vmlinux is None else str(machine.vmlinux),
                 "system_map": None if machine.system_map is None else str(machine.system_map)},
    )


def platform_devices(platform: PcPlatform, extra_devices: Sequence[ExtraDevice] = ()
                     ) -> dict[str, SavesState]:
    """Every device whose state is saved, by a stable name: the UARTs by port name, the
    RTC, the i8042, and each extra device that has ``state()``/``restore()``."""
    devices: dict[str, SavesState] = dict(platform.serials)
    devices[RTC_NAME] = platform.rtc
    devices[I8042_NAME] = platform.i8042
    for extra in extra_devices:
        if isinstance(extra.device, SavesState):
            devices[extra.name] = extra.device
    return devices


SNAPSHOT_MAX_CPUS = 1
"""Snapshots hold one vCPU: the restore of application processors (their MP state, the
LAPIC timers and IPIs in flight between them) is not done, so a machine with more is
refused rather than resumed half-right."""


def check_one_vcpu(what: str, cpus: int) -> None:
    """Refuse a snapshot or restore of more than :data:`SNAPSHOT_MAX_CPUS` vCPUs."""
    if cpus > SNAPSHOT_MAX_CPUS:
        raise BootConfigError(f"{what}: cpus={cpus}, but snapshots hold at most "
                              f"{SNAPSHOT_MAX_CPUS} vCPU; use cpus=1 (--cpus 1) to snapshot "
                              f"or restore")


def check_no_virtio(what: str, virtio: VirtioDevices) -> None:
    """Refuse a snapshot or restore of a machine with virtio devices: their queues (and the
    I/O thread serving them) are not part of a snapshot."""
    if virtio:
        names = ", ".join(d["name"] for d in virtio.report()["devices"])
        raise BootConfigError(f"{what}: the machine has virtio devices ({names}), which "
                              f"snapshots do not hold; snapshot a machine without disks, "
                              f"console_device='virtio', console_ports or virtio_rng")


def save_machine(path: str | os.PathLike[str], machine: BootSource, vm: KvmVM | None,
                 devices: Mapping[str, SavesState], virtio: VirtioDevices) -> SaveReport:
    """Write the started machine's ``vm`` (not running) and ``devices`` to ``path``."""
    if vm is None:
        raise BootConfigError("Machine.snapshot: the machine is not started (or is closed)")
    check_one_vcpu("Machine.snapshot", len(vm.vcpus))
    check_no_virtio("Machine.snapshot", virtio)
    return _save(path, vm, devices, boot_facts(machine))


def load_machine(path: str | os.PathLike[str], machine: BootSource, cpus: int,
                 virtio: VirtioDevices, cpuid_policy: CpuidPolicyName
                 ) -> tuple[KvmVM, Manifest]:
    """The VM saved at ``path`` (memory and vCPUs), and the file's manifest.

    Everything in the file is checked against ``machine`` (kernel, initrd, command line,
    memory) and this host before a VM exists.
    """
    check_one_vcpu("Machine.restore", cpus)
    check_no_virtio("Machine.restore", virtio)
    snap, manifest = load_manifest(path, boot_facts(machine))
    with snap:
        check_one_vcpu(f"snapshot {path}", len(manifest.vcpus))
        vm = restore_vm(snap, manifest, cpuid_policy)
    return vm, manifest


def restore_state(vm: KvmVM, devices: Mapping[str, SavesState], manifest: Manifest) -> None:
    """Give ``devices`` and ``vm`` (wired to them) the state ``manifest`` holds."""
    from vmboot.hv.kvm.state import set_vm_state

    restore_devices(devices, manifest.devices)
    set_vm_state(vm, manifest.vm)
