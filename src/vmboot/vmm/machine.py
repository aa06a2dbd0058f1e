"""``Machine``: a KVM guest with a PC's legacy devices and a Linux kernel loaded, ready to run.

::

    with Machine("bzImage", initrd="initramfs.cpio", memory="64M", console=sys.stdout) as m:
        result = m.run(timeout=120)
    print(result.exit.one_line(), result.timings.first_console_byte)

Entering the context creates the VM (guest RAM, the in-kernel interrupt controllers and
PIT), the vCPU with its CPUID, the devices of :class:`~vmboot.devices.pc.PcPlatform`
plus ``extra_devices``, loads the kernel and initrd through :mod:`vmboot.linux` and
programs the vCPU for the 64-bit entry. :meth:`Machine.run` runs the guest until it
resets, powers off, fails, or the time limit passes.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Self

from vmboot.config import (
    DEFAULT_CMDLINE,
    DEFAULT_CPUID_POLICY,
    DEFAULT_ENTRY,
    DEFAULT_MEMORY,
    MIN_CPUS,
    InitrdInput,
    KernelInput,
    MachineConfig,
)
from vmboot.devices.bus import MmioBus, PortBus
from vmboot.devices.console import DEFAULT_CAPTURE_LIMIT, ConsoleOutput, ConsoleSink, stream_sink
from vmboot.devices.pc import ExtraDevice, PcPlatform
from vmboot.errors import BootConfigError, DebugError, UsageError
from vmboot.vmm.exits import ExitReason, VmExit
from vmboot.vmm.wiring import connect_devices

if TYPE_CHECKING:
    from vmboot.debug.symbol_sources import SymbolSource
    from vmboot.debug.symtab import SymbolTable
    from vmboot.hv.kvm import KvmVCPU, KvmVM
    from vmboot.linux import EntryPlan, Kernel
    from vmboot.linux.options import EntryChoice
    from vmboot.vmm.runner import Runner

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
    """The same trace rendered with the vCPU's registers, as the kernel prints an oops."""
    panic_message: str | None = None
    """The guest's ``Kernel panic - not syncing: ...`` line, when it printed one."""
    notes: list[str] = field(default_factory=list)

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
    ) -> None:
        """A machine from keywords (they make its :class:`~vmboot.config.MachineConfig`)."""
        config = MachineConfig(
            kernel, initrd=initrd, cmdline=cmdline, memory=memory, cpus=cpus,
            cpuid_policy=cpuid_policy,  # type: ignore[arg-type]  # validated by MachineConfig
            entry=entry, extra_devices=tuple(extra_devices), capture_limit=capture_limit,
            vmlinux=vmlinux, system_map=system_map,
        )
        self._setup(config, console=console, on_timeout=on_timeout, on_panic=on_panic,
                    serial_outputs=serial_outputs)

    @classmethod
    def from_config(
        cls,
        config: MachineConfig,
        *,
        console: ConsoleTarget = None,
        on_timeout: OnTimeout = None,
        on_panic: Literal["trace"] | None = "trace",
        serial_outputs: Mapping[str, ConsoleOutput] | None = None,
    ) -> Machine:
        """A machine built from ``config``; the keywords say where its output goes and what
        happens on a panic or a timeout. ``serial_outputs`` maps a serial port's name
        (``config.serial_ports``) other than the console's to where its output goes."""
        machine = cls.__new__(cls)
        machine._setup(config, console=console, on_timeout=on_timeout, on_panic=on_panic,
                       serial_outputs=serial_outputs)
        return machine

    def _setup(self, config: MachineConfig, *, console: ConsoleTarget, on_timeout: OnTimeout,
               on_panic: Literal["trace"] | None,
               serial_outputs: Mapping[str, ConsoleOutput] | None) -> None:
        if on_timeout is not None and on_timeout != "trace" and not callable(on_timeout):
            raise UsageError(
                f"on_timeout: {on_timeout!r} is not None, 'trace' or a callable(machine, exit)"
            )
        if on_panic not in ("trace", None):
            raise UsageError(f"on_panic: {on_panic!r} is not 'trace' or None")
        self.config = config
        self.memory_bytes = config.memory_bytes
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
        self.console = ConsoleOutput(_console_sink(console), config.capture_limit)
        self._panic = _PanicWatch(self)
        self.console.line_watcher = self._panic
        self._symbols: SymbolTable | None = None
        self._symbols_failed = False
        self.symbols_problem: str | None = None
        """Why :meth:`symbolize` has no symbols (set when loading them failed)."""
        self.platform = PcPlatform(self.console, serial_ports=config.serial_ports,
                                   serial_outputs=serial_outputs)
        self.port_bus = PortBus()
        self.mmio_bus = MmioBus()
        self.vm: KvmVM | None = None
        self.vcpu: KvmVCPU | None = None
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
        from vmboot.hv.kvm import KvmVM
        from vmboot.linux import BootOptions, Kernel, load_kernel
        from vmboot.vmm.runner import Runner

        if self.config.cpus != MIN_CPUS:
            raise BootConfigError(f"cpus: {self.config.cpus}; this version runs a machine with "
                                  f"{MIN_CPUS} vCPU only: use cpus={MIN_CPUS}")
        self._t0 = time.monotonic()
        kernel = (self.kernel_source if isinstance(self.kernel_source, Kernel)
                  else load_kernel(self.kernel_source))
        self.kernel = kernel
        self.platform.attach(self.port_bus)
        for extra in self.extra_devices:
            extra.attach(self.port_bus, self.mmio_bus)
        vm = KvmVM(self.memory_bytes, cpuid_policy=self.cpuid_policy)
        self.vm = vm
        vcpu = vm.create_vcpu(0)
        self.vcpu = vcpu
        self.plan = kernel.prepare(vm, BootOptions(cmdline=self.cmdline, initrd=self.initrd,
                                                   entry=self.entry))
        self.plan.configure_vcpu(vcpu)
        self._runner = Runner(vm, vcpu, self.port_bus, self.mmio_bus, symbolizer=self.symbolize)
        if self._pending_stop is not None:
            self._runner.stop(*self._pending_stop)
            self._pending_stop = None
        devices = [*self.platform.devices(), *(e.device for e in self.extra_devices)]
        connect_devices(devices, vm.irq_line, self.request_stop)
        self._t_load = time.monotonic() - self._t0

    def close(self) -> None:
        """Release the VM (idempotent)."""
        self.console.flush()
        vm, self.vm, self.vcpu, self._runner = self.vm, None, None, None
        if vm is not None:
            vm.close()

    # -- running ------------------------------------------------------------------------------
    @property
    def runner(self) -> Runner | None:
        """The run loop (None until :meth:`start`, and after :meth:`close`)."""
        return self._runner

    def request_stop(self, reason: ExitReason = ExitReason.STOPPED, detail: str = "") -> None:
        """End the current run with ``reason`` (devices call this; so may another thread)."""
        runner = self._runner
        if runner is None:
            self._pending_stop = (reason, detail)
            return
        runner.stop(reason, detail)

    def push_input(self, data: bytes) -> int:
        """Type ``data`` into the console UART (safe from another thread)."""
        return self.platform.console_serial.push_input(data)

    def run(self, timeout: float | None = None) -> RunResult:
        """Run the guest until it stops, or for at most ``timeout`` seconds
        (default: the configuration's ``timeout``)."""
        if timeout is None:
            timeout = self.config.timeout
        if self._runner is None:
            raise BootConfigError("Machine.run: the machine is not started; use it in a with block")
        if self._t_first_run is None:
            self._t_first_run = time.monotonic() - self._t0
        vm_exit = self._runner.run(timeout)
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
        )
        result.panic_message = self._panic.message
        if self._panic.message is not None and vm_exit.clean:
            # panic=-1: the kernel resets from inside panic() (emergency_restart) before its
            # end-of-panic line; the vCPU is stopped at that reset, still in the panic path.
            result.exit = VmExit(ExitReason.PANIC, f"{self._panic.message} (then "
                                 f"{vm_exit.reason.value}: {vm_exit.detail})", vm_exit.registers)
        if result.exit.reason is ExitReason.PANIC and self.on_panic == "trace":
            self._capture_trace(result, "on_panic='trace'")
        if vm_exit.reason is ExitReason.TIMEOUT and self.on_timeout is not None:
            self._handle_timeout(result)
        return result

    # -- symbols and traces -------------------------------------------------------------------
    def _symbol_sources(self) -> dict[str, SymbolSource | None]:
        """vmlinux / System.map if given, else the kernel itself: an ELF vmlinux's .symtab,
        or a bzImage's kallsyms."""
        from vmboot.linux import KernelFormat

        kernel_bytes = None if self.kernel is None else self.kernel.data
        if self.vmlinux is not None or self.system_map is not None:
            return {"vmlinux": self.vmlinux, "system_map": self.system_map, "kernel": None}
        if self.kernel is not None and self.kernel.format is KernelFormat.VMLINUX:
            return {"vmlinux": kernel_bytes, "system_map": None, "kernel": kernel_bytes}
        return {"vmlinux": None, "system_map": None, "kernel": kernel_bytes}

    def symbolize(self, address: int) -> str | None:
        """``function+0xoff/0xsize`` for a guest kernel address, or None (loads symbols once)."""
        from vmboot import debug

        if self._symbols is None and not self._symbols_failed:
            try:
                self._symbols = debug.load_symbols(**self._symbol_sources())
            except DebugError as e:
                self._symbols_failed = True
                self.symbols_problem = str(e)
        if self._symbols is None:
            return None
        text = str(self._symbols.lookup(address))
        return None if text == "??" else text

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
        from vmboot import debug
        from vmboot.hv.registers import GENERAL_REGISTERS

        if self.vcpu is None:
            result.notes.append(f"{why}: no stack trace: the machine is closed")
            return
        try:
            src = self._symbol_sources()
            frames = debug.capture_stack_trace(self.vcpu, vmlinux=src["vmlinux"],
                                               system_map=src["system_map"], kernel=src["kernel"])
        except DebugError as e:  # the run's result stays usable; say why there is no trace
            result.notes.append(f"{why}: no stack trace: {e}")
            return
        result.stack_trace = frames
        result.stack_trace_text = debug.format_trace(
            frames, self.vcpu.get_registers(GENERAL_REGISTERS))

    def _handle_timeout(self, result: RunResult) -> None:
        """The hook for a run that timed out: a stack trace, or the user's callable."""
        if callable(self.on_timeout):
            self.on_timeout(self, result.exit)
            return
        self._capture_trace(result, "on_timeout='trace'")


PANIC_START = b"Kernel panic - not syncing"
PANIC_END = b"---[ end Kernel panic"


class _PanicWatch:
    """Spots a kernel panic on the console and ends the run at its last line.

    The run is stopped while the guest prints ``---[ end Kernel panic ...``, i.e. still
    inside ``panic()``, so a stack trace taken then shows the panic path, and a guest
    booted with ``panic=-1`` has not rebooted yet.
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.message: str | None = None

    def __call__(self, line: bytes) -> None:
        if self.message is None:
            at = line.find(PANIC_START)
            if at >= 0:
                self.message = line[at:].decode("utf-8", "replace").strip()
        elif PANIC_END in line:
            self.machine.request_stop(ExitReason.PANIC, self.message)
