"""Real gdb attached to a real KASLR kernel through `Machine(gdb=...)`: the stub's qOffsets
slide lines gdb's symbols up with the running kernel without `nokaslr`, memory reads go
through the guest's page tables, and a hardware breakpoint on a system call stops there."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import requires_kvm, shared_kernel_file
from vmboot.config import MachineConfig
from vmboot.gdbstub.server import parse_listen_address
from vmboot.vmm.machine import Machine, RunResult

pytestmark = [pytest.mark.slow, requires_kvm]

CMDLINE = "console=ttyS0 reboot=k panic=-1 vmboot.shell=1"
PROMPT = b"/ # "
BOOT_WAIT = 600.0


@pytest.fixture(scope="module")
def shell_guest() -> Iterator[tuple[Machine, list[RunResult]]]:
    if shutil.which("gdb") is None:
        pytest.fail("gdb is missing (Debian package gdb)")
    config = MachineConfig(shared_kernel_file("tiny-smp-bzImage"),
                           initrd=shared_kernel_file("tiny-initramfs.cpio"), cmdline=CMDLINE)
    machine = Machine.from_config(config, gdb=parse_listen_address("127.0.0.1:0"))
    results: list[RunResult] = []
    with machine:
        thread = threading.Thread(target=lambda: results.append(machine.run(timeout=BOOT_WAIT)),
                                  daemon=True)
        thread.start()
        deadline = time.monotonic() + BOOT_WAIT
        while PROMPT not in bytes(machine.console.data) and time.monotonic() < deadline and not results:
            time.sleep(0.5)
        assert PROMPT in bytes(machine.console.data), bytes(machine.console.data)[-2000:]
        yield machine, results
        machine.request_stop()
        thread.join(timeout=60)


def test_gdb_reads_a_kaslr_kernel_and_stops_at_a_hardware_breakpoint(
        shell_guest: tuple[Machine, list[RunResult]]) -> None:
    machine, results = shell_guest
    assert machine.gdb_server is not None
    where = machine.gdb_server.bound
    done = threading.Event()

    def type_commands() -> None:  # a shell command makes the guest call write()
        while not done.wait(2.0):
            machine.push_input(b"echo typed\n")

    typist = threading.Thread(target=type_commands, daemon=True)
    gdb = subprocess.Popen(
        ["gdb", "-nx", "-batch", "-ex", "set confirm off",
         "-ex", f"file {shared_kernel_file('tiny-smp-vmlinux')}",
         "-ex", f"target remote {where}",
         "-ex", "info registers rip cr3",
         "-ex", "x/s &init_uts_ns",
         "-ex", "x/s (char *)&init_uts_ns + 130",
         "-ex", "info threads",
         "-ex", "hbreak __x64_sys_write",
         "-ex", "continue",
         "-ex", "info symbol $pc",
         "-ex", "stepi",
         "-ex", "info symbol $pc",
         "-ex", "delete",
         "-ex", "detach"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    typist.start()
    try:
        out, _ = gdb.communicate(timeout=300)
    finally:
        done.set()
        if gdb.poll() is None:
            gdb.kill()
    # init_uts_ns (.data) starts with its utsname: the symbol, the KASLR offset gdb applied
    # from qOffsets, and the stub's page walk all have to be right to read these.
    assert '<init_uts_ns>:\t"Linux"' in out, out
    assert '"6.1.192"' in out, out
    # The vCPU's pc named through the slide: mostly native_safe_halt (idle), but the stop can
    # land in whatever interrupt the idle CPU is taking at that moment.
    assert re.search(r"^rip +0x[0-9a-f]+ +0x[0-9a-f]+ <[a-z_][a-z0-9_.]*(\+\d+)?>$", out, re.M), out
    assert "Breakpoint 1, " in out and "__x64_sys_write" in out, out
    assert "__x64_sys_write + " in out or "__x64_sys_write in section" in out, out
    assert not results, "the guest must still be running after gdb detached"
    machine.push_input(b"echo after-$((6*7))\n")
    deadline = time.monotonic() + 120
    while b"after-42" not in bytes(machine.console.data) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"after-42" in bytes(machine.console.data)
