"""Hostile guests: guests that abuse the machine each end in a defined exit reason,
and vmboot is still healthy afterwards (the same VM runs another guest, a probe still boots,
the process's open fds are back to what they were).

The guests are assembled with GNU as and run under KvmVM + Runner with the PC platform's
devices attached the way :class:`~vmboot.vmm.machine.Machine` attaches them (PcPlatform on a
PortBus, interrupt line and stop hook connected, in-kernel irqchip on). A small "done"
device at :data:`DONE_PORT` ends a run with POWEROFF when the guest writes :data:`DONE_VALUE`.
"""

from __future__ import annotations

import gc
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import requires_kvm
from kvm_helpers import CODE_GPA, assemble, assemble_with_symbols, enter_long_mode, need_binutils
from process_usage import mapping_count, open_fd_count
from vmboot.devices.bus import MmioBus, PortBus
from vmboot.devices.console import ConsoleOutput
from vmboot.devices.pc import PcPlatform
from vmboot.hv.kvm import KvmVM
from vmboot.hv.registers import GENERAL_REGISTERS
from vmboot.probes import run_probe
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.runner import Runner
from vmboot.vmm.wiring import StopHook, connect_devices

pytestmark = [requires_kvm, pytest.mark.kvm]

DONE_PORT = 0x510
DONE_VALUE = 0x42
DATA_GPA = 0x100000
"""Where guests store what they read (RAM)."""
LONG_TIMEOUT = 120.0
"""Only a guard against a hang: runs that should end by themselves never reach it."""
KVM_IN_KERNEL_PORTS = frozenset([
    *range(0x20, 0x22), *range(0xA0, 0xA2), *range(0x4D0, 0x4D2),  # PIC, ELCR
    *range(0x40, 0x44), 0x61,  # PIT, speaker port (KVM_PIT_SPEAKER_DUMMY)
])
"""Ports the in-kernel irqchip and PIT answer without exiting to user space."""


class DoneDevice:
    """Writing DONE_VALUE ends the run with POWEROFF; any other write is counted; reads: 0xff."""

    def __init__(self) -> None:
        self.stop: StopHook | None = None
        self.other_writes = 0
        self.written = threading.Event()

    def connect_stop(self, stop: StopHook) -> None:
        self.stop = stop

    def port_write(self, offset: int, size: int, value: int) -> None:
        if value == DONE_VALUE and self.stop is not None:
            self.stop(ExitReason.POWEROFF, "guest wrote the done port")
        else:
            self.other_writes += 1
            self.written.set()

    def port_read(self, offset: int, size: int) -> int:
        return 0xFF


class Rig:
    """One VM + vCPU with the PC platform on the port bus, wired as Machine wires it."""

    def __init__(self, memory: int = 32 << 20, capture_limit: int = 1 << 20) -> None:
        self.vm = KvmVM(memory)
        self.vcpu = self.vm.create_vcpu(0)
        self.console = ConsoleOutput(capture_limit=capture_limit)
        self.platform = PcPlatform(self.console)
        self.port_bus, self.mmio_bus = PortBus(), MmioBus()
        self.platform.attach(self.port_bus)
        self.done = DoneDevice()
        self.port_bus.attach_device(DONE_PORT, 1, self.done, "done")
        self.runner = Runner(self.vm, self.vcpu, self.port_bus, self.mmio_bus)
        connect_devices([*self.platform.devices(), self.done], self.vm.irq_line, self.runner.stop)

    def load(self, source: str) -> bytes:
        code = assemble(source)
        self.vm.write(CODE_GPA, code)
        enter_long_mode(self.vm, self.vcpu)
        return code

    def still_runs(self) -> None:
        """The same VM runs a fresh guest to its done port."""
        self.load(f"mov rax, 7\nmov dx, {DONE_PORT}\nmov al, {DONE_VALUE}\nout dx, al\n1: jmp 1b")
        result = self.runner.run(timeout=LONG_TIMEOUT)
        assert result.reason is ExitReason.POWEROFF, result.one_line()
        assert result.registers["rax"] & 0xFF == DONE_VALUE

    def close(self) -> None:
        self.vm.close()


DONE = f"""
    mov dx, {DONE_PORT}
    mov al, {DONE_VALUE}
    out dx, al
9:  jmp 9b
"""


@pytest.fixture(autouse=True)
def _binutils() -> None:
    need_binutils()


@pytest.fixture
def fds_unchanged() -> Iterator[None]:
    before = open_fd_count()
    yield
    assert open_fd_count() == before


@pytest.fixture
def rig(fds_unchanged: None) -> Iterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        r.close()


def test_port_sweep_every_port_written_and_read(rig: Rig) -> None:
    """OUT 0 then IN to each port 0..0xffff; each byte read is stored at DATA_GPA + port."""
    rig.vm.write(DATA_GPA, b"\x5a" * 0x10000)  # not a value any port answers here
    rig.load(f"""
        cli
        xor ebx, ebx
    1:  mov edx, ebx
        xor eax, eax
        out dx, al
        in al, dx
        mov byte ptr [rbx + {DATA_GPA}], al
        inc ebx
        cmp ebx, 0x10000
        jne 1b
        mov r15, rbx
    """ + DONE)
    result = rig.runner.run(timeout=LONG_TIMEOUT)
    assert result.reason is ExitReason.POWEROFF, result.one_line()
    assert result.registers["r15"] == 0x10000  # the loop went all the way
    seen = rig.vm.read(DATA_GPA, 0x10000)
    assert b"\x5a" not in seen  # every port was read and stored
    owned = {p for start, length, _ in rig.port_bus.devices() for p in range(start, start + length)}
    unknown = [p for p in range(0x10000) if p not in owned and p not in KVM_IN_KERNEL_PORTS]
    assert len(unknown) > 0xFF00
    wrong = [(hex(p), seen[p]) for p in unknown if seen[p] != 0xFF]
    assert wrong == []
    for port in (0x0, 0x100, 0x2F8, 0x3FF + 1, 0xCFC + 4, 0x8000, 0xFFFF):
        assert seen[port] == 0xFF, hex(port)
    # Devices answered as devices: the i8042 status has the system flag, the COM1 line
    # status says "transmitter empty", the absent PCI host bridge reads all-ones.
    assert seen[0x64] & 0x04
    assert seen[0x3FD] & 0x60 == 0x60
    assert seen[0xCFC] == 0xFF
    # The write of 0 to COM1's THR reached the console as one byte; nothing reset.
    assert (rig.console.total, bytes(rig.console.data)) == (1, b"\x00")
    assert rig.platform.i8042.resets == 0
    assert rig.done.other_writes == 1  # the sweep's own write of 0 to the done port
    assert len(rig.port_bus.unknown_seen) >= len(unknown) - 0x100
    rig.still_runs()


MMIO_HOLE = (0xC000_0000, 0xD000_1000, 0xE000_0000, 0xFED0_0000)
"""Unmapped guest-physical addresses in the 3-4 GiB hole (the in-kernel IOAPIC at
0xfec00000 and LAPIC at 0xfee00000 are left alone)."""
BELOW_HOLE = 0x0400_0000
"""64 MiB: above the rig's 32 MiB of RAM, below the hole."""
ABOVE_4G = (0x1_0000_0000, 0x10_0000_0000)
"""Above 4 GiB; reached through two 2 MiB pages re-pointed at these addresses."""
HIGH_WINDOWS = (0x3FC0_0000, 0x3FE0_0000)
"""The virtual 2 MiB pages (last two of the first GiB) that map ABOVE_4G."""


def test_mmio_to_unmapped_addresses_reads_all_ones(rig: Rig) -> None:
    from kvm_helpers import PD_GPA
    from vmboot.x86.paging import PTE_PRESENT, PTE_PS, PTE_WRITABLE

    targets = [(a, a) for a in (*MMIO_HOLE, BELOW_HOLE)] + list(zip(HIGH_WINDOWS, ABOVE_4G, strict=True))
    lines = ["cli", f"mov rdi, {DATA_GPA}"]
    for virtual, _ in targets:
        lines.append(f"mov rbx, {virtual + 0x18:#x}")
        lines += ["mov byte ptr [rbx], 0x11", "mov word ptr [rbx + 2], 0x2222",
                  "mov dword ptr [rbx + 4], 0x33333333",
                  "mov rax, 0x4444444444444444", "mov qword ptr [rbx + 8], rax"]
        lines += ["movzx eax, byte ptr [rbx]", "mov [rdi], rax",
                  "movzx eax, word ptr [rbx + 2]", "mov [rdi + 8], rax",
                  "mov eax, dword ptr [rbx + 4]", "mov [rdi + 16], rax",
                  "mov rax, qword ptr [rbx + 8]", "mov [rdi + 24], rax",
                  "add rdi, 32"]
    rig.vm.write(DATA_GPA, b"\0" * 32 * len(targets))
    rig.load("\n".join(lines) + DONE)
    for virtual, physical in zip(HIGH_WINDOWS, ABOVE_4G, strict=True):
        rig.vm.write(PD_GPA + (virtual >> 21) * 8,
                     struct.pack("<Q", physical | PTE_PRESENT | PTE_WRITABLE | PTE_PS))
    result = rig.runner.run(timeout=LONG_TIMEOUT)
    assert result.reason is ExitReason.POWEROFF, result.one_line()
    reads = struct.unpack(f"<{4 * len(targets)}Q", rig.vm.read(DATA_GPA, 32 * len(targets)))
    expected = (0xFF, 0xFFFF, 0xFFFF_FFFF, (1 << 64) - 1) * len(targets)
    assert reads == expected
    # Every access reached the MMIO bus (writes dropped, reads answered by the bus itself).
    for _, physical in targets:
        assert {physical + 0x18, physical + 0x1A, physical + 0x1C, physical + 0x20} <= \
            rig.mmio_bus.unknown_seen, hex(physical)
    rig.still_runs()


FLOOD_BUF = 0x200000
FLOOD_CHUNK = 1 << 20


def flood_pattern(n: int) -> bytes:
    return bytes(range(251)) * (n // 251) + bytes(range(n % 251))


def run_flood(rig: Rig, total: int, chunk: int = FLOOD_CHUNK) -> ExitReason:
    """The guest sends ``total`` bytes (a multiple of ``chunk``) to COM1 with rep outsb,
    ``chunk`` bytes of a repeating 0..250 pattern at a time."""
    assert total % chunk == 0
    rig.vm.write(FLOOD_BUF, flood_pattern(chunk))
    rig.load(f"""
        cli
        mov dx, 0x3f8
        mov r8, {total // chunk}
    1:  mov rsi, {FLOOD_BUF}
        mov rcx, {chunk}
        rep outsb
        dec r8
        jnz 1b
    """ + DONE)
    return rig.runner.run(timeout=None).reason


@pytest.mark.parametrize("total, capture", [
    (512 << 10, 128 << 10),
    pytest.param(8 << 20, 1 << 20, marks=pytest.mark.slow, id="8MiB-1MiB"),
], ids=["512KiB-128KiB", "8MiB-1MiB"])
def test_serial_flood_is_capped(fds_unchanged: None, total: int, capture: int) -> None:
    """COM1 flooded with ``rep outsb``; the console keeps ``capture`` bytes and counts the rest.

    PVM hands string I/O to user space one byte per exit (~10 us each here), so the 8 MiB
    flood takes ~90 s: it is marked slow; the 512 KiB one (~5 s) checks the same contract.
    """
    rig = Rig(capture_limit=capture)
    try:
        reason = run_flood(rig, total, chunk=min(total, FLOOD_CHUNK))
        assert reason is ExitReason.POWEROFF
        console = rig.console
        assert len(console.data) == capture  # host memory for the capture stays bounded
        assert console.dropped == total - capture
        assert console.total == total
        assert bytes(console.data) == flood_pattern(capture)
        assert rig.port_bus.unknown_seen == set()
        rig.still_runs()
    finally:
        rig.close()


RESETS = 1000


def test_reset_loop_1000_times(rig: Rig) -> None:
    """A reboot loop: the guest pulses the i8042 reset line at once; the host 'reboots' it
    (re-programs the vCPU at the entry point) and runs it again, 1,000 times in a row."""
    code = assemble("""
        mov al, 0xfe
        out 0x64, al
    1:  jmp 1b
    """)
    after_out = CODE_GPA + code.index(b"\xeb\xfe")
    rig.vm.write(CODE_GPA, code)
    fds = open_fd_count()
    reasons: dict[ExitReason, int] = {}
    rips = set()
    for _ in range(RESETS):
        enter_long_mode(rig.vm, rig.vcpu)
        result = rig.runner.run(timeout=LONG_TIMEOUT)
        reasons[result.reason] = reasons.get(result.reason, 0) + 1
        rips.add(result.registers["rip"])
        assert result.clean, result.one_line()
    assert reasons == {ExitReason.RESET: RESETS}
    assert rips == {after_out}
    assert rig.platform.i8042.resets == RESETS
    assert open_fd_count() == fds
    rig.still_runs()


@pytest.mark.slow
def test_reset_loop_fresh_vm_each_time(fds_unchanged: None) -> None:
    """The same reboot loop with a whole new VM per boot (~20 ms each here, ~20 s in all)."""
    code = assemble("""
        mov al, 0xfe
        out 0x64, al
    1:  jmp 1b
    """)
    fds = open_fd_count()
    reasons: dict[ExitReason, int] = {}
    for _ in range(RESETS):
        rig = Rig(memory=16 << 20)
        try:
            rig.vm.write(CODE_GPA, code)
            enter_long_mode(rig.vm, rig.vcpu)
            result = rig.runner.run(timeout=LONG_TIMEOUT)
            reasons[result.reason] = reasons.get(result.reason, 0) + 1
            assert rig.platform.i8042.resets == 1
        finally:
            rig.close()
        assert open_fd_count() == fds
    assert reasons == {ExitReason.RESET: RESETS}


def test_endless_loop_with_interrupts_off_times_out(rig: Rig) -> None:
    code = rig.load("""
        cli
        mov rbx, 0x1234
    1:  jmp 1b
    """)
    loop = CODE_GPA + code.index(b"\xeb\xfe")
    result = rig.runner.run(timeout=0.5)
    assert result.reason is ExitReason.TIMEOUT, result.one_line()
    assert result.registers["rip"] == loop
    assert result.registers["rbx"] == 0x1234
    assert not result.registers["rflags"] & 0x200  # IF clear
    rig.runner.request_stop("test done")  # stopped between runs: the next run ends at once
    again = rig.runner.run(timeout=LONG_TIMEOUT)
    assert (again.reason, again.registers["rip"]) == (ExitReason.STOPPED, loop)
    rig.close()
    assert rig.vm.closed


@pytest.mark.parametrize("ask_first", [True, False], ids=["request_stop-then-close", "close-only"])
def test_close_vm_while_vcpu_thread_is_in_kvm_run(fds_unchanged: None, ask_first: bool) -> None:
    """Closing the VM while another thread is inside KVM_RUN stops that run (STOPPED), waits
    for the thread to leave it, then releases everything; the process goes on booting VMs."""
    from vmboot.vmm.exits import VmExit

    rig = Rig()
    code = rig.load(f"""
        cli
        mov dx, {DONE_PORT}
        mov al, 1
        out dx, al
    1:  inc rbx
        jmp 1b
    """)
    started = threading.Event()
    results: list[object] = []

    def vcpu_thread() -> None:
        started.set()
        try:
            results.append(rig.runner.run(timeout=LONG_TIMEOUT))
        except BaseException as e:
            results.append(e)

    thread = threading.Thread(target=vcpu_thread, daemon=True)
    thread.start()
    started.wait()
    assert rig.done.written.wait(LONG_TIMEOUT)  # the guest has run (its OUT reached the host)
    thread.join(timeout=0.2)  # and now spins inside KVM_RUN
    assert thread.is_alive()
    if ask_first:
        rig.runner.request_stop("closing")
    rig.close()  # must neither raise nor hang
    assert rig.vm.closed
    thread.join(timeout=LONG_TIMEOUT)
    assert not thread.is_alive(), "the vCPU thread did not end after close()"
    (outcome,) = results
    assert isinstance(outcome, VmExit), repr(outcome)
    assert outcome.reason is ExitReason.STOPPED
    assert outcome.detail == ("closing" if ask_first else "the vCPU was closed while running")
    assert CODE_GPA + code.index(b"\x48\xff\xc3") <= outcome.registers["rip"] < CODE_GPA + len(code)
    # The process is still healthy: a probe boots in a new VM.
    assert run_probe("bzimage").ok


class ClosingDevice:
    """A port whose write handler closes the VM, on the vCPU's own thread, inside the run."""

    def __init__(self, close: Callable[[], None]) -> None:
        self.close = close
        self.calls = 0

    def port_write(self, offset: int, size: int, value: int) -> None:
        self.calls += 1
        self.close()

    def port_read(self, offset: int, size: int) -> int:
        return 0xFF


CLOSE_PORT = 0x520


@pytest.mark.parametrize("closer", ["vm", "machine-style twice"])
def test_device_handler_closes_the_vm_during_the_run(closer: str) -> None:
    """A device closing the VM from inside the run (no other thread) ends the run STOPPED,
    releases the fds and mappings once the loop has unwound, and leaves a closed VM behind."""
    from vmboot.errors import HypervisorError

    warm = Rig()  # the first run in the process maps things for good (a timer thread's stack
    warm.still_runs()  # and malloc arena): measure after one
    warm.close()
    gc.collect()
    fds, maps = open_fd_count(), mapping_count()
    rig = Rig()

    def close(vm: KvmVM = rig.vm) -> None:
        vm.close()
        if closer == "machine-style twice":
            vm.close()  # idempotent, also while the close waits for the run to end

    device = ClosingDevice(close)
    rig.port_bus.attach_device(CLOSE_PORT, 1, device, "closer")
    code = rig.load(f"""
        mov rbx, 0x77
        mov dx, {CLOSE_PORT}
        out dx, al
    1:  inc rbx
        jmp 1b
    """)
    result = rig.runner.run(timeout=LONG_TIMEOUT)
    assert device.calls == 1
    assert result.reason is ExitReason.STOPPED, result.one_line()
    assert result.detail == "the vCPU was closed while running"
    assert result.registers["rbx"] == 0x77  # registers read before the close took effect
    assert result.registers["rip"] == CODE_GPA + code.index(b"\x48\xff\xc3")  # just past the OUT
    assert rig.vm.closed
    with pytest.raises(HypervisorError, match="after close"):
        rig.runner.run(timeout=LONG_TIMEOUT)
    rig.vm.close()
    del rig, device, close
    gc.collect()
    assert (open_fd_count(), mapping_count()) == (fds, maps)
    assert run_probe("bzimage").ok


def test_endless_loop_times_out_with_a_symbolised_trace(rig: Rig, tmp_path: Path) -> None:
    """``cli; jmp .`` two calls deep: the timeout ends the run, then the frame-pointer trace
    names the spinning function and its caller, from the guest program's own symbols."""
    from vmboot import debug

    code, system_map = assemble_with_symbols("""
        xor ebp, ebp
        call outer_function
        hlt
    outer_function:
        push rbp
        mov rbp, rsp
        call spinning_function
        pop rbp
        ret
    spinning_function:
        push rbp
        mov rbp, rsp
        cli
    1:  jmp 1b
    """)
    rig.vm.write(CODE_GPA, code)
    enter_long_mode(rig.vm, rig.vcpu)
    smap = tmp_path / "System.map"
    smap.write_bytes(system_map)
    result = rig.runner.run(timeout=0.5)
    assert result.reason is ExitReason.TIMEOUT, result.one_line()
    frames = debug.capture_stack_trace(rig.vcpu, system_map=smap, unwinder="frame-pointer")
    names = [f.symbol for f in frames]
    assert names[:2] == ["spinning_function", "outer_function"], names
    assert names[2] == "_start"  # the call in _start; then RBP 0 ends the walk
    assert len(frames) == 3
    print("\n" + debug.format_trace(frames, rig.vcpu.get_registers(GENERAL_REGISTERS)))
