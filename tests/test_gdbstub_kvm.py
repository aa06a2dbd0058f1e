"""The gdb stub on a real KVM guest: real gdb interrupts it, sets a hardware breakpoint,
steps, reads memory, detaches, and the guest runs on to its end."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest

from conftest import require_tool, requires_kvm
from kvm_helpers import CODE_GPA, assemble_with_symbols, enter_long_mode, need_binutils
from vmboot.devices.bus import MmioBus, PortBus
from vmboot.gdbstub.address import parse_listen_address
from vmboot.gdbstub.server import GdbServer
from vmboot.hv.kvm import KvmVM, host_is_emulating
from vmboot.vmm.exits import ExitReason, VmExit
from vmboot.vmm.gdb_control import GdbControl, run_under_debugger
from vmboot.vmm.runner import Runner

pytestmark = [requires_kvm, pytest.mark.kvm]

GDB = shutil.which("gdb")
DONE_PORT = 0x501
COUNTER = 0x9000
SPINS = 3_000_000

SOURCE = f"""
.globl _start
_start:
    xor ecx, ecx
spin:
    inc rcx
    mov [{COUNTER:#x}], rcx
    cmp rcx, {SPINS}
    jb spin
reached:
    mov eax, 7
    mov ebx, 8
    mov dx, {DONE_PORT:#x}
    out dx, al
    hlt
"""


class DonePort:
    """Writing the port ends the run as a power-off."""

    runner: Runner | None = None

    def port_write(self, offset: int, size: int, value: int) -> None:
        assert self.runner is not None
        self.runner.stop(ExitReason.POWEROFF, "done port")

    def port_read(self, offset: int, size: int) -> int:
        return 0xFF


@pytest.fixture
def gdb_guest() -> Iterator[tuple[GdbControl, GdbServer, dict[str, int], list[VmExit]]]:
    require_tool("gdb", "gdb")
    need_binutils()
    code, symbols = assemble_with_symbols(SOURCE)
    addresses = {line.split()[2]: int(line.split()[0], 16)
                 for line in symbols.decode().splitlines() if len(line.split()) == 3}
    with KvmVM(16 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        vm.write(CODE_GPA, code)
        enter_long_mode(vm, vcpu)
        port_bus = PortBus()
        done = DonePort()
        port_bus.attach_device(DONE_PORT, 1, done, "done")
        runner = Runner(vm, vcpu, port_bus, MmioBus())
        done.runner = runner
        control = GdbControl([vcpu], request_stop=lambda cpu: runner.request_stop("debugger"),
                             watchpoints=not host_is_emulating())
        server = GdbServer(control, parse_listen_address("127.0.0.1:0"))
        server.start()
        results: list[VmExit] = []
        thread = threading.Thread(target=lambda: results.append(
            run_under_debugger(runner, control, 0, timeout=120)), daemon=True)
        thread.start()
        try:
            yield control, server, addresses, results
        finally:
            server.close()
            runner.request_stop("test over")
            thread.join(timeout=30)


def test_gdb_breaks_steps_reads_and_detaches(
        gdb_guest: tuple[GdbControl, GdbServer, dict[str, int], list[VmExit]]) -> None:
    assert GDB is not None
    _control, server, addresses, results = gdb_guest
    reached = addresses["reached"]
    out = subprocess.run(
        [GDB, "-nx", "-batch", "-ex", "set confirm off",
         "-ex", f"target remote 127.0.0.1:{server.bound.port}",
         "-ex", f"hbreak *{reached:#x}",
         "-ex", "continue",
         "-ex", "p/x $pc",
         "-ex", f"x/gx {COUNTER:#x}",
         "-ex", "stepi",
         "-ex", "p/x $pc",
         "-ex", "p/x $rax",
         "-ex", "stepi",
         "-ex", "p/x $rbx",
         "-ex", "delete",
         "-ex", "detach"],
        capture_output=True, text=True, timeout=120, check=False)
    text = out.stdout + out.stderr
    assert f"Breakpoint 1, {reached:#018x}" in text, text
    assert f"{COUNTER:#x}:\t{SPINS:#018x}" in text, text  # the loop ran to the end first
    assert f"$2 = {reached + 5:#x}" in text, text  # one instruction (mov eax, 7: 5 bytes) later
    assert "$3 = 0x7" in text, text
    assert "$4 = 0x8" in text, text
    for _ in range(300):
        if results:
            break
        threading.Event().wait(0.1)
    assert results and results[0].reason is ExitReason.POWEROFF, results


WATCHED = 0x9000


def test_data_watchpoints_fire_unless_the_host_emulates_ring_0() -> None:
    """The README's claim, measured: a write watchpoint (DR0 + DR7 R/W=01, LEN=8) stops the
    guest at the store on hardware KVM; on a host that emulates guest ring 0 (PVM) the store
    runs through and the guest reaches its done port. The stub offers watchpoints only where
    they fire (GdbControl(watchpoints=not host_is_emulating()))."""
    need_binutils()
    from vmboot.hv.kvm import abi

    code, _ = assemble_with_symbols(f"""
.globl _start
_start:
    mov rdx, 0x1234
    mov [{WATCHED:#x}], rdx
    mov dx, {DONE_PORT:#x}
    out dx, al
    hlt
""")
    with KvmVM(16 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        vm.write(CODE_GPA, code)
        enter_long_mode(vm, vcpu)
        port_bus = PortBus()
        done = DonePort()
        port_bus.attach_device(DONE_PORT, 1, done, "done")
        runner = Runner(vm, vcpu, port_bus, MmioBus())
        done.runner = runner
        dr7 = 0b01 | (0b01 << 16) | (0b10 << 18) | (1 << 9)
        vcpu.set_guest_debug(abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_HW_BP,
                             (WATCHED, 0, 0, 0, 0, 0, 0, dr7))
        result = runner.run(timeout=30)
    expected = ExitReason.POWEROFF if host_is_emulating() else ExitReason.DEBUG
    assert result.reason is expected, result.one_line()
