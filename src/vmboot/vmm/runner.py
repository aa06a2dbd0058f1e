"""The run loop: enter the guest with KVM_RUN, route its port I/O and MMIO to devices, and
turn the exits that end a run into a :class:`~vmboot.vmm.exits.VmExit`.

Typical use::

    runner = Runner(vm, vcpu, port_bus, mmio_bus, symbolizer=symbols.describe)
    serial.connect_stop(runner.stop)         # devices may end the run: stop(reason, detail)
    result = runner.run(timeout=60)          # -> VmExit (reason, detail, registers, ...)
    if result.reason is ExitReason.TIMEOUT:  # the VM is intact: inspect, then resume
        print(vcpu.get_register(Register.RIP)); result = runner.run(timeout=60)

A run ends when a device calls :meth:`Runner.stop`, another thread calls
:meth:`Runner.request_stop`, the timeout passes, or the guest does something that ends it
(triple fault, an instruction KVM cannot emulate, a reset or power-off system event, HLT
with interrupts off). Stopping a vCPU that is inside KVM_RUN uses ``kvm_run.immediate_exit``
plus a signal (:data:`KICK_SIGNAL`, with a no-op handler) sent to the vCPU's thread, so the
ioctl returns EINTR; the handler is installed when the first Runner is made in the main
thread (or by calling :func:`install_kick_handler` there).

The loop is written for a small per-exit cost: the ioctl and struct readers are bound to
locals, kvm_run fields are read through typed memoryviews of the mmapped page made once per
run, a port's device is looked up once, and nothing is allocated through ctypes per exit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import struct
import threading
from collections.abc import Callable
from types import FrameType

from vmboot.devices.bus import MmioBus, PortBus, PortDevice
from vmboot.errors import GuestMemoryError, HypervisorError, PageWalkError, VmbootError
from vmboot.hv.kvm import abi
from vmboot.hv.kvm.ioctl import kvm_run
from vmboot.hv.kvm.vcpu import KvmVCPU
from vmboot.hv.kvm.vm import KvmVM
from vmboot.hv.registers import Register, SegmentRegister
from vmboot.vmm.exits import ExitReason, VmExit
from vmboot.x86 import cr

log = logging.getLogger("vmboot.vmm")

KICK_SIGNAL = signal.SIGUSR1
"""The signal sent to a vCPU thread to make KVM_RUN return (as QEMU's SIG_IPI)."""

_PortEntry = tuple[Callable[[int, int, int], None], Callable[[int, int], int], int]
"""(port_write, port_read, start of the device's range)."""

Symbolizer = Callable[[int], "str | None"]
"""``symbolizer(address) -> "function+0xoff"`` (or None when unknown)."""

Sampler = Callable[[int, int, int, bool], None]
"""``sampler(rip, cpl, vcpu_index, waiting)``: one sample of the running vCPU
(:meth:`Runner.request_sample`); ``waiting``: it has not been started yet (it waits in KVM for
the INIT/STARTUP IPIs of an application processor, and its RIP is the reset vector's)."""

WAITING_MP_STATES = frozenset({abi.KVM_MP_STATE_UNINITIALIZED, abi.KVM_MP_STATE_INIT_RECEIVED})
"""KVM_GET_MP_STATE values of a vCPU that waits for a STARTUP IPI."""
UNSYMBOLIZED = frozenset({ExitReason.RESET, ExitReason.POWEROFF, ExitReason.STOPPED})
"""Exits whose RIP is not named: the guest asked for a reset or power-off, or the host asked
for the stop (the end of an exec, a pause), so where the guest was says nothing about why it
stopped; naming it would load the kernel's symbols (hundreds of ms) after the work is done."""

_U32 = struct.Struct("<I")
_IO = struct.Struct(abi.RUN_IO_FORMAT)
_MMIO_HEAD = struct.Struct(abi.RUN_MMIO_HEAD_FORMAT)
_FAIL_ENTRY = struct.Struct("<QI")
_INTERNAL_HEAD = struct.Struct("<II")
_EMULATION_FLAGS = struct.Struct("<Q")
_SYSTEM_EVENT_HEAD = struct.Struct("<II")
_DEBUG_EXIT = struct.Struct(abi.RUN_DEBUG_FORMAT)
_INTERNAL_DATA_MAX = 16
CPL_MASK = 0x3
"""The requested privilege level bits of a selector; CS's are the CPU's current level."""

_SYSTEM_EVENTS: dict[int, tuple[ExitReason, str]] = {
    abi.KVM_SYSTEM_EVENT_SHUTDOWN: (ExitReason.POWEROFF, "system event: shutdown"),
    abi.KVM_SYSTEM_EVENT_RESET: (ExitReason.RESET, "system event: reset"),
    abi.KVM_SYSTEM_EVENT_CRASH: (ExitReason.PANIC, "system event: guest crash"),
}

_INTERNAL_SUBERRORS: dict[int, str] = {
    abi.KVM_INTERNAL_ERROR_EMULATION: "emulation failure",
    abi.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
    abi.KVM_INTERNAL_ERROR_DELIVERY_EV: "event delivery failed",
    abi.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit reason",
}

_RESUMABLE_EXITS = frozenset({abi.KVM_EXIT_IRQ_WINDOW_OPEN, abi.KVM_EXIT_INTR, abi.KVM_EXIT_NMI})
"""Exits that need nothing from user space: just enter the guest again."""

_INCOMPLETE_EXITS = frozenset({abi.KVM_EXIT_IO, abi.KVM_EXIT_MMIO})
"""Exits whose instruction KVM completes only on the next KVM_RUN (api.rst, immediate_exit)."""


def _kick_handler(signum: int, frame: FrameType | None) -> None:
    """No-op: the signal's only job is to make a blocking KVM_RUN return EINTR."""


def install_kick_handler() -> None:
    """Install the no-op :data:`KICK_SIGNAL` handler; must run in the main thread."""
    current = signal.getsignal(KICK_SIGNAL)
    if current is _kick_handler:
        return
    if threading.current_thread() is not threading.main_thread():
        raise HypervisorError(
            f"runner: the {signal.Signals(KICK_SIGNAL).name} handler that stops a running vCPU "
            "must be installed from the main thread; create the first Runner there, or call "
            "vmboot.vmm.runner.install_kick_handler() from the main thread first"
        )
    if callable(current):
        log.warning("runner: replacing the existing %s handler %r with vmboot's vCPU kick handler",
                    signal.Signals(KICK_SIGNAL).name, current)
    signal.signal(KICK_SIGNAL, _kick_handler)


class Runner:
    """Runs one vCPU of a KVM VM, dispatching port I/O to ``port_bus`` and MMIO to ``mmio_bus``.

    ``symbolizer``: optional ``rip -> "func+0xoff"`` used to name RIP in emulation failures
    and hangs. Buses default to empty ones (reads return all-ones, writes are dropped).
    """

    def __init__(
        self,
        vm: KvmVM,
        vcpu: KvmVCPU,
        port_bus: PortBus | None = None,
        mmio_bus: MmioBus | None = None,
        *,
        symbolizer: Symbolizer | None = None,
    ) -> None:
        if vcpu.vm is not vm:
            raise HypervisorError(f"runner: vCPU {vcpu.index} does not belong to this VM")
        install_kick_handler()
        self.vm = vm
        self.vcpu = vcpu
        self.port_bus = port_bus if port_bus is not None else PortBus()
        self.mmio_bus = mmio_bus if mmio_bus is not None else MmioBus()
        self.symbolizer = symbolizer
        self.exit_count = 0
        """KVM exits handled so far (all runs)."""
        self._lock = threading.Lock()
        self._pending: tuple[ExitReason, str] | None = None
        self._thread_id: int | None = None
        self._port_cache: dict[int, _PortEntry] = {}
        self.sampler: Sampler | None = None
        """Called as ``sampler(rip, cpl, vcpu_index, waiting)`` per :meth:`request_sample` (vmm.profile)."""
        self._sample_wanted = False

    @property
    def running(self) -> bool:
        """True while :meth:`run` is in progress (in any thread)."""
        with self._lock:
            return self._thread_id is not None

    # -- stopping -----------------------------------------------------------------------------
    def stop(self, reason: ExitReason, detail: str = "") -> None:
        """End the current run with ``reason`` (devices call this; any thread may).

        The first request wins. Called from the vCPU thread (inside a device handler), the
        run ends as soon as the handler returns; from another thread, the vCPU is kicked out
        of KVM_RUN. With no run in progress, the next :meth:`run` returns at once.
        """
        with self._lock:
            if self._pending is not None:
                return
            self._pending = (reason, detail)
            target = self._thread_id
        if target is not None and target != threading.get_ident():
            self._kick(target)

    def discard_stop(self) -> None:
        """Forget a stop that arrived after the last run had ended (the next run goes ahead)."""
        with self._lock:
            if self._thread_id is None:
                self._pending = None

    @property
    def thread_id(self) -> int | None:
        """The host thread running this vCPU's loop now (None between runs)."""
        return self._thread_id

    def request_stop(self, detail: str = "stop requested") -> None:
        """Ask a run (in another thread) to end with :attr:`ExitReason.STOPPED`."""
        self.stop(ExitReason.STOPPED, detail)

    def request_sample(self) -> None:
        """Have the running vCPU report its RIP, CPL and index to :attr:`sampler`, then go on.

        Any thread may call it; it does nothing when no run is in progress. The vCPU is
        kicked out of KVM_RUN as for a stop, the loop reads the two registers and re-enters.
        """
        with self._lock:
            target = self._thread_id
            if target is None or self.sampler is None or self._sample_wanted:
                return
            self._sample_wanted = True
        if target != threading.get_ident():
            self._kick(target)

    def _take_sample(self) -> None:
        self._sample_wanted = False
        sampler = self.sampler
        if sampler is None:
            return
        try:
            rip = self.vcpu.get_registers((Register.RIP,))[Register.RIP]
            cpl = self.vcpu.get_segment(SegmentRegister.CS).selector & CPL_MASK
            waiting = self.vm.irqchip and self.vcpu.get_mp_state() in WAITING_MP_STATES
        except HypervisorError as e:
            log.debug("runner: no sample: %s", e)
            return
        sampler(rip, cpl, self.vcpu.index, waiting)

    def _vcpu_closing(self) -> None:
        """The vCPU is being closed by another thread while it runs: end the run."""
        self.stop(ExitReason.STOPPED, "the vCPU was closed while running")

    def _kick(self, thread_id: int) -> None:
        run = self.vcpu.run_page
        run[abi.RUN_IMMEDIATE_EXIT] = 1
        with contextlib.suppress(ProcessLookupError):  # the vCPU thread already left
            signal.pthread_kill(thread_id, KICK_SIGNAL)

    # -- running ------------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> VmExit:
        """Run the guest until something ends the run; return why, with the registers.

        ``timeout``: seconds of wall time (None: no limit); when it passes the run ends with
        :attr:`ExitReason.TIMEOUT` (or :attr:`ExitReason.HLT` if the vCPU turns out to be
        halted with interrupts off, which the in-kernel irqchip never reports by itself).
        The VM stays intact after any return: inspect it, then call ``run()`` again to resume.
        """
        if timeout is not None and timeout < 0:
            raise HypervisorError(f"runner: timeout {timeout!r} s is negative; use None for no limit")
        with self._lock:
            if self._thread_id is not None:
                raise HypervisorError("runner: run() is already in progress in another thread")
            self._thread_id = threading.get_ident()
        try:
            self.vcpu.begin_run(self._vcpu_closing)
        except BaseException:
            with self._lock:
                self._thread_id = None
            raise
        try:
            self.vcpu.flush()
        except BaseException:
            with self._lock:
                self._thread_id = None
            self.vcpu.end_run()
            raise
        timer: threading.Timer | None = None
        if timeout is not None:
            timer = threading.Timer(timeout, self.stop, (ExitReason.TIMEOUT, f"no exit within {timeout:g} s"))
            timer.daemon = True
            timer.start()
        try:
            try:
                result = self._loop()
            except VmbootError:
                raise
            except Exception as e:  # a device failed: end the run, keep the VM inspectable
                log.exception("runner: error while handling a guest exit")
                result = self._make_exit(ExitReason.ERROR, f"{type(e).__name__}: {e}")
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._thread_id = None
                self._pending = None
            if not self.vcpu.closed:
                self.vcpu.run_page[abi.RUN_IMMEDIATE_EXIT] = 0
            self.vcpu.end_run()
        return result

    def _loop(self) -> VmExit:
        vcpu = self.vcpu
        page = vcpu.run_page
        fd = vcpu.fd
        # Typed views of the kvm_run page: one index per field, no struct or ctypes per exit.
        # KVM places port-I/O data at a page offset and MMIO data at an 8-byte aligned field,
        # so an item of ``size`` bytes at byte offset ``off`` is element ``off // size``.
        mv8 = memoryview(page)
        mv16, mv32, mv64 = mv8.cast("H"), mv8.cast("I"), mv8.cast("Q")
        views = (None, mv8, mv16, None, mv32, None, None, None, mv64)
        masks = (0, 0xFF, 0xFFFF, 0, 0xFFFFFFFF, 0, 0, 0, (1 << 64) - 1)
        run = kvm_run
        exit_io = abi.KVM_EXIT_IO
        exit_mmio = abi.KVM_EXIT_MMIO
        io_out = abi.KVM_EXIT_IO_OUT
        reason_index = abi.RUN_EXIT_REASON // 4
        io_at = abi.RUN_IO
        mmio_at = abi.RUN_MMIO
        mmio_data_at = abi.RUN_MMIO_DATA
        unpack_io = _IO.unpack_from
        unpack_mmio = _MMIO_HEAD.unpack_from
        ports = self._port_cache
        port_lookup = self._port_entry
        mmio_read = self.mmio_bus.read
        mmio_write = self.mmio_bus.write
        exits = 0
        self._sample_wanted = False
        try:
            while True:
                if self._pending is not None:
                    return self._stopped()
                try:
                    run(fd)
                except InterruptedError:
                    page[abi.RUN_IMMEDIATE_EXIT] = 0
                    if self._sample_wanted:
                        self._take_sample()
                    continue
                except OSError as e:
                    if e.errno == errno.EAGAIN:
                        continue
                    raise HypervisorError(
                        f"KVM vCPU {vcpu.index}: KVM_RUN failed: {e.strerror} (errno {e.errno})"
                    ) from None
                exits += 1
                reason = mv32[reason_index]
                if reason == exit_io:
                    direction, size, port, count, off = unpack_io(mv8, io_at)
                    if count == 1:
                        entry = ports.get(port)
                        if entry is None:
                            entry = port_lookup(port)
                        if direction == io_out:
                            entry[0](port - entry[2], size, views[size][off // size])  # type: ignore[index]
                        else:
                            views[size][off // size] = entry[1](port - entry[2], size) & masks[size]  # type: ignore[index]
                    else:
                        self._string_io(mv8, direction, size, port, count, off)
                elif reason == exit_mmio:
                    address, length, is_write = unpack_mmio(mv8, mmio_at)
                    view = views[length]
                    if view is None:
                        raise HypervisorError(f"KVM vCPU {vcpu.index}: MMIO access of {length} bytes "
                                              f"at {address:#x}; KVM only reports 1, 2, 4 or 8")
                    if is_write:
                        mmio_write(address, length, view[mmio_data_at // length])
                    else:
                        view[mmio_data_at // length] = mmio_read(address, length) & masks[length]
                elif reason not in _RESUMABLE_EXITS:
                    result = self._final_exit(reason)
                    if result is not None:
                        return result
        finally:
            self.exit_count += exits
            for view in (mv16, mv32, mv64, mv8):
                view.release()

    def _port_entry(self, port: int) -> _PortEntry:
        """(write, read, range start) for ``port``: the device's methods, or the bus's own.

        Ports owned by a device are cached (the bus never detaches devices, so an entry stays
        right); unowned ports go through the bus each time, so a device attached later is seen
        and the bus's log-once of unknown ports keeps working.
        """
        bus = self.port_bus
        found = bus.find(port)
        if found is None:
            return (bus.write, bus.read, 0)
        device: PortDevice = found.device  # type: ignore[assignment]
        entry = (device.port_write, device.port_read, found.start)
        self._port_cache[port] = entry
        return entry

    def _string_io(self, data: memoryview, direction: int, size: int, port: int, count: int,
                   off: int) -> None:
        """REP INS/OUTS: ``count`` items of ``size`` bytes at ``off`` in the kvm_run page."""
        if direction == abi.KVM_EXIT_IO_OUT:
            for i in range(count):
                at = off + i * size
                self.port_bus.write(port, size, int.from_bytes(data[at : at + size], "little"))
        else:
            items = b"".join(self.port_bus.read(port, size).to_bytes(size, "little") for _ in range(count))
            data[off : off + len(items)] = items

    # -- exits that end a run -----------------------------------------------------------------
    def _final_exit(self, reason: int) -> VmExit | None:
        run = self.vcpu.run_page
        base = abi.RUN_EXIT_UNION
        if reason == abi.KVM_EXIT_HLT:
            if_on = bool(run[abi.RUN_IF_FLAG])
            return self._make_exit(
                ExitReason.HLT,
                "HLT with interrupts on but no in-kernel irqchip to wake the vCPU" if if_on
                else "HLT with interrupts off",
            )
        if reason == abi.KVM_EXIT_SHUTDOWN:
            return self._make_exit(ExitReason.SHUTDOWN, "triple fault (KVM_EXIT_SHUTDOWN)")
        if reason == abi.KVM_EXIT_FAIL_ENTRY:
            hw_reason, cpu = _FAIL_ENTRY.unpack_from(run, base)
            return self._make_exit(
                ExitReason.FAIL_ENTRY,
                f"KVM could not enter the guest: hardware entry failure reason {hw_reason:#x} "
                f"on host CPU {cpu} (invalid vCPU state)",
            )
        if reason == abi.KVM_EXIT_INTERNAL_ERROR:
            return self._internal_error()
        if reason == abi.KVM_EXIT_DEBUG:
            exception, pc, dr6, _dr7 = _DEBUG_EXIT.unpack_from(run, abi.RUN_DEBUG)
            result = self._make_exit(ExitReason.DEBUG, f"debug exception (vector {exception}) at "
                                                       f"{pc:#x}, DR6={dr6:#x}")
            result.dr6 = dr6
            return result
        if reason == abi.KVM_EXIT_SYSTEM_EVENT:
            event, _ndata = _SYSTEM_EVENT_HEAD.unpack_from(run, base)
            kind, detail = _SYSTEM_EVENTS.get(event, (ExitReason.ERROR, f"unknown system event {event}"))
            return self._make_exit(kind, detail)
        name = abi.EXIT_REASON_NAMES.get(reason, "unknown")
        return self._make_exit(ExitReason.ERROR, f"unhandled KVM exit {reason} ({name})")

    def _internal_error(self) -> VmExit:
        run = self.vcpu.run_page
        suberror, ndata = _INTERNAL_HEAD.unpack_from(run, abi.RUN_INTERNAL)
        what = _INTERNAL_SUBERRORS.get(suberror, f"suberror {suberror}")
        insn: bytes | None = None
        if suberror == abi.KVM_INTERNAL_ERROR_EMULATION:
            from vmboot.vmm.code_fetch import MAX_INSTRUCTION_BYTES  # the page walker: only here

            (flags,) = _EMULATION_FLAGS.unpack_from(run, abi.RUN_INTERNAL_DATA)
            if ndata >= 1 and flags & abi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES:
                size = min(run[abi.RUN_EMULATION_INSN], MAX_INSTRUCTION_BYTES)
                if size:
                    insn = bytes(run[abi.RUN_EMULATION_INSN + 1 : abi.RUN_EMULATION_INSN + 1 + size])
            detail = "KVM could not emulate the instruction at RIP"
        else:
            n = min(ndata, _INTERNAL_DATA_MAX)
            data = struct.unpack_from(f"<{n}Q", run, abi.RUN_INTERNAL_DATA)
            detail = f"KVM internal error: {what}" + (
                " (data " + " ".join(f"{d:#x}" for d in data) + ")" if data else "")
        result = self._make_exit(ExitReason.INTERNAL_ERROR, detail)
        if suberror == abi.KVM_INTERNAL_ERROR_EMULATION:
            result.instruction_bytes = insn if insn is not None else self._code_at_rip()
        return result

    def _code_at_rip(self) -> bytes | None:
        """Up to 15 bytes at RIP read from guest memory through the guest's page tables."""
        from vmboot.vmm.code_fetch import MAX_INSTRUCTION_BYTES, code_address, read_linear

        try:
            regs = self.vcpu.snapshot()
            cs = self.vcpu.get_segment(SegmentRegister.CS)
            linear = code_address(regs["rip"], cs.base, regs["efer"])
            return read_linear(self.vm.memory, regs["cr0"], regs["cr3"], regs["cr4"], regs["efer"],
                               linear, MAX_INSTRUCTION_BYTES)
        except (PageWalkError, GuestMemoryError, HypervisorError) as e:
            log.info("runner: cannot read the instruction at RIP: %s", e)
            return None

    def _stopped(self) -> VmExit:
        """Finish a stop request: complete an I/O in flight, then describe the state."""
        assert self._pending is not None
        reason, detail = self._pending
        run = self.vcpu.run_page
        if _U32.unpack_from(run, abi.RUN_EXIT_REASON)[0] in _INCOMPLETE_EXITS:
            # Let KVM finish the I/O instruction (advance RIP, store IN data) without running on.
            run[abi.RUN_IMMEDIATE_EXIT] = 1
            try:
                kvm_run(self.vcpu.fd)
            except OSError as e:
                if e.errno != errno.EINTR:
                    raise HypervisorError(
                        f"KVM vCPU {self.vcpu.index}: completing I/O before stopping failed: {e.strerror}"
                    ) from None
            run[abi.RUN_IMMEDIATE_EXIT] = 0
        if reason is ExitReason.TIMEOUT and self._halted_with_interrupts_off():
            reason, detail = ExitReason.HLT, "HLT with interrupts off (found when the timeout passed)"
        return self._make_exit(reason, detail)

    def _halted_with_interrupts_off(self) -> bool:
        if not self.vm.irqchip:
            return False
        try:
            halted = self.vcpu.get_mp_state() == abi.KVM_MP_STATE_HALTED
            return halted and not self.vcpu.snapshot()["rflags"] & cr.RFLAGS_IF
        except HypervisorError:
            return False

    def _make_exit(self, reason: ExitReason, detail: str) -> VmExit:
        try:
            registers = self.vcpu.snapshot()
        except HypervisorError as e:
            log.info("runner: cannot read the vCPU registers: %s", e)
            registers = {}
        symbol = None
        rip = registers.get("rip")
        if self.symbolizer is not None and rip is not None and reason not in UNSYMBOLIZED:
            try:
                symbol = self.symbolizer(rip)
            except VmbootError as e:
                log.info("runner: cannot symbolise rip %#x: %s", rip, e)
        return VmExit(reason=reason, detail=detail, registers=registers, symbol=symbol,
                      vcpu=self.vcpu.index)
