"""The run loop on real KVM with hand-assembled guests: I/O, MMIO, the exits that end a run,
stopping (device hook, timeout, another thread) and resuming."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator

import pytest

from conftest import requires_kvm
from kvm_helpers import (
    CODE_GPA,
    MmioRecorder,
    PortRecorder,
    assemble,
    enter_long_mode,
    enter_real_mode,
    need_binutils,
)
from vmboot.devices.bus import MmioBus, PortBus
from vmboot.errors import HypervisorError
from vmboot.hv import Register
from vmboot.hv.kvm import KvmVCPU, KvmVM, host_is_emulating
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.runner import Runner

pytestmark = [requires_kvm, pytest.mark.kvm]

PORT = 0x500
MMIO_BASE = 0xD000_0000
"""In the 3-4 GiB hole: not RAM, so every access exits to the MMIO bus."""
LONG_TIMEOUT = 60.0
"""A generous limit for runs that should end by themselves (guards against a hang only)."""


@pytest.fixture(autouse=True)
def _binutils() -> None:
    need_binutils()


class Guest:
    """A VM with one vCPU, a port recorder at 0x500 and an MMIO recorder at 0xd0000000."""

    def __init__(self, vm: KvmVM, vcpu: KvmVCPU) -> None:
        self.vm, self.vcpu = vm, vcpu
        self.ports, self.mmio = PortRecorder(), MmioRecorder(bias=1)
        port_bus, mmio_bus = PortBus(), MmioBus()
        port_bus.attach_device(PORT, 4, self.ports, "recorder")
        mmio_bus.attach_device(MMIO_BASE, 0x1000, self.mmio, "recorder")
        self.runner = Runner(vm, vcpu, port_bus, mmio_bus, symbolizer=self.symbolize)

    @staticmethod
    def symbolize(address: int) -> str | None:
        return f"guest_code+{address - CODE_GPA:#x}" if address >= CODE_GPA else None

    def load64(self, source: str) -> bytes:
        code = assemble(source)
        self.vm.write(CODE_GPA, code)
        enter_long_mode(self.vm, self.vcpu)
        return code


@pytest.fixture(params=[True, False], ids=["irqchip", "no-irqchip"])
def guest(request: pytest.FixtureRequest) -> Iterator[Guest]:
    with KvmVM(16 << 20, irqchip=request.param) as vm:
        yield Guest(vm, vm.create_vcpu(0))


@pytest.fixture
def guest_irqchip() -> Iterator[Guest]:
    with KvmVM(16 << 20) as vm:
        yield Guest(vm, vm.create_vcpu(0))


def test_real_mode_out_in_hlt(guest: Guest) -> None:
    code = assemble(f"""
        mov dx, {PORT:#x}
        mov al, 0x41
        out dx, al
        in al, dx
        mov bl, al
        cli
        hlt
    """, bits=16)
    guest.vm.write(CODE_GPA, code)
    enter_real_mode(guest.vcpu)
    guest.ports.reads = [0x5A]
    result = guest.runner.run(timeout=2.0 if guest.vm.irqchip else LONG_TIMEOUT)
    assert result.reason is ExitReason.HLT, result.one_line()
    assert "interrupts off" in result.detail
    assert guest.ports.writes == [(0, 1, 0x41)]
    assert result.registers["rbx"] & 0xFF == 0x5A
    # RIP is just past the HLT, relative to CS base = CODE_GPA.
    assert result.registers["rip"] == len(code)


def test_long_mode_port_io_all_sizes(guest: Guest) -> None:
    guest.load64(f"""
        mov dx, {PORT:#x}
        mov al, 0x11
        out dx, al
        mov ax, 0x2233
        out dx, ax
        mov eax, 0x44556677
        out dx, eax
        in al, dx
        mov r8, rax
        in ax, dx
        mov r9, rax
        in eax, dx
        mov r10, rax
        hlt
    """)
    guest.ports.reads = [0x1FF, 0xABCDE, 0x1_2345_6789]  # wider than the access: masked
    result = guest.runner.run(timeout=2.0 if guest.vm.irqchip else LONG_TIMEOUT)
    assert result.reason is ExitReason.HLT, result.one_line()
    assert guest.ports.writes == [(0, 1, 0x11), (0, 2, 0x2233), (0, 4, 0x44556677)]
    assert guest.ports.read_log == [(0, 1), (0, 2), (0, 4)]
    assert result.registers["r8"] & 0xFF == 0xFF
    assert result.registers["r9"] & 0xFFFF == 0xBCDE
    assert result.registers["r10"] == 0x2345_6789
    assert guest.runner.exit_count >= 6


def test_string_io_both_directions(guest_irqchip: Guest) -> None:
    g = guest_irqchip
    g.load64(f"""
        mov dx, {PORT:#x}
        lea rsi, [rip + message]
        mov rcx, 6
        rep outsb
        lea rsi, [rip + words]
        mov rcx, 3
        rep outsw
        mov rdi, 0x30000
        mov rcx, 4
        rep insb
        mov rdi, 0x30010
        mov rcx, 2
        rep insd
        hlt
    message: .ascii "vmboot"
    words: .word 0x1111, 0x2222, 0x3333
    """)
    g.ports.reads = [1, 2, 3, 4, 0xAABBCCDD, 0x11223344]
    result = g.runner.run(timeout=2.0)
    assert result.reason is ExitReason.HLT, result.one_line()
    assert g.ports.writes == [(0, 1, c) for c in b"vmboot"] + [(0, 2, w) for w in (0x1111, 0x2222, 0x3333)]
    assert g.vm.read(0x30000, 4) == bytes([1, 2, 3, 4])
    assert struct.unpack("<2I", g.vm.read(0x30010, 8)) == (0xAABBCCDD, 0x11223344)


def test_mmio_writes_and_reads(guest: Guest) -> None:
    guest.load64(f"""
        mov rbx, {MMIO_BASE:#x}
        mov byte ptr [rbx + 0x1], 0x5a
        mov word ptr [rbx + 0x2], 0x1234
        mov dword ptr [rbx + 0x4], 0x89abcdef
        mov rax, 0x0102030405060708
        mov qword ptr [rbx + 0x8], rax
        movzx r8, byte ptr [rbx + 0x1]
        movzx r9, word ptr [rbx + 0x2]
        mov r10d, dword ptr [rbx + 0x4]
        mov r11, qword ptr [rbx + 0x8]
        mov r12, qword ptr [rbx + 0x800]
        hlt
    """)
    result = guest.runner.run(timeout=2.0 if guest.vm.irqchip else LONG_TIMEOUT)
    assert result.reason is ExitReason.HLT, result.one_line()
    assert guest.mmio.writes == [(1, 1, 0x5A), (2, 2, 0x1234), (4, 4, 0x89ABCDEF), (8, 8, 0x0102030405060708)]
    regs = result.registers
    assert (regs["r8"], regs["r9"], regs["r10"]) == (0x5B, 0x1235, 0x89ABCDF0)
    assert regs["r11"] == 0x0102030405060709
    assert regs["r12"] == 1  # nothing written there: 0 + bias


def test_mmio_outside_any_device_reads_all_ones(guest_irqchip: Guest) -> None:
    g = guest_irqchip
    g.load64(f"""
        mov rbx, {MMIO_BASE + 0x10000:#x}
        mov dword ptr [rbx], 1
        mov eax, dword ptr [rbx]
        hlt
    """)
    result = g.runner.run(timeout=2.0)
    assert result.reason is ExitReason.HLT, result.one_line()
    assert result.registers["rax"] == 0xFFFFFFFF
    assert g.mmio.writes == []


def test_triple_fault_is_shutdown(guest_irqchip: Guest) -> None:
    """A page fault with an empty IDT: #PF -> #GP -> #DF -> triple fault."""
    g = guest_irqchip
    g.load64("""
        mov rax, 0x7f0000000000
        mov rax, [rax]
        hlt
    """)
    result = g.runner.run(timeout=LONG_TIMEOUT)
    assert result.reason is ExitReason.SHUTDOWN, result.one_line()
    assert "triple fault" in result.detail


def test_int3_in_ring0(guest_irqchip: Guest) -> None:
    """INT3 in ring 0: PVM cannot emulate it (INTERNAL_ERROR with RIP and the bytes); on
    hardware KVM it is a #BP with an empty IDT, hence a triple fault."""
    g = guest_irqchip
    code = g.load64("""
        nop
        nop
        int3
        hlt
    """)
    result = g.runner.run(timeout=LONG_TIMEOUT)
    if not host_is_emulating():
        assert result.reason is ExitReason.SHUTDOWN, result.one_line()
        return
    assert result.reason is ExitReason.INTERNAL_ERROR, result.one_line()
    assert result.registers["rip"] == CODE_GPA + code.index(b"\xcc")
    assert result.instruction_bytes is not None
    assert result.instruction_bytes[:2] == b"\xcc\xf4"
    assert result.symbol == "guest_code+0x2"
    line = result.one_line()
    assert "rip=0x10002 <guest_code+0x2>" in line
    assert "bytes=cc f4" in line


def test_timeout_then_inspect_and_resume(guest_irqchip: Guest) -> None:
    g = guest_irqchip
    code = g.load64("""
        xor eax, eax
    1:  inc rax
        jmp 1b
    """)
    first = g.runner.run(timeout=0.5)
    assert first.reason is ExitReason.TIMEOUT, first.one_line()
    assert CODE_GPA <= first.registers["rip"] < CODE_GPA + len(code)
    rax_then = g.vcpu.get_register(Register.RAX)
    assert rax_then == first.registers["rax"]
    assert rax_then > 0
    # Change state while stopped, then resume: the guest continues from where it was.
    g.vcpu.set_register(Register.RAX, 1 << 40)
    second = g.runner.run(timeout=0.5)
    assert second.reason is ExitReason.TIMEOUT
    assert second.registers["rax"] > 1 << 40


def test_request_stop_from_another_thread(guest_irqchip: Guest) -> None:
    g = guest_irqchip
    g.load64("""
    1:  inc rbx
        jmp 1b
    """)
    started = threading.Event()
    results = []

    def vcpu_thread() -> None:
        started.set()
        results.append(g.runner.run(timeout=LONG_TIMEOUT))

    t = threading.Thread(target=vcpu_thread)
    t.start()
    started.wait()
    t.join(timeout=0.3)  # let the guest spin a little (the loop has no exits to wait for)
    g.runner.request_stop("test asked")
    t.join(timeout=LONG_TIMEOUT)
    assert not t.is_alive(), "request_stop did not end the run"
    (result,) = results
    assert result.reason is ExitReason.STOPPED, result.one_line()
    assert result.detail == "test asked"
    rbx = g.vcpu.get_register(Register.RBX)
    # Resumable from the main thread, too.
    again = g.runner.run(timeout=0.3)
    assert again.reason is ExitReason.TIMEOUT
    assert again.registers["rbx"] > rbx


def test_stop_requested_before_run_ends_next_run_at_once(guest_irqchip: Guest) -> None:
    g = guest_irqchip
    g.load64("1: jmp 1b")
    g.runner.request_stop("early")
    result = g.runner.run(timeout=LONG_TIMEOUT)
    assert (result.reason, result.detail) == (ExitReason.STOPPED, "early")
    assert result.registers["rip"] == CODE_GPA


class ResetOnWrite:
    """Like the i8042's 0xFE command: a write ends the run with RESET."""

    def __init__(self) -> None:
        self.stop = None

    def port_write(self, offset: int, size: int, value: int) -> None:
        assert self.stop is not None
        self.stop(ExitReason.RESET, f"reset command {value:#x}")

    def port_read(self, offset: int, size: int) -> int:
        return 0


def test_device_stop_hook_completes_the_instruction() -> None:
    with KvmVM(16 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        device = ResetOnWrite()
        bus = PortBus()
        bus.attach_device(0x64, 1, device, "reset")
        runner = Runner(vm, vcpu, bus)
        device.stop = runner.stop  # type: ignore[assignment]
        code = assemble("""
            mov al, 0xfe
            out 0x64, al
        after_out:
            jmp after_out
        """)
        vm.write(CODE_GPA, code)
        enter_long_mode(vm, vcpu)
        result = runner.run(timeout=LONG_TIMEOUT)
        assert result.reason is ExitReason.RESET, result.one_line()
        assert result.detail == "reset command 0xfe"
        assert result.clean
        # KVM finished the OUT before the run returned: RIP is past it.
        assert result.registers["rip"] == CODE_GPA + code.index(b"\xeb\xfe")


class Exploding:
    def port_write(self, offset: int, size: int, value: int) -> None:
        raise RuntimeError("device bug")

    def port_read(self, offset: int, size: int) -> int:
        return 0


def test_device_exception_ends_run_with_error() -> None:
    with KvmVM(16 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        bus = PortBus()
        bus.attach_device(PORT, 1, Exploding(), "bad")
        runner = Runner(vm, vcpu, bus)
        vm.write(CODE_GPA, assemble(f"mov dx, {PORT:#x}\nout dx, al\nhlt"))
        enter_long_mode(vm, vcpu)
        result = runner.run(timeout=LONG_TIMEOUT)
        assert result.reason is ExitReason.ERROR
        assert "RuntimeError: device bug" in result.detail


def test_inconsistent_special_registers_are_reported_before_running() -> None:
    from vmboot.hv import SegmentRegister
    from vmboot.x86.gdt import flat_code64

    with KvmVM(16 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        vcpu.set_segment(SegmentRegister.CS, flat_code64(0x10))  # 64-bit CS without long mode
        assert vcpu.has_pending_state
        assert vcpu.get_segment(SegmentRegister.CS).l  # reads see what was set
        with pytest.raises(HypervisorError, match=r"cs\.l=1"):
            Runner(vm, vcpu).run(timeout=1)


def test_negative_timeout_is_refused(guest_irqchip: Guest) -> None:
    with pytest.raises(HypervisorError, match="negative"):
        guest_irqchip.runner.run(timeout=-1)


def test_runner_refuses_foreign_vcpu() -> None:
    with KvmVM(4 << 20) as a, KvmVM(4 << 20) as b:
        vcpu = a.create_vcpu(0)
        with pytest.raises(HypervisorError, match="does not belong"):
            Runner(b, vcpu)


def test_boot_plan_programs_the_kvm_vcpu_unchanged() -> None:
    """The boot code's configure_vcpu (written against VirtualCPU) yields a running 64-bit vCPU."""
    from vmboot.linux.configurator.plan import BootPlan

    with KvmVM(64 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        runner = Runner(vm, vcpu)
        code = assemble("""
            mov rax, 0x1122334455667788
            mov rbx, rsi
            hlt
        """, base=0x100000)
        vm.write(0x100000, code)
        plan = BootPlan(load_addr=0x100000, entry_gpa=0x100000, zero_page_gpa=0x90000,
                        cmdline_gpa=0x91000, stack_top_gpa=0x80000, paging_base=0x20000,
                        address_space_gib=4)
        plan.configure_vcpu(vcpu)
        result = runner.run(timeout=2.0)
        assert result.reason is ExitReason.HLT, result.one_line()
        assert result.registers["rax"] == 0x1122334455667788  # a 64-bit immediate: long mode
        assert result.registers["rbx"] == 0x90000
        assert result.registers["cs"] == 0x10
