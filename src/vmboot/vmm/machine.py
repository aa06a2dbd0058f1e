"""``Machine``: a KVM guest with a PC's legacy devices and a Linux kernel loaded, ready to run.

::

    with Machine("bzImage", initrd="initramfs.cpio", memory="64M", console=sys.stdout) as m:
        result = m.run(timeout=120)
    print(result.exit.one_line(), result.timings.first_console_byte)

Entering the context creates the VM (guest RAM, the in-kernel interrupt controllers and
PIT), the vCPUs with their CPUID (``cpus`` of them, announced to the guest by an MP
table), the devices of :class:`~vmboot.devices.pc.PcPlatform` plus ``extra_devices``,
loads the kernel and initrd through :mod:`vmboot.linux` and programs vCPU 0 (the
bootstrap processor) for the 64-bit entry; the others wait for the kernel's INIT/STARTUP
IPIs. :meth:`Machine.run` runs every vCPU, one host thread each (:mod:`vmboot.vmm.vcpus`),
until the guest resets, powers off, fails, or the time limit passes.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Self, TypeVar

from vmboot.config import (
    DEFAULT_CMDLINE,
    DEFAULT_CONSOLE_DEVICE,
    DEFAULT_CPUID_POLICY,
    DEFAULT_ENTRY,
    DEFAULT_MEMORY,
    DEFAULT_VIRTIO_CMDLINE,
    DEFAULT_VIRTIO_NOTIFICATIONS,
    MIN_CPUS,
    AgentTransport,
    InitrdInput,
    KernelInput,
    MachineConfig,
)
from vmboot.devices.bus import MmioBus, PortBus
from vmboot.devices.console import DEFAULT_CAPTURE_LIMIT, ConsoleOutput, ConsoleSink, stream_sink
from vmboot.devices.pc import ExtraDevice, PcPlatform
from vmboot.devices.virtio.machine_devices import VirtioChoices, build_virtio
from vmboot.errors import BootConfigError, DebugError, UsageError, VmbootError
from vmboot.vmm.dumps import DEMAND, OOPS_END, OOPS_MARKERS, DumpPolicy
from vmboot.vmm.exits import ExitReason, VmExit
from vmboot.vmm.paused_call import call_paused
from vmboot.vmm.wiring import connect_devices

log = logging.getLogger("vmboot.vmm")

GDB_STOP_DETAIL = "stopped for the debugger"

if TYPE_CHECKING:
    from vmboot.agent.client import AgentClient, CommandResult, OutputSink, StdinSource
    from vmboot.debug.cpus import CpuTrace
    from vmboot.debug.hang import HangReport
    from vmboot.debug.symbol_sources import SymbolSource
    from vmboot.debug.symtab import SymbolTable
    from vmboot.debug.tasks import GuestTask
    from vmboot.debug.text_patch import KernelText
    from vmboot.debug.vmcore import VmcoreResult
    from vmboot.devices.virtio.block import Disk
    from vmboot.devices.virtio.console import ConsolePort
    from vmboot.devices.virtio.device import VirtioDevice
    from vmboot.devices.virtio.machine_devices import ConsoleChoice
    from vmboot.devices.virtio.setup import NotificationChoice
    from vmboot.devices.virtio.share import Share
    from vmboot.devices.virtio.vsock import VsockDevice
    from vmboot.devices.virtio.vsock_host import VsockConfig
    from vmboot.gdbstub.address import ListenAddress
    from vmboot.gdbstub.server import GdbServer
    from vmboot.hv.kvm import KvmVCPU, KvmVM
    from vmboot.linux import EntryPlan, Kernel
    from vmboot.linux.options import EntryChoice
    from vmboot.net.config import NetConfig
    from vmboot.report import Reading, Verdict
    from vmboot.snapshot import SaveReport
    from vmboot.vmm.gdb_control import GdbControl
    from vmboot.vmm.guest_agent import AgentLink, GuestAgent
    from vmboot.vmm.runner import Runner
    from vmboot.vmm.vcpus import VcpuSet

OnTimeout = Literal["trace"] | Callable[["Machine", VmExit], object] | None
ConsoleTarget = ConsoleSink | IO[bytes] | IO[str] | None


@dataclass(frozen=True)
class BootTimings:
    """Wall-clock seconds since the machine started being built (``Machine.__enter__``).

    ``first_instruction`` is approximate: taken just before the first KVM_RUN.
    ``first_console_byte`` is None if the guest printed nothing.
    """

    load: float
    first_instruction: float
    first_console_byte: float | None
    exit: float

    def as_dict(self) -> dict[str, float | None]:
        return {
            "load": self.load,
            "first_instruction": self.first_instruction,
            "first_console_byte": self.first_console_byte,
            "exit": self.exit,
        }


@dataclass
class RunResult:
    """How a run ended, what the guest printed, and when each phase was reached."""

    exit: VmExit
    console: bytes
    timings: BootTimings
    console_dropped: int = 0
    """Console bytes beyond the capture limit (counted, not kept)."""
    console_total: int = 0
    """Every console byte the guest wrote, kept or not."""
    stack_trace: object | None = None
    """With ``on_timeout="trace"`` / ``on_panic="trace"``: the frames
    :func:`vmboot.debug.capture_stack_trace` returned."""
    stack_trace_text: str | None = None
    """Every vCPU's trace rendered with its registers, as the kernel prints an oops."""
    cpu_traces: list[CpuTrace] = field(default_factory=list)
    """With a trace: one :class:`~vmboot.debug.cpus.CpuTrace` per vCPU."""
    panic_message: str | None = None
    """The guest's ``Kernel panic - not syncing: ...`` line, when it printed one."""
    oopses: list[tuple[str, str]] = field(default_factory=list)
    """With ``on_panic="trace"``: each oops the guest printed (``Oops:``/``BUG:`` line) and
    the traces of every vCPU taken at its ``---[ end trace`` line, panicking or not."""
    tasks: list[GuestTask] = field(default_factory=list)
    """With ``trace_tasks=True``: the guest's tasks when the trace was taken."""
    hang: HangReport | None = None
    """With ``on_timeout="trace"``: whether the guest was idle, locked up or running."""
    notes: list[str] = field(default_factory=list)
    cpus: int = 1
    """vCPUs the machine ran."""
    cpuid_hidden: list[str] = field(default_factory=list)
    """Host CPU features the CPUID policy left out of the table given to KVM (see
    vmboot.hv.kvm.cpuid; PVM answers ring-0 leaves 1 and 7 from the host CPU regardless)."""
    vmcores: list[Path] = field(default_factory=list)
    """The vmcores written during the run (``dump_on`` triggers and requests), in order."""
    virtio: dict[str, Any] | None = None
    """The virtio devices, their addresses and IRQs, the notification path, request counts."""
    reading: Reading | None = None
    """The kernel reports on the console and the run's verdict (:mod:`vmboot.report`)."""

    def read_console(self) -> Reading:
        """:attr:`reading`, made from the console and the exit reason when not set yet."""
        if self.reading is None:
            from vmboot.report import read_console

            self.reading = read_console(self.console, self.exit.reason)
        return self.reading

    @property
    def verdict(self) -> Verdict:
        """One word for how the run went: ``ok``, ``panic``, ``oops``, ``warning``, ... ."""
        return self.read_console().verdict

    @property
    def clean(self) -> bool:
        """True when the guest reset or powered off."""
        return self.exit.clean

    @property
    def console_text(self) -> str:
        return self.console.decode("utf-8", "replace")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no console contents, only its size)."""
        return {
            "exit": self.exit.reason.value,
            "detail": self.exit.detail,
            "clean": self.clean,
            "summary": self.exit.one_line(),
            "timings": self.timings.as_dict(),
            "console_bytes": self.console_total,
            "console_dropped": self.console_dropped,
            "notes": list(self.notes),
            "vcpu": self.exit.vcpu,
            "cpus": self.cpus,
            "cpuid_hidden": list(self.cpuid_hidden),
            "cpu_traces": [t.as_dict() for t in self.cpu_traces],
            "oopses": [{"message": m, "trace": t} for m, t in self.oopses],
            "tasks": [t.as_dict() for t in self.tasks],
            "hang": self.hang.as_dict() if self.hang is not None else None,
            "vmcores": [str(p) for p in self.vmcores],
            **({"virtio": self.virtio} if self.virtio is not None else {}),
            **self.read_console().as_dict(),
        }


def _console_sink(console: ConsoleTarget) -> ConsoleSink | None:
    if console is None:
        return None
    if isinstance(console, io.IOBase) or hasattr(console, "write"):
        return stream_sink(console)  # type: ignore[arg-type]
    if callable(console):
        return console
    raise BootConfigError(
        f"console: {console!r} is neither a stream (with write) nor a callable taking bytes"
    )


class Machine:
    """A Linux guest under KVM. Use as a context manager; :meth:`run` it once or more."""

    def __init__(
        self,
        kernel: KernelInput | Kernel,
        initrd: InitrdInput = None,
        cmdline: str = DEFAULT_CMDLINE,
        memory: str | int = DEFAULT_MEMORY,
        cpuid_policy: str = DEFAULT_CPUID_POLICY,
        console: ConsoleTarget = None,
        extra_devices: Sequence[ExtraDevice] = (),
        capture_limit: int = DEFAULT_CAPTURE_LIMIT,
        on_timeout: OnTimeout = None,
        vmlinux: str | Path | None = None,
        system_map: str | Path | None = None,
        on_panic: Literal["trace"] | None = "trace",
        entry: EntryChoice = DEFAULT_ENTRY,
        cpus: int = MIN_CPUS,
        serial_outputs: Mapping[str, ConsoleOutput] | None = None,
        trace_tasks: bool = False,
        dump_on: str | Sequence[str] = (),
        dump_dir: str | Path | None = None,
        disks: Sequence[Disk] = (),
        console_device: ConsoleChoice = DEFAULT_CONSOLE_DEVICE,
        console_ports: Sequence[ConsolePort] = (),
        virtio_rng: bool = False,
        virtio_devices: Sequence[VirtioDevice] = (),
        virtio_notifications: NotificationChoice = DEFAULT_VIRTIO_NOTIFICATIONS,
        vsock: VsockConfig | None = None,
        shares: Sequence[Share] = (),
        agent: AgentTransport | bool | None = None,
        rootfs: str | Path | None = None,
        net: NetConfig | None = None,
    ) -> None:
        """A machine from keywords (they make its :class:`~vmboot.config.MachineConfig`;
        ``trace_tasks`` is as for :meth:`from_config`)."""
        config = MachineConfig(
            kernel, initrd=initrd, cmdline=cmdline, memory=memory, cpus=cpus,
            cpuid_policy=cpuid_policy,  # type: ignore[arg-type]  # validated by MachineConfig
            entry=entry, extra_devices=tuple(extra_devices), capture_limit=capture_limit,
            vmlinux=vmlinux, system_map=system_map,
            dump_on=dump_on,  # type: ignore[arg-type]  # normalised by MachineConfig
            dump_dir=dump_dir, disks=tuple(disks), console_device=console_device,
            console_ports=tuple(console_ports), virtio_rng=virtio_rng,
            virtio_devices=tuple(virtio_devices), virtio_notifications=virtio_notifications,
            vsock=vsock, shares=tuple(shares), agent=agent, rootfs=rootfs, net=net,
        )
        self._setup(config, console=console, on_timeout=on_timeout, on_panic=on_panic,
                    serial_outputs=serial_outputs, trace_tasks=trace_tasks)

    @classmethod
    def from_config(
        cls,
        config: MachineConfig,
        *,
        console: ConsoleTarget = None,
        on_timeout: OnTimeout = None,
        on_panic: Literal["trace"] | None = "trace",
        serial_outputs: Mapping[str, ConsoleOutput] | None = None,
        trace_tasks: bool = False,
        gdb: str | ListenAddress | None = None,
        gdb_wait: bool = False,
    ) -> Machine:
        """A machine built from ``config``; the keywords say where its output goes and what
        happens on a panic or a timeout. ``serial_outputs`` maps a serial port's name
        (``config.serial_ports``) other than the console's to where its output goes.
        ``trace_tasks``: a trace (``on_panic``/``on_timeout="trace"``) also lists the guest's
        tasks (:attr:`RunResult.tasks`). ``gdb``: serve the GDB remote protocol there
        (``HOST:PORT`` or ``unix:PATH``; :attr:`gdb_server`) while the guest runs;
        ``gdb_wait``: :meth:`run` starts the guest only once gdb has connected."""
        machine = cls.__new__(cls)
        machine._setup(config, console=console, on_timeout=on_timeout, on_panic=on_panic,
                       serial_outputs=serial_outputs, trace_tasks=trace_tasks, gdb=gdb,
                       gdb_wait=gdb_wait)
        return machine

    def _setup(self, config: MachineConfig, *, console: ConsoleTarget, on_timeout: OnTimeout,
               on_panic: Literal["trace"] | None,
               serial_outputs: Mapping[str, ConsoleOutput] | None, trace_tasks: bool,
               gdb: str | ListenAddress | None = None, gdb_wait: bool = False) -> None:
        if on_timeout is not None and on_timeout != "trace" and not callable(on_timeout):
            raise UsageError(
                f"on_timeout: {on_timeout!r} is not None, 'trace' or a callable(machine, exit)"
            )
        if on_panic not in ("trace", None):
            raise UsageError(f"on_panic: {on_panic!r} is not 'trace' or None")
        self.config = config
        self.memory_bytes = config.memory_bytes
        self.cpus = config.cpus
        self.kernel_source = config.kernel
        self.initrd = config.initrd
        self.cmdline = config.cmdline
        self.cpuid_policy = config.cpuid_policy
        self.extra_devices = config.extra_devices
        self.entry = config.entry
        self.vmlinux = config.vmlinux
        self.system_map = config.system_map
        self.on_timeout = on_timeout
        self.on_panic = on_panic
        self.trace_tasks = trace_tasks
        if gdb_wait and gdb is None:
            raise UsageError("gdb_wait: there is no gdb address to wait on; give gdb= as well")
        self._gdb_address: ListenAddress | None = None
        if gdb is not None:
            from vmboot.gdbstub.address import parse_listen_address

            self._gdb_address = parse_listen_address(gdb) if isinstance(gdb, str) else gdb
        self._gdb_wait = gdb_wait
        self.gdb_server: GdbServer | None = None
        """The gdb stub once the machine has started with ``gdb=`` (its ``bound`` address)."""
        self.dumps = DumpPolicy(config.dump_on, config.dump_dir)
        self._dumps_written: list[Path] = []
        self._dump_notes: list[str] = []
        self.console = ConsoleOutput(_console_sink(console), config.capture_limit)
        self._panic = _PanicWatch(self)
        self.console.line_watcher = self._panic
        if self.dumps.wants("oops"):
            self._panic.on_oops = lambda: self.request_dump("oops")
        self._symbols: SymbolTable | None = None
        self._symbols_failed = False
        self._slide: int | None = None
        self._paused_work: deque[Callable[[], object]] = deque()
        """Work for :meth:`when_stopped` (a deque: appended from signal handlers and other
        threads, taken by run()'s thread, without a lock a signal handler could wait on)."""
        self._run_lock = threading.RLock()
        """Held while vCPUs run: :meth:`traces`/:meth:`tasks` from another thread see a run."""
        self.symbols_problem: str | None = None
        """Why :meth:`symbolize` has no symbols (set when loading them failed)."""
        self.platform = PcPlatform(self.console, serial_ports=config.serial_ports,
                                   serial_outputs=serial_outputs)
        virtio_devices: tuple[VirtioDevice, ...] = config.virtio_devices
        console_ports: tuple[ConsolePort, ...] = config.console_ports
        shares: tuple[Share, ...] = config.shares
        self.vsock: VsockDevice | None = None
        """The virtio-vsock device (``connect(port)``, ``listen(port)``) when ``vsock`` is given."""
        if config.vsock is not None:
            from vmboot.devices.virtio.vsock import VsockDevice

            self.vsock = VsockDevice(config.vsock)
            virtio_devices = (*virtio_devices, self.vsock)
        self._agent_link: AgentLink | None = None
        self._guest_agent: GuestAgent[RunResult] | None = None
        self._parked_mailbox: int | None = None
        """The restored agent's mailbox, released when the guest first runs again."""
        if config.rootfs is not None:
            from vmboot.vmm.host_root import host_root_cmdline, host_root_share

            shares = (*shares, host_root_share(config.rootfs, config.initrd))
            self.cmdline = f"{self.cmdline} {host_root_cmdline()}"
        if config.agent is not None or config.rootfs is not None:
            from vmboot.vmm.guest_agent import agent_link

            self._agent_link = agent_link(config.agent_transport or "console", self.vsock)
            console_ports = (*console_ports, *self._agent_link.console_ports)
            if self._agent_link.cmdline():
                self.cmdline = f"{self.cmdline} {self._agent_link.cmdline()}"
        if config.net is not None:
            from vmboot.vmm.network import build_net_device

            virtio_devices = (*virtio_devices, build_net_device(config.net))
        self.virtio = build_virtio(VirtioChoices(config.disks, config.console_device,
                                                 console_ports, config.virtio_rng,
                                                 virtio_devices, config.virtio_notifications,
                                                 shares), self.console)
        if config.console_device == "virtio" and config.cmdline == DEFAULT_CMDLINE:
            self.cmdline = DEFAULT_VIRTIO_CMDLINE
        if config.net is not None:
            from vmboot.vmm.network import net_cmdline

            self.cmdline = net_cmdline(self.cmdline, config.net)
        self.port_bus = PortBus()
        self.mmio_bus = MmioBus()
        self.vm: KvmVM | None = None
        self.vcpu: KvmVCPU | None = None
        """vCPU 0, the bootstrap processor."""
        self.vcpus: tuple[KvmVCPU, ...] = ()
        self._vcpu_set: VcpuSet | None = None
        self.cpuid_hidden: list[str] = []
        self.kernel: Kernel | None = None
        self.plan: EntryPlan | None = None
        self._runner: Runner | None = None
        self._t0 = 0.0
        self._t_load = 0.0
        self._t_first_run: float | None = None
        self._pending_stop: tuple[ExitReason, str] | None = None

    # -- set-up -------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            if self.vm is None:  # not already built by restore()
                self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Build the VM, attach the devices, load the kernel, program the vCPU."""
        from vmboot.hv.cpuid_entry import CpuidEntry
        from vmboot.hv.kvm import KvmVM
        from vmboot.hv.kvm.cpuid import hidden_features
        from vmboot.linux import BootOptions
        from vmboot.linux.configurator.cpu_reset import set_firmware_state
        from vmboot.x86.mptable import build_mp_table, place_mp_table

        self._t0 = time.monotonic()
        kernel = self.load_kernel()
        self._attach_devices()
        self.virtio.attach(self.mmio_bus)
        mp_table = build_mp_table(self.cpus)
        vm = KvmVM(self.memory_bytes, cpuid_policy=self.cpuid_policy, vcpu_count=self.cpus,
                   shared_memory=self.virtio.needs_shared_memory)
        self.vm = vm
        self.virtio.connect(vm)
        self.vcpus = tuple(vm.create_vcpu(i) for i in range(self.cpus))
        vcpu = self.vcpus[0]
        self.vcpu = vcpu
        cmdline = self.virtio.extend_cmdline(self.cmdline)
        self.plan = kernel.prepare(vm, BootOptions(cmdline=cmdline, initrd=self.initrd,
                                                   entry=self.entry))
        place_mp_table(vm, mp_table, self.plan.regions)
        self.plan.configure_vcpu(vcpu)
        for ap in self.vcpus[1:]:  # the kernel starts them with INIT/SIPI
            set_firmware_state(ap)
        self.cpuid_hidden = hidden_features(
            (CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
             for e in vm.kvm.supported_cpuid()), vcpu.cpuid)
        self._connect(vm)
        self._t_load = time.monotonic() - self._t0

    def _attach_devices(self) -> None:
        """Put the platform's and the extra devices on the buses (start() and restore)."""
        self.platform.attach(self.port_bus)
        for extra in self.extra_devices:
            extra.attach(self.port_bus, self.mmio_bus)

    def _connect(self, vm: KvmVM) -> None:
        """Give every vCPU of ``vm`` its run loop (one VcpuSet), pass on a stop asked for
        before, and connect the devices' interrupt lines and stop requests (start() and
        restore)."""
        from vmboot.vmm.runner import Runner
        from vmboot.vmm.vcpus import VcpuSet

        self.vm = vm
        self.vcpus = tuple(vm.vcpus)
        self.vcpu = self.vcpus[0]
        runners = [Runner(vm, cpu, self.port_bus, self.mmio_bus, symbolizer=self.symbolize)
                   for cpu in self.vcpus]
        self._runner = runners[0]
        self._vcpu_set = VcpuSet(runners, debugger=self._start_gdb(runners))
        if self._pending_stop is not None:
            self._vcpu_set.stop(*self._pending_stop)
            self._pending_stop = None
        devices = [*self.platform.devices(), *(e.device for e in self.extra_devices)]
        connect_devices(devices, vm.irq_line, self.request_stop)

    def _start_gdb(self, runners: Sequence[Runner]) -> GdbControl | None:
        """With ``gdb=``: the stub's side of the vCPU threads, and its server, listening."""
        if self._gdb_address is None:
            return None
        from vmboot.gdbstub.server import GdbServer
        from vmboot.hv.kvm.host import host_is_emulating
        from vmboot.vmm.gdb_control import GdbControl

        if self.gdb_server is not None:
            self.gdb_server.close()
        control = GdbControl(
            self.vcpus, request_stop=lambda cpu: runners[cpu].request_stop(GDB_STOP_DETAIL),
            kernel_offset=self._gdb_kernel_offset,
            # Hosts that emulate guest ring 0 deliver no data breakpoints (measured): say so.
            watchpoints=not host_is_emulating())
        self.gdb_server = GdbServer(control, self._gdb_address, on_kill=lambda: self.request_stop(
            ExitReason.STOPPED, "gdb killed the guest"))
        self.gdb_server.start()
        log.info("gdb stub listening on %s", self.gdb_server.bound)
        return control

    def _gdb_kernel_offset(self) -> int | None:
        try:
            return self.kaslr_slide()
        except VmbootError:
            return None

    def snapshot(self, path: str | Path) -> SaveReport:
        """Save the paused guest (call between runs) to ``path``: see :mod:`vmboot.snapshot`.

        A guest running in the background for :meth:`exec` is paused first (the next
        :meth:`exec` resumes it): snapshot right after an :meth:`exec` returns, and the
        agent in the saved guest is ready for a command. It is saved waiting in its mailbox
        (:meth:`_park_agent`; 0.2 s more), where a restore hands it its first frames."""
        from vmboot.vmm.snapshots import machine_devices, save_machine

        if self._agent_link is not None and self._agent_link.transport != "console":
            raise BootConfigError(
                f"Machine.snapshot: the guest agent talks over {self._agent_link.transport}, "
                "whose connections a restore resets; make the machine with agent='console' "
                "to snapshot it")
        mailbox = self._park_agent()
        self.stop_exec()
        self.console.flush()
        try:
            return save_machine(path, self, self.vm,
                                machine_devices(self.platform, self.extra_devices, self.virtio),
                                self.virtio, agent_mailbox=mailbox)
        finally:
            if mailbox is not None and self.vm is not None:
                from vmboot.vmm.agent_mailbox import release_mailbox

                release_mailbox(self.vm.memory, mailbox)  # this guest runs on

    def _park_agent(self) -> int | None:
        """Ask a ready agent to wait in its mailbox while the guest is saved (a restore then
        hands it its first frames there, :mod:`vmboot.vmm.agent_mailbox`); the mailbox's
        guest-physical address, or None (no agent, an agent older than mailboxes, or one
        that cannot say where its page is). The guest runs on for
        :data:`~vmboot.vmm.guest_agent.PARK_SETTLE` seconds first, so the saved one has no
        deferred kernel work left; after the save this guest's agent is let go
        (:func:`~vmboot.vmm.agent_mailbox.release_mailbox`)."""
        from vmboot.agent.client import AgentError
        from vmboot.agent.protocol import agent_parks
        from vmboot.vmm.guest_agent import PARK_SETTLE, PARK_TIMEOUT, PARK_WAIT

        agent = self._guest_agent
        client = None if agent is None or not agent.running else agent.client
        if client is None or self.vm is None or not agent_parks(client.version):
            return None
        try:
            address, err = client.park(int(PARK_WAIT * self.vm.tsc_khz() * 1000), PARK_TIMEOUT)
        except AgentError as e:
            log.info("Machine.snapshot: the agent did not park (%s); a restore sends it its "
                     "first frames over its channel", e)
            return None
        if not address:
            log.info("Machine.snapshot: the agent cannot say where its mailbox is (%s); a "
                     "restore sends it its first frames over its channel", os.strerror(err))
            return None
        time.sleep(PARK_SETTLE)
        return address

    def restore(self, path: str | Path, resume_timeout: float | None = None,
                wait_agent: bool = True) -> Self:
        """Resume the guest saved at ``path`` instead of booting (use instead of ``with``/start).

        The machine must be made with the kernel, initrd, command line, memory, vCPUs and
        devices the snapshot was taken with; :meth:`run` then continues the guest where it
        was.

        With an agent (``agent=True``), the guest starts running in the background at once
        and the agent is told it was restored: it credits random bytes from the host to the
        guest kernel's entropy pool, reseeds its CRNG and sets its wall clock to the host's
        (waiting at most ``resume_timeout`` seconds); :meth:`exec` then runs commands. So two
        guests restored from one file never share random state. Without an agent nothing
        runs in the guest to do that: it resumes with the random state and the wall clock
        of the moment it was saved (its clock is behind by the time since then).

        An agent saved in its mailbox (:meth:`snapshot`) is handed the resume message (and
        the first command) there, before the guest runs again: it takes them with no work of
        the guest kernel.

        ``wait_agent`` False: the resume message is not awaited here but sent with the first
        :meth:`exec`'s command, in one write (the agent takes them in order, so the command
        starts reseeded and with the clock set), saving a round trip to the guest; a guest
        that refuses or never answers it then fails that :meth:`exec` with
        :class:`~vmboot.agent.client.ResumeFailed`, the command killed.
        """
        from vmboot.vmm.guest_agent import RESUME_TIMEOUT, GuestAgent
        from vmboot.vmm.snapshots import (
            expected_devices,
            load_machine,
            machine_devices,
            restore_state,
        )

        try:
            if self.vm is not None:
                raise BootConfigError("Machine.restore: the machine is already started; restore "
                                      "into a new Machine instead of start()")
            self._t0 = time.monotonic()
            vm, manifest = load_machine(
                path, self, self.cpus, self.virtio, self.cpuid_policy,
                expected_devices(self.platform, self.extra_devices, self.virtio))
            # wired as start() wires it; the kernel is loaded when symbols are needed
            self._attach_devices()
            self.virtio.attach(self.mmio_bus)
            self._connect(vm)
            self.virtio.connect(vm)  # ioeventfds and irqfds registered with the new VM
            restore_state(vm, machine_devices(self.platform, self.extra_devices, self.virtio),
                          manifest, self.virtio)
            self._t_load = time.monotonic() - self._t0
            self._parked_mailbox = manifest.agent_mailbox
            if self._agent_link is not None:
                self._guest_agent = GuestAgent(self, self._agent_link)
                self._guest_agent.resume(
                    RESUME_TIMEOUT if resume_timeout is None else resume_timeout,
                    wait=wait_agent,
                    deliver_first=None if self._parked_mailbox is None else self._to_mailbox)
        except BaseException:
            self.close()
            raise
        return self

    def _to_mailbox(self, data: bytes) -> bool:
        """Write the restored agent's first frames into its mailbox (before the guest runs);
        False when they must go over the channel instead."""
        from vmboot.vmm.agent_mailbox import write_mailbox

        if self._parked_mailbox is None or self.vm is None:
            return False
        return write_mailbox(self.vm.memory, self._parked_mailbox, data)

    @property
    def loaded_at(self) -> float | None:
        """``time.monotonic()`` when :meth:`start` had the kernel, or :meth:`restore` the
        snapshot, in guest memory with the vCPUs set (None before either)."""
        return self._t0 + self._t_load if self._t_load > 0 else None

    def close(self) -> None:
        """Release the VM (idempotent)."""
        if self._guest_agent is not None:
            self._guest_agent.stop()
            self._guest_agent = None
        if self._agent_link is not None:
            self._agent_link.close()
        if self.gdb_server is not None:
            self.gdb_server.close()
            self.gdb_server = None
        self.console.flush()
        self.virtio.close()
        vm, self.vm, self.vcpu, self._runner = self.vm, None, None, None
        self.vcpus, self._vcpu_set = (), None
        if vm is not None:
            vm.close()

    # -- running ------------------------------------------------------------------------------
    @property
    def runner(self) -> Runner | None:
        """vCPU 0's run loop (None until :meth:`start`, and after :meth:`close`)."""
        return self._runner

    @property
    def vcpu_set(self) -> VcpuSet | None:
        """Every vCPU's run loop (None until :meth:`start`, and after :meth:`close`)."""
        return self._vcpu_set

    def request_stop(self, reason: ExitReason = ExitReason.STOPPED, detail: str = "") -> None:
        """End the current run with ``reason`` (devices call this; so may another thread)."""
        vcpus = self._vcpu_set
        if vcpus is None:
            self._pending_stop = (reason, detail)
            return
        vcpus.stop(reason, detail)

    def push_input(self, data: bytes) -> int:
        """Type ``data`` into the console: the UART, or hvc0 with ``console_device="virtio"``
        (safe from another thread)."""
        port = self.virtio_console_port
        if port is not None:
            pushed: int = port.push(data)
            return pushed
        return self.platform.console_serial.push_input(data)

    @property
    def virtio_console_port(self) -> ConsolePort | None:
        """Port 0 of the virtio console with ``console_device="virtio"``, else None."""
        port: ConsolePort | None = self.virtio.console_port
        return port

    def exec(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str = "",
             stdin: StdinSource = None, timeout: float | None = None,
             on_stdout: OutputSink | None = None, on_stderr: OutputSink | None = None,
             ready_timeout: float | None = None) -> CommandResult:
        """Run ``argv`` in the guest through the agent; call it any number of times.

        The first call starts the guest on a background thread and waits (at most
        ``ready_timeout`` seconds) for the agent. ``argv[0]`` is a path in the guest; ``env``
        is the command's whole environment; ``cwd`` its directory (empty: the agent's).
        ``timeout``: the command is killed after that many seconds (``timed_out`` in the
        result) and the guest stays usable. Needs ``agent`` or ``rootfs``.
        """
        from vmboot.vmm.guest_agent import READY_TIMEOUT

        if self._agent_link is None:
            raise UsageError("Machine.exec: the machine has no agent channel; make it with "
                             "Machine(..., agent=True) or agent='vsock' (and an initrd whose "
                             "init is vmboot-agent) or Machine(..., rootfs='/')")
        if self._runner is None:
            raise BootConfigError("Machine.exec: the machine is not started; use it in a with block")
        self.wait_agent(READY_TIMEOUT if ready_timeout is None else ready_timeout)
        assert self._guest_agent is not None and self._guest_agent.client is not None
        return self._guest_agent.client.run(argv, env, cwd, stdin, on_stdout, on_stderr, timeout)

    def wait_agent(self, timeout: float | None = None) -> str:
        """Start the guest on a background thread (once) and wait at most ``timeout``
        seconds for the agent's greeting (as :meth:`exec` does first); its version."""
        from vmboot.vmm.guest_agent import READY_TIMEOUT, GuestAgent

        if self._agent_link is None:
            raise UsageError("Machine.wait_agent: the machine has no agent channel; make it "
                             "with agent=True or agent='vsock', or rootfs='/'")
        if self._runner is None:
            raise BootConfigError("Machine.wait_agent: the machine is not started; use it in a "
                                  "with block")
        if self._guest_agent is None:
            self._guest_agent = GuestAgent(self, self._agent_link)
        client = self._guest_agent.start(READY_TIMEOUT if timeout is None else timeout)
        return client.version or ""

    @property
    def agent_client(self) -> AgentClient | None:
        """The client of the guest's agent, once connected (by :meth:`exec`, or a restore
        with an agent): its ``answered_at`` and ``held_command_at(vm.tsc_khz())`` say when
        a restored guest's agent answered the resume message, and held the first command."""
        agent = self._guest_agent
        return None if agent is None else agent.client

    def exec_signal(self, signo: int) -> None:
        """Send ``signo`` to the process group of the command :meth:`exec` is running (from
        another thread, or a signal handler: Ctrl-C forwarded to the guest)."""
        client = None if self._guest_agent is None else self._guest_agent.client
        if client is None or client.version is None:
            raise UsageError("Machine.exec_signal: no command is running (exec has not "
                             "started one; the guest may still be booting)")
        client.signal(signo)

    def stop_exec(self) -> RunResult | None:
        """End the background run :meth:`exec` (or a restore with an agent) started and wait
        for it: the machine is then paused, e.g. for :meth:`snapshot`, and the next
        :meth:`exec` resumes it. How the run ended (None: no background run, or its vCPU
        thread did not stop in time)."""
        if self._guest_agent is None:
            return None
        return self._guest_agent.stop()

    def run(self, timeout: float | None = None) -> RunResult:
        """Run the guest until it stops, or for at most ``timeout`` seconds
        (default: the configuration's ``timeout``)."""
        if timeout is None:
            timeout = self.config.timeout
        if self._vcpu_set is None:
            raise BootConfigError("Machine.run: the machine is not started; use it in a with block")
        if self.gdb_server is not None and self._gdb_wait:
            self.gdb_server.connected.wait()  # the guest runs no instruction before gdb is there
        if self._t_first_run is None:
            self._t_first_run = time.monotonic() - self._t0
        if self._parked_mailbox is not None and self.vm is not None:
            from vmboot.vmm.agent_mailbox import release_mailbox

            # the agent takes what was delivered there, else goes back to its channel
            release_mailbox(self.vm.memory, self._parked_mailbox)
            self._parked_mailbox = None
        self._dumps_written = []
        vm_exit = self._run_vcpus(timeout)
        self.virtio.quiesce()
        self.console.flush()
        t_exit = time.monotonic() - self._t0
        first = self.console.first_byte_at
        result = RunResult(
            exit=vm_exit,
            console=bytes(self.console.data),
            timings=BootTimings(
                load=self._t_load,
                first_instruction=self._t_first_run,
                first_console_byte=None if first is None else first - self._t0,
                exit=t_exit,
            ),
            console_dropped=self.console.dropped,
            console_total=self.console.total,
            cpus=self.cpus,
            cpuid_hidden=list(self.cpuid_hidden),
            virtio=self.virtio.report() if self.virtio else None,
        )
        result.panic_message = self._panic.message
        result.oopses = list(self._panic.oopses)
        if self._panic.message is not None and vm_exit.clean:
            # panic=-1: the kernel resets from inside panic() (emergency_restart) before its
            # end-of-panic line; the vCPU is stopped at that reset, still in the panic path.
            result.exit = VmExit(ExitReason.PANIC, f"{self._panic.message} (then "
                                 f"{vm_exit.reason.value}: {vm_exit.detail})", vm_exit.registers,
                                 vcpu=vm_exit.vcpu)
        if result.exit.reason is ExitReason.PANIC and self.on_panic == "trace":
            self._capture_trace(result, "on_panic='trace'")
        if vm_exit.reason is ExitReason.TIMEOUT and self.on_timeout is not None:
            self._handle_timeout(result)
        if result.exit.reason is ExitReason.PANIC and self.dumps.wants("panic"):
            self._write_dump("panic")
        if result.exit.reason is ExitReason.TIMEOUT and self.dumps.wants("timeout"):
            self._write_dump("timeout")
        result.vmcores = list(self._dumps_written)
        result.notes.extend(self._dump_notes)
        self._dump_notes = []
        result.reading = self._read_console(result)
        return result

    def _read_console(self, result: RunResult) -> Reading:
        """The kernel reports on the console; bare addresses named with this kernel's
        symbols, less the KASLR offset the kernel printed."""
        from vmboot.report import read_console

        slide = 0
        if result.console:  # an empty console names no offset: the line parsers stay unloaded
            from vmboot.report.lines import kernel_offset

            slide = kernel_offset(result.console_text) or 0
        return read_console(result.console, result.exit.reason,
                            symbolize=lambda address: self.symbolize(address - slide))

    def when_stopped(self, action: Callable[[], object]) -> None:
        """Call ``action`` with every vCPU stopped, then let the run go on (any thread, a
        device handler or console watcher on a vCPU thread, or a signal handler).

        During :meth:`run` every vCPU is stopped, ``action`` runs on the thread that called
        run(), and the run resumes with what is left of its time limit. Between runs it runs
        as the next run starts; before :meth:`start` (nothing to stop) at once. Oops traces
        and vmcores on request use it."""
        vcpus = self._vcpu_set
        if vcpus is None:
            action()
            return
        self._paused_work.append(action)
        vcpus.stop(ExitReason.STOPPED, PAUSE_DETAIL)

    def _run_vcpus(self, timeout: float | None) -> VmExit:
        """Run every vCPU; a stop made by :meth:`when_stopped` does its work and resumes."""
        vcpus = self._vcpu_set
        assert vcpus is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._run_lock:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                vm_exit = vcpus.run(left)
                while self._paused_work:
                    self._paused_work.popleft()()
                if not (vm_exit.reason is ExitReason.STOPPED and vm_exit.detail == PAUSE_DETAIL):
                    return vm_exit

    # -- vmcores ------------------------------------------------------------------------------
    def dump(self, path: str | Path) -> VmcoreResult:
        """Write a vmcore of the guest (RAM, every vCPU, VMCOREINFO) to ``path``.

        Call it between runs (after :meth:`run` returned); while a run is in progress use
        :meth:`request_dump`. See :mod:`vmboot.debug.vmcore`.
        """
        from vmboot.debug.vmcore import write_guest_vmcore

        if self.vm is None:
            raise BootConfigError("Machine.dump: the machine is not started (or closed); "
                                  "dump inside the with block")
        src = self._symbol_sources()
        return write_guest_vmcore(path, self.vm, self.vm.vcpus, vmlinux=src["vmlinux"],
                                  system_map=src["system_map"], kernel=src["kernel"])

    def request_dump(self, trigger: str = DEMAND) -> None:
        """Have the running guest dumped into ``dump_dir`` as soon as every vCPU has left the
        guest, then continue the run (safe from another thread and from a signal handler):
        :meth:`when_stopped` does the stopping."""
        self.when_stopped(lambda: self._write_dump(trigger))

    def _write_dump(self, trigger: str) -> None:
        """Write one vmcore into dump_dir; a failure becomes a note of the run's result."""
        try:
            path = self.dumps.next_path(trigger)
            written = self.dump(path)
        except VmbootError as e:
            self._dump_notes.append(f"vmcore ({trigger}) not written: {e}")
            return
        self._dumps_written.append(path)
        self._dump_notes.append(written.describe())
        self._dump_notes.extend(f"vmcore {path}: {n}" for n in written.notes)

    # -- symbols and traces -------------------------------------------------------------------
    def load_kernel(self) -> Kernel:
        """The kernel, loaded from ``kernel_source`` once (a restore loads it when first needed)."""
        from vmboot.linux import Kernel, load_kernel

        if self.kernel is None:
            source = self.kernel_source
            self.kernel = source if isinstance(source, Kernel) else load_kernel(source)
        return self.kernel

    def _symbol_sources(self) -> dict[str, SymbolSource | None]:
        """vmlinux / System.map if given, else the kernel itself: an ELF vmlinux's .symtab,
        or a bzImage's kallsyms. The kernel image stays the fallback for what a given file
        lacks (a debug vmlinux's ORC tables and BTF are in the image)."""
        from vmboot.linux import KernelFormat

        if self.vmlinux is not None or self.system_map is not None:
            try:
                image: bytes | None = self.load_kernel().data
            except (OSError, VmbootError):
                image = None
            return {"vmlinux": self.vmlinux, "system_map": self.system_map, "kernel": image}
        kernel_bytes = self.load_kernel().data
        if self.kernel is not None and self.kernel.format is KernelFormat.VMLINUX:
            return {"vmlinux": kernel_bytes, "system_map": None, "kernel": kernel_bytes}
        return {"vmlinux": None, "system_map": None, "kernel": kernel_bytes}

    def symbolize(self, address: int) -> str | None:
        """``function+0xoff/0xsize`` for a guest kernel address, or None (loads symbols once)."""
        symbols = self._load_symbols()
        if symbols is None:
            return None
        match = symbols.lookup(address - self.kaslr_slide())
        if not match.known:
            return None
        return f"{match.name}+{match.offset:#x}/{match.size:#x}"

    def _load_symbols(self) -> SymbolTable | None:
        """The kernel's symbols at link-time addresses (loaded once; None if unavailable)."""
        from vmboot import debug

        if self._symbols is None and not self._symbols_failed:
            try:
                self._symbols = debug.load_symbols(**self._symbol_sources())
            except DebugError as e:
                self._symbols_failed = True
                self.symbols_problem = str(e)
        return self._symbols

    def kaslr_slide(self) -> int:
        """How far KASLR moved the running kernel (0 without KASLR, or before the kernel has
        its own page tables). Detected from vCPU 0's page tables once the kernel maps itself,
        then kept for the rest of the boot."""
        if self._slide is not None:
            return self._slide
        from vmboot.debug.kaslr import kaslr_slide
        from vmboot.debug.page_walk import GuestAddressSpace
        from vmboot.hv.registers import Register

        if self.vcpu is None:  # nothing to detect it from (and no kernel to load yet)
            return 0
        symbols = self._load_symbols()
        if symbols is None:
            return 0
        try:
            regs = self.vcpu.get_registers((Register.CR0, Register.CR3, Register.CR4))
            space = GuestAddressSpace(self.vcpu.vm, regs[Register.CR3], regs[Register.CR4],
                                      regs[Register.CR0])
            self._slide = kaslr_slide(symbols, space)
        except VmbootError:
            return 0
        return self._slide

    def kernel_text(self) -> KernelText:
        """The running kernel's memory by symbol (KASLR applied), to read and patch from the
        host between runs (:mod:`vmboot.debug.text_patch`)."""
        from vmboot.debug.kernel_symbols import load_symbol_addresses
        from vmboot.debug.page_walk import GuestAddressSpace
        from vmboot.debug.text_patch import KernelText

        self._require_stopped("kernel_text")
        functions = self._load_symbols()
        if functions is None or self.vcpu is None:
            raise DebugError(f"Machine.kernel_text: no kernel symbols: {self.symbols_problem}")
        return KernelText(GuestAddressSpace.from_vcpu(self.vcpu),
                          load_symbol_addresses(**self._symbol_sources()), functions,
                          self.kaslr_slide())

    def _all_vcpus(self) -> list[KvmVCPU]:
        """The vCPUs to trace, in CPU order."""
        return list(self.vcpus)

    def traces(self, max_frames: int = 16) -> list[CpuTrace]:
        """A symbolised kernel stack trace of every vCPU: between runs, or while :meth:`run`
        is in progress in another thread (every vCPU pauses for it: :meth:`when_stopped`).
        """
        return self._paused("traces", lambda: self._traces_now(max_frames))

    def _traces_now(self, max_frames: int = 16) -> list[CpuTrace]:
        """:meth:`traces` from the run-loop thread itself (e.g. a console watcher)."""
        from vmboot.debug.cpus import trace_cpus

        src = self._symbol_sources()
        return trace_cpus(self._all_vcpus(), vmlinux=src["vmlinux"], system_map=src["system_map"],
                          kernel=src["kernel"], slide=self.kaslr_slide(), max_frames=max_frames)

    def tasks(self, max_frames: int = 16) -> list[GuestTask]:
        """Every task of the guest kernel, walked from ``init_task``, with its kernel stack.

        Structure layouts come from the kernel's BTF (in the vmlinux, else the image), else
        from the DWARF of a debug ``vmlinux``. As :meth:`traces`, also while :meth:`run` is in
        progress in another thread.
        """
        from vmboot.debug.tasks import list_tasks

        def walk() -> list[GuestTask]:
            src = self._symbol_sources()
            return list_tasks(self._all_vcpus(), vmlinux=src["vmlinux"], kernel=src["kernel"],
                              system_map=src["system_map"], slide=self.kaslr_slide(),
                              max_frames=max_frames)

        return self._paused("tasks", walk)

    def hang_report(self, samples: int = 4, interval: float = 0.5) -> HangReport:
        """Run the guest ``samples - 1`` more times for ``interval`` seconds, tracing every
        vCPU after each, and judge whether it is idle, locked up or running (see
        :mod:`vmboot.debug.hang`); tasks blocked throughout are listed. Between runs only."""
        from vmboot.debug.hang import SAMPLE_FRAMES, classify
        from vmboot.debug.tasks import still_blocked

        self._require_stopped("hang_report")
        if samples < 1 or interval <= 0:
            raise UsageError(f"hang_report: samples={samples} must be >= 1 and interval="
                             f"{interval} > 0 s")
        console_before = self.console.total
        try:
            tasks_before = self.tasks()
        except DebugError:
            tasks_before = []
        rounds = [self.traces(SAMPLE_FRAMES)]
        for _ in range(samples - 1):
            if self._run_vcpus(interval).reason is not ExitReason.TIMEOUT:
                break
            rounds.append(self.traces(SAMPLE_FRAMES))
        self.console.flush()
        blocked = []
        if tasks_before:
            try:
                blocked = still_blocked(tasks_before, self.tasks())
            except DebugError:
                blocked = []
        return classify(rounds, self.console.total == console_before, blocked)

    def _paused(self, what: str, action: Callable[[], _T]) -> _T:
        """``action()`` with no vCPU running: at once between runs, else paused for it."""
        vcpus = self._vcpu_set
        if self.vcpu is None or vcpus is None:
            raise UsageError(f"Machine.{what}: the machine is not started or already closed")
        me = threading.get_ident()
        on_vcpu = any(r.thread_id == me for r in vcpus.runners)
        if self._run_lock.acquire(blocking=False):  # no run, or this is the run's thread
            try:
                if not vcpus.running:
                    return action()
                on_vcpu = True
            finally:
                self._run_lock.release()
        if on_vcpu:  # the vCPUs cannot pause while this thread waits for them
            raise UsageError(f"Machine.{what}: called on a vCPU's thread while the guest runs "
                             f"(a device handler or console watcher); use "
                             f"Machine.when_stopped(action) there instead")
        return call_paused(self.when_stopped, self._run_lock, action)

    def _require_stopped(self, what: str) -> None:
        vcpus = self._vcpu_set
        if self.vcpu is None or vcpus is None:
            raise UsageError(f"Machine.{what}: the machine is not started or already closed")
        if vcpus.running:
            raise UsageError(f"Machine.{what}: run() is in progress in another thread; call it "
                             f"after run() returns (e.g. run(timeout=...) in steps)")

    def locate(self, address: int) -> str | None:
        """What the boot layout put at a guest-physical ``address`` (for code without symbols).

        The kernel's load area is named for the code that runs there at a low, identity-mapped
        address: a bzImage's decompressor, or a vmlinux's entry code before it switches to the
        kernel's own (virtual) addresses. Other boot regions go by their names.
        """
        plan = self.plan
        if plan is None:
            return None
        for region in plan.regions:
            if region.start <= address < region.end:
                if not region.name.startswith("kernel"):
                    return region.name
                return ("bzImage decompressor" if plan.entry_mode == "bzimage64"
                        else "kernel entry code (physical addresses)")
        return None

    def _capture_trace(self, result: RunResult, why: str) -> None:
        from vmboot.debug.cpus import render_cpu_traces

        if not self.vcpus:
            result.notes.append(f"{why}: no stack trace: the machine is closed")
            return
        vcpu = self.vcpus[result.exit.vcpu if result.exit.vcpu < len(self.vcpus) else 0]
        try:
            traces = self.traces()
        except DebugError as e:  # the run's result stays usable; say why there is no trace
            result.notes.append(f"{why}: no stack trace: {e}")
            return
        result.cpu_traces = traces
        named = next((t for t in traces if t.cpu == vcpu.index), traces[0])
        if named.error is not None:
            result.notes.append(f"{why}: no stack trace: {named.error}")
        else:
            result.stack_trace = named.frames
        if len(traces) == 1 and named.error is None and not named.user_mode:
            from vmboot.debug.frames import format_trace

            result.stack_trace_text = format_trace(named.frames, named.registers)
        else:
            result.stack_trace_text = render_cpu_traces(traces)
        if self.trace_tasks:
            try:
                result.tasks = self.tasks()
            except DebugError as e:
                result.notes.append(f"{why}: no task list: {e}")

    def _handle_timeout(self, result: RunResult) -> None:
        """The hook for a run that timed out: a stack trace, or the user's callable."""
        if callable(self.on_timeout):
            self.on_timeout(self, result.exit)
            return
        self._capture_trace(result, "on_timeout='trace'")
        try:
            result.hang = self.hang_report()
        except DebugError as e:
            result.notes.append(f"on_timeout='trace': no hang verdict: {e}")

    def _oops_traces(self) -> str:
        """Every vCPU's trace now, rendered (called at an oops's last console line)."""
        from vmboot.debug.cpus import render_cpu_traces

        if self.vcpu is None or self.on_panic != "trace":
            return ""
        try:
            return render_cpu_traces(self._traces_now())
        except DebugError as e:
            return f"no stack trace: {e}\n"


_T = TypeVar("_T")
PAUSE_DETAIL = "paused: every vCPU stopped for Machine.when_stopped"
"""The detail of the stop that lets :meth:`Machine.when_stopped` work run between two runs."""
PANIC_START = b"Kernel panic - not syncing"
PANIC_END = b"---[ end Kernel panic"


class _PanicWatch:
    """Spots a kernel panic on the console and ends the run at its last line; traces oopses.

    The run is stopped while the guest prints ``---[ end Kernel panic ...``, i.e. still
    inside ``panic()``, so a stack trace taken then shows the panic path, and a guest
    booted with ``panic=-1`` has not rebooted yet. An oops (``Oops:``, ``BUG:``) is traced
    at its ``---[ end trace`` line, still inside ``oops_end()``, whether or not a panic
    follows (``panic_on_oops``); the guest then goes on.
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.message: str | None = None
        self.oops: str | None = None
        self.oopses: list[tuple[str, str]] = []
        self.on_oops: Callable[[], object] | None = None
        """Called once for each oops, at its first line (``dump_on`` with ``oops``)."""

    def __call__(self, line: bytes) -> None:
        if self.oops is None:
            for marker in OOPS_MARKERS:
                at = line.find(marker)
                if at >= 0:  # one oops however many marker lines it has, up to its end line
                    self.oops = line[at:].decode("utf-8", "replace").strip()
                    if self.on_oops is not None:
                        self.on_oops()
                    break
        elif OOPS_END in line:
            message, self.oops = self.oops, None
            # still inside oops_end(): trace every vCPU once they are all stopped
            self.machine.when_stopped(
                lambda: self.oopses.append((message, self.machine._oops_traces())))
        if self.message is None:
            at = line.find(PANIC_START)
            if at >= 0:
                self.message = line[at:].decode("utf-8", "replace").strip()
        elif PANIC_END in line:
            self.machine.request_stop(ExitReason.PANIC, self.message)
