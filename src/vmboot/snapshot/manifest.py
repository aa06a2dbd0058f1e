"""What a snapshot's manifest holds, as typed data: boot facts, host facts and all state.

The manifest is the JSON object after the header (:mod:`vmboot.snapshot.format`)::

    {"vmboot_version": "0.1.0",
     "boot": {BootFacts},                  what was booted: kernel, command line, RAM
     "host": {"capabilities": {...}},      the KVM capabilities the state relies on
     "vm": {VmState}, "vcpus": [{VcpuState}, ...],
     "devices": {"COM1": {...}, "rtc": {...}, "i8042": {...}}}
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from vmboot.errors import HypervisorError, SnapshotFormatError, SnapshotMismatchError
from vmboot.hv.kvm.state import VcpuState, VmState
from vmboot.version import __version__


def sha256_hex(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BootFacts:
    """What the saved guest was booted from; a restore must be given the same."""

    kernel_sha256: str
    kernel_name: str
    """For messages only (the file's name, or a description)."""
    cmdline: str
    initrd_sha256: str | None
    memory_bytes: int
    memory_map: list[list[int]] = field(default_factory=list)
    """``[guest-physical start, size]`` of each RAM region."""
    symbols: dict[str, str | None] = field(default_factory=dict)
    """Where symbols come from: ``vmlinux`` / ``system_map`` names, or the kernel itself."""

    def to_plain(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_plain(cls, data: object) -> BootFacts:
        if not isinstance(data, dict):
            raise SnapshotFormatError("snapshot manifest: 'boot' is not an object")
        try:
            facts = cls(**data)
        except TypeError as e:
            raise SnapshotFormatError(f"snapshot manifest: 'boot' does not fit ({e})") from None
        for name, kind in (("kernel_sha256", str), ("kernel_name", str), ("cmdline", str),
                           ("memory_bytes", int)):
            if not isinstance(getattr(facts, name), kind):
                raise SnapshotFormatError(f"snapshot manifest: boot.{name} is not a {kind.__name__}")
        return facts

    def check_same(self, now: BootFacts) -> None:
        """Refuse (:class:`SnapshotMismatchError`) when ``now`` is not what was saved."""
        if now.kernel_sha256 != self.kernel_sha256:
            raise SnapshotMismatchError(
                f"snapshot: kernel {now.kernel_name} (sha256 {now.kernel_sha256[:16]}...) is not "
                f"the kernel the snapshot was taken with ({self.kernel_name}, sha256 "
                f"{self.kernel_sha256[:16]}...): restore with that kernel file"
            )
        if now.cmdline != self.cmdline:
            raise SnapshotMismatchError(
                f"snapshot: command line {now.cmdline!r} differs from the saved guest's "
                f"{self.cmdline!r}; a running kernel cannot change its command line: restore "
                "with the saved one"
            )
        if now.initrd_sha256 != self.initrd_sha256:
            raise SnapshotMismatchError(
                "snapshot: the initrd differs from the one the snapshot was taken with "
                f"(sha256 {now.initrd_sha256} vs {self.initrd_sha256}): restore with that initrd"
            )
        if now.memory_bytes != self.memory_bytes:
            raise SnapshotMismatchError(
                f"snapshot: memory {now.memory_bytes} bytes differs from the saved guest's "
                f"{self.memory_bytes}: restore with memory={self.memory_bytes}"
            )


@dataclass
class Manifest:
    boot: BootFacts
    capabilities: dict[str, int]
    vm: VmState
    vcpus: list[VcpuState]
    devices: dict[str, dict[str, object]]
    vmboot_version: str = __version__
    agent_mailbox: int | None = None
    """Guest-physical address of the page where the saved guest's agent waits for its next
    frames (:data:`vmboot.agent.protocol.MAILBOX_HEAD`), when it was parked there."""

    def to_plain(self) -> dict[str, Any]:
        plain = {
            "vmboot_version": self.vmboot_version,
            "boot": self.boot.to_plain(),
            "host": {"capabilities": dict(self.capabilities)},
            "vm": self.vm.to_plain(),
            "vcpus": [v.to_plain() for v in self.vcpus],
            "devices": self.devices,
        }
        if self.agent_mailbox is not None:
            plain["agent"] = {"mailbox": self.agent_mailbox}
        return plain

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> Manifest:
        """Parse a checked file's manifest; refuse another vmboot version first."""
        version = data.get("vmboot_version")
        if version != __version__:
            raise SnapshotMismatchError(
                f"snapshot: written by vmboot {version}, this is vmboot {__version__}; saved "
                "state is only restored by the version that wrote it: take the snapshot again"
            )
        host = data.get("host")
        caps = host.get("capabilities") if isinstance(host, dict) else None
        vcpus, devices, vm = data.get("vcpus"), data.get("devices"), data.get("vm")
        if not isinstance(caps, dict) or not all(isinstance(v, int) for v in caps.values()):
            raise SnapshotFormatError("snapshot manifest: host.capabilities is not an object of ints")
        if not isinstance(vcpus, list) or not vcpus or not all(isinstance(v, dict) for v in vcpus):
            raise SnapshotFormatError("snapshot manifest: 'vcpus' is not a non-empty list of objects")
        if not isinstance(devices, dict) or not all(isinstance(v, dict) for v in devices.values()):
            raise SnapshotFormatError("snapshot manifest: 'devices' is not an object of objects")
        if not isinstance(vm, dict):
            raise SnapshotFormatError("snapshot manifest: 'vm' is not an object")
        try:
            states = [VcpuState.from_plain(v) for v in vcpus]
            vm_state = VmState.from_plain(vm)
        except HypervisorError as e:
            raise SnapshotFormatError(f"snapshot manifest: {e}") from None
        if [s.index for s in states] != list(range(len(states))):
            raise SnapshotFormatError(
                f"snapshot manifest: vCPU indices {[s.index for s in states]} are not 0..n-1"
            )
        agent = data.get("agent", {})
        mailbox = agent.get("mailbox") if isinstance(agent, dict) else None
        valid = mailbox is None or (type(mailbox) is int and mailbox >= 0)
        if not isinstance(agent, dict) or not valid:
            raise SnapshotFormatError(f"snapshot manifest: 'agent' is {agent!r}, not an object "
                                      "whose 'mailbox' is a guest-physical address")
        return cls(BootFacts.from_plain(data.get("boot")), caps, vm_state, states, devices,
                   str(version), mailbox)
