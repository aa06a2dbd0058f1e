"""Snapshot and restore of a whole machine, in the pieces :class:`~vmboot.vmm.machine.Machine`
puts together.

:func:`boot_facts` says what a machine was booted from (the identity a restore must
match); :func:`save_machine` writes the machine's VM, vCPUs and devices with
:mod:`vmboot.snapshot`; :func:`load_machine` makes a VM from a snapshot file instead of
booting (guest memory mapped copy-on-write from the file, every vCPU's state put back) and,
once the machine has wired that VM to its devices, :func:`restore_state` puts back the
devices' and the VM's own state, ready for :meth:`Machine.run` to resume the guest.

Every virtio device is saved with its transport. A network device keeps its MAC and
backend kind, and the restored machine's own backend is attached (the same TAP interface,
or a fresh passt): the guest keeps its address, its open TCP connections are gone. A share
(virtio-fs) is saved only while the guest has not used it (each vring base virtiofsd
reports is 0; :meth:`~vmboot.devices.virtio.fs.FsDevice.state` refuses otherwise), and a
restore starts a fresh virtiofsd on RAM copied into a memfd it can map.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vmboot.devices.pc import ExtraDevice, PcPlatform
from vmboot.devices.state import SavesState
from vmboot.errors import BootConfigError, SnapshotMismatchError
from vmboot.file_digest import file_sha256
from vmboot.hv.kvm.host import host_is_emulating
from vmboot.hv.memory_map import ram_regions
from vmboot.snapshot import BootFacts, load_manifest, restore_devices, restore_vm

if TYPE_CHECKING:
    from vmboot.devices.virtio.setup import VirtioDevices
    from vmboot.hv.kvm.cpuid import CpuidPolicyName
    from vmboot.hv.kvm.vm import KvmVM
    from vmboot.snapshot import Manifest, SaveReport


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


log = logging.getLogger("vmboot.vmm")

RTC_NAME = "rtc"
I8042_NAME = "i8042"


def _source_sha256(source: object, what: str) -> tuple[str | None, str]:
    """(sha256, name) of a kernel or initrd given as a path or bytes (None: no file)."""
    if source is None:
        return None, "none"
    if isinstance(source, bytes | bytearray | memoryview):
        return hashlib.sha256(source).hexdigest(), f"<{what} bytes>"
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            return file_sha256(path), path.name
        except OSError as e:
            raise BootConfigError(f"{what} {path}: cannot read it: {e.strerror}") from None
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
    RTC, the i8042, and each extra device that has ``state()``/``restore()`` (the virtio
    devices are added by :func:`machine_devices`)."""
    devices: dict[str, SavesState] = dict(platform.serials)
    devices[RTC_NAME] = platform.rtc
    devices[I8042_NAME] = platform.i8042
    for extra in extra_devices:
        if isinstance(extra.device, SavesState):
            devices[extra.name] = extra.device
    return devices


def machine_devices(platform: PcPlatform, extra_devices: Sequence[ExtraDevice],
                    virtio: VirtioDevices) -> dict[str, SavesState]:
    """:func:`platform_devices` and each virtio transport (with its device) by its name."""
    devices = platform_devices(platform, extra_devices)
    for t in virtio.transports:
        devices[t.name] = t
    return devices


SNAPSHOT_CLOCKSOURCE = "clocksource=jiffies"
"""The kernel parameter a guest to be snapshotted needs on a host that emulates guest ring 0
(PVM): there the guest reads the host's TSC, which no restore can rewind, so a TSC-based
clock jumps by the snapshot's age on restore and the kernel then walks its timer wheel one
jiffy at a time through the gap, in emulated ring 0 (measured: seconds of catch-up per
minute of age). With jiffies as the clocksource the guest's time continues from the
snapshot; its wall clock is then set by the agent (:meth:`Machine.restore`)."""


def expected_devices(platform: PcPlatform, extra_devices: Sequence[ExtraDevice],
                     virtio: VirtioDevices) -> list[str]:
    """The names :func:`machine_devices` gives once the machine is built (before it is)."""
    names = [*platform.serials, RTC_NAME, I8042_NAME]
    extras = [e.name for e in extra_devices if isinstance(e.device, SavesState)]
    return [*names, *extras, *virtio.names]


def check_same_devices(path: str | os.PathLike[str], saved: Sequence[str],
                       machine: Sequence[str]) -> None:
    """Refuse when the snapshot's devices are not this machine's, naming the difference."""
    missing = [n for n in saved if n not in machine]
    extra = [n for n in machine if n not in saved]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"saved with {', '.join(missing)}, which this machine does not have")
        if extra:
            parts.append(f"this machine has {', '.join(extra)}, which the snapshot does not")
        raise SnapshotMismatchError(
            f"snapshot {path}: the devices differ: {'; '.join(parts)}; make the machine with "
            "the devices (disks, console ports, RNG, vsock) the snapshot was taken with"
        )


def check_same_cpus(path: str | os.PathLike[str], saved: int, machine: int) -> None:
    if saved != machine:
        raise SnapshotMismatchError(f"snapshot {path}: saved with {saved} vCPUs, this machine "
                                    f"has cpus={machine}; restore with cpus={saved} "
                                    f"(--cpus {saved})")


def save_machine(path: str | os.PathLike[str], machine: BootSource, vm: KvmVM | None,
                 devices: Mapping[str, SavesState], virtio: VirtioDevices,
                 agent_mailbox: int | None = None) -> SaveReport:
    """Write the started machine's ``vm`` (not running) and ``devices`` to ``path``, and
    where its agent waits (``agent_mailbox``, when it was parked)."""
    from vmboot.snapshot import save_snapshot as _save

    if vm is None:
        raise BootConfigError("Machine.snapshot: the machine is not started (or is closed)")
    if host_is_emulating() and SNAPSHOT_CLOCKSOURCE not in machine.cmdline.split():
        log.warning("Machine.snapshot: this host emulates guest ring 0 (PVM) and the guest's "
                    "command line lacks %s: each restore will first catch up the time since "
                    "the snapshot, slower the older the snapshot is", SNAPSHOT_CLOCKSOURCE)
    virtio.quiesce()  # what the driver made available is served before saving
    return _save(path, vm, devices, boot_facts(machine), agent_mailbox)


def load_machine(path: str | os.PathLike[str], machine: BootSource, cpus: int,
                 virtio: VirtioDevices, cpuid_policy: CpuidPolicyName,
                 expected: Sequence[str]) -> tuple[KvmVM, Manifest]:
    """The VM saved at ``path`` (memory and vCPUs), and the file's manifest.

    Everything in the file is checked against ``machine`` (kernel, initrd, command line,
    memory), its ``cpus``, the names of its devices (``expected``, from
    :func:`expected_devices`) and this host before a VM exists.
    """
    snap, manifest = load_manifest(path, boot_facts(machine))
    with snap:
        check_same_cpus(path, len(manifest.vcpus), cpus)
        check_same_devices(path, list(manifest.devices), expected)
        vm = restore_vm(snap, manifest, cpuid_policy, virtio.needs_shared_memory)
    return vm, manifest


def restore_state(vm: KvmVM, devices: Mapping[str, SavesState], manifest: Manifest,
                  virtio: VirtioDevices) -> None:
    """Give ``devices`` and ``vm`` (wired to them) the state ``manifest`` holds."""
    from vmboot.hv.kvm.state import set_vm_state

    with contextlib.ExitStack() as held:
        # No virtio interrupt may reach the interrupt controllers before their saved state
        # is back: the transports are held until then, and what they owe is sent after.
        for t in virtio.transports:
            held.enter_context(t.lock)
        restore_devices(devices, manifest.devices)
        set_vm_state(vm, manifest.vm)
        for t in virtio.transports:
            t.resume()
