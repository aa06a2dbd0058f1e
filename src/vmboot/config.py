"""``MachineConfig``: everything one machine is built from, and the vocabularies of its fields.

:class:`~vmboot.vmm.machine.Machine`, :func:`vmboot.exec` and the ``vmboot`` command line
all take their defaults and their lists of choices from here, so each is defined once::

    cfg = MachineConfig("bzImage", initrd="initramfs.cpio", memory="64M")
    with Machine.from_config(cfg, console=sys.stdout) as m:
        m.run()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from vmboot.devices.console import DEFAULT_CAPTURE_LIMIT
from vmboot.devices.serial import COM1, SerialPort
from vmboot.devices.virtio.machine_devices import CONSOLE_CHOICES, ConsoleChoice
from vmboot.devices.virtio.setup import NOTIFICATION_CHOICES, NotificationChoice
from vmboot.errors import UsageError
from vmboot.hv.kvm.cpuid import POLICY_NAMES, CpuidPolicyName
from vmboot.hv.memory_map import ram_regions
from vmboot.linux.choices import ENTRY_CHOICES, EntryChoice, cmdline_bytes
from vmboot.units import parse_size
from vmboot.x86.mptable import MAX_CPUS as MAX_CPUS

if TYPE_CHECKING:
    from vmboot.devices.pc import ExtraDevice
    from vmboot.devices.virtio.block import Disk
    from vmboot.devices.virtio.console import ConsolePort
    from vmboot.devices.virtio.device import VirtioDevice
    from vmboot.devices.virtio.share import Share
    from vmboot.devices.virtio.vsock_host import VsockConfig
    from vmboot.linux.kernel import Kernel
    from vmboot.net.config import NetConfig

KernelInput = str | Path | bytes
"""A kernel as a file path or its bytes (or, where accepted, an already loaded ``Kernel``)."""
InitrdInput = str | Path | bytes | None

DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=-1"
DEFAULT_VIRTIO_CMDLINE = "console=hvc0 reboot=k panic=-1"
"""The default command line with ``console_device="virtio"``."""
DEFAULT_CONSOLE_DEVICE: ConsoleChoice = "serial"
DEFAULT_VIRTIO_NOTIFICATIONS: NotificationChoice = "auto"
DEFAULT_MEMORY = "256M"
DEFAULT_CPUID_POLICY: CpuidPolicyName = "auto"
DEFAULT_ENTRY: EntryChoice = "auto"
CPUID_POLICIES: tuple[str, ...] = POLICY_NAMES
"""Names ``cpuid_policy`` (``--cpuid``) accepts."""
ENTRIES: tuple[str, ...] = ENTRY_CHOICES
"""Names ``entry`` (``--entry``) accepts."""
DUMP_TRIGGERS: tuple[str, ...] = ("panic", "oops", "timeout")
"""When a machine writes a vmcore (``dump_on``, ``--dump-on``; :mod:`vmboot.vmm.dumps`)."""
AgentTransport = Literal["console", "vsock"]
AGENT_TRANSPORTS: tuple[AgentTransport, ...] = ("console", "vsock")
"""How the host reaches the guest agent (``agent``): a named virtio-console port, or a vsock
connection the agent makes to the host (:mod:`vmboot.vmm.guest_agent`)."""
MIN_CPUS = 1
"""vCPUs a machine may have: MIN_CPUS..MAX_CPUS (MAX_CPUS: the processor entries the MP table
of :mod:`vmboot.x86.mptable` has room for; KVM's own limit is higher)."""


def parse_triggers(value: str | Iterable[str]) -> frozenset[str]:
    """``"panic,oops"`` or ``["panic", "oops"]`` -> the set; unknown names raise UsageError."""
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in DUMP_TRIGGERS]
    if unknown:
        raise UsageError(f"dump_on: {', '.join(map(repr, unknown))} is not a trigger; valid: "
                         f"{', '.join(DUMP_TRIGGERS)} (comma-separated)")
    return frozenset(names)


@dataclass(frozen=True)
class MachineConfig:
    """What a machine is: its kernel and initrd, RAM, vCPUs, CPUID, entry, devices, time limit.

    Validated when made (every field, before anything is built); ``memory`` may be given as
    a size string (``"64M"``) and is kept in bytes.
    """

    kernel: KernelInput | Kernel
    initrd: InitrdInput = None
    cmdline: str = DEFAULT_CMDLINE
    memory: int | str = DEFAULT_MEMORY
    cpus: int = MIN_CPUS
    cpuid_policy: CpuidPolicyName = DEFAULT_CPUID_POLICY
    entry: EntryChoice = DEFAULT_ENTRY
    serial_ports: tuple[SerialPort, ...] = (COM1,)
    """The 16550A UARTs; the first is the console."""
    extra_devices: tuple[ExtraDevice, ...] = ()
    capture_limit: int = DEFAULT_CAPTURE_LIMIT
    """Console bytes kept in memory (the rest are counted)."""
    timeout: float | None = None
    """Seconds a run may last when :meth:`Machine.run` is given none (None: no limit)."""
    vmlinux: str | Path | None = None
    """Symbols for stack traces (default: the kernel's own)."""
    system_map: str | Path | None = None
    disks: tuple[Disk, ...] = ()
    """virtio-blk disks (``vda``, ``vdb``, ...; :mod:`vmboot.devices.virtio`)."""
    console_device: ConsoleChoice = DEFAULT_CONSOLE_DEVICE
    """The console: the first UART (``serial``, ttyS0) or a virtio console (``virtio``, hvc0)."""
    console_ports: tuple[ConsolePort, ...] = ()
    """Named virtio-console ports."""
    virtio_rng: bool = False
    virtio_devices: tuple[VirtioDevice, ...] = ()
    """Any other virtio device, each on its own virtio-mmio transport."""
    virtio_notifications: NotificationChoice = DEFAULT_VIRTIO_NOTIFICATIONS
    """How queue notifications travel: auto, ioeventfd (KVM ioeventfd + irqfd) or exits."""
    dump_on: tuple[str, ...] = ()
    """Triggers that write a vmcore into ``dump_dir`` (:data:`vmboot.vmm.dumps.DUMP_TRIGGERS`);
    a comma-separated string is accepted."""
    dump_dir: str | Path | None = None
    vsock: VsockConfig | None = None
    """A virtio-vsock device (its guest CID, and optionally the hybrid UNIX socket path);
    ``Machine.vsock`` then connects to and listens for the guest."""
    shares: tuple[Share, ...] = ()
    """Host directories over virtio-fs, each served by a virtiofsd (the guest mounts one with
    ``mount -t virtiofs TAG DIR``)."""
    agent: AgentTransport | bool | None = None
    """The guest agent's channel (``vmboot-agent``), which ``Machine.exec`` talks to: one of
    :data:`AGENT_TRANSPORTS` (``True`` means ``"console"``; ``"vsock"`` needs ``vsock``), or
    None for no agent."""
    rootfs: str | Path | None = None
    """``"/"``: the host's root file system, read-only over virtio-fs, is the guest's root and
    the agent its init (no initrd; implies ``agent``; :mod:`vmboot.vmm.host_root`)."""
    net: NetConfig | None = None
    """A virtio-net device (:class:`vmboot.net.config.NetConfig`: passt or TAP)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory", parse_size(self.memory, what="memory"))
        ram_regions(self.memory_bytes)  # the range and alignment guest RAM must have
        cmdline_bytes(self.cmdline)  # UTF-8, no NUL byte
        object.__setattr__(self, "serial_ports", tuple(self.serial_ports))
        object.__setattr__(self, "extra_devices", tuple(self.extra_devices))
        if isinstance(self.cpus, bool) or not isinstance(self.cpus, int) \
                or not MIN_CPUS <= self.cpus <= MAX_CPUS:
            raise UsageError(f"cpus: {self.cpus!r} is not a whole number in {MIN_CPUS}..{MAX_CPUS}; "
                             f"give between {MIN_CPUS} and {MAX_CPUS} vCPUs")
        if self.cpuid_policy not in CPUID_POLICIES:
            raise UsageError(f"cpuid_policy: {self.cpuid_policy!r} is not one of "
                             f"{', '.join(CPUID_POLICIES)}")
        if self.entry not in ENTRIES:
            raise UsageError(f"entry: {self.entry!r} is not one of {', '.join(ENTRIES)}")
        if not self.serial_ports:
            raise UsageError("serial_ports: empty; the first port is the console, give at least "
                             f"{COM1.name}")
        if isinstance(self.capture_limit, bool) or not isinstance(self.capture_limit, int) \
                or self.capture_limit < 0:
            raise UsageError(f"capture_limit: {self.capture_limit!r} is not a byte count >= 0")
        for name in ("disks", "console_ports", "virtio_devices", "shares"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.shares:
            from vmboot.devices.virtio.share import check_shares

            check_shares(self.shares)
        if self.vsock is not None:
            self.vsock.validate()
        if isinstance(self.agent, bool):
            object.__setattr__(self, "agent", "console" if self.agent else None)
        if self.agent is not None and self.agent not in AGENT_TRANSPORTS:
            raise UsageError(f"agent: {self.agent!r} is not one of {', '.join(AGENT_TRANSPORTS)} "
                             "(or True for console, None for no agent)")
        if self.agent == "vsock" and self.vsock is None:
            raise UsageError("agent='vsock': the machine has no vsock device; give "
                             "vsock=VsockConfig() as well (or agent='console')")
        if self.rootfs is not None:
            from vmboot.devices.virtio.share import check_shares
            from vmboot.vmm.host_root import host_root_share

            check_shares((*self.shares, host_root_share(self.rootfs, self.initrd)))
        if self.console_device not in CONSOLE_CHOICES:
            raise UsageError(f"console_device: {self.console_device!r} is not one of "
                             f"{', '.join(CONSOLE_CHOICES)}")
        if self.virtio_notifications not in NOTIFICATION_CHOICES:
            raise UsageError(f"virtio_notifications: {self.virtio_notifications!r} is not one "
                             f"of {', '.join(NOTIFICATION_CHOICES)}")
        triggers: str | Sequence[str] = self.dump_on
        object.__setattr__(self, "dump_on", tuple(sorted(parse_triggers(triggers))))
        if self.dump_on and self.dump_dir is None:
            raise UsageError(f"dump_on={','.join(self.dump_on)} needs dump_dir (--dump-dir DIR): "
                             f"the directory the vmcores are written into")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"timeout: {self.timeout!r} is not a positive number of seconds "
                             "(or None for no limit)")

    @property
    def agent_transport(self) -> AgentTransport | None:
        """``agent`` as it is always kept (a transport or None; this only narrows its type)."""
        assert not isinstance(self.agent, bool)
        return self.agent

    @property
    def memory_bytes(self) -> int:
        """``memory`` in bytes (it is always kept so; this property only narrows its type)."""
        assert isinstance(self.memory, int)
        return self.memory
