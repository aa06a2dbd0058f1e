"""Real Linux under vmboot: the tiny 6.1 kernel boots to its init and reboots (exit RESET).

These boot ../shared/kernels/tiny-bzImage (see its README) under the real /dev/kvm,
which on a host whose /dev/kvm is PVM (docs/pvm-hosts.md) runs ring-0 code at ~1 M
instructions/s: each boot takes tens of seconds, so only two configurations run here
(the milestone comparison in test_qemu_milestones.py is a third). Boot times are printed
(``pytest -s`` or ``-rP``), never asserted.
"""

from __future__ import annotations

import pytest

from conftest import requires_kvm, shared_kernel_file
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.machine import Machine, RunResult

BASE_CMDLINE = "console=ttyS0 reboot=k panic=-1"
INIT_MARKER = b"VMBOOT-INIT-OK"
TIMEOUT_S = 600
"""A generous limit: a hung boot ends the test instead of CI."""


def boot(initramfs: str, cmdline: str, memory: str = "64M") -> RunResult:
    kernel = shared_kernel_file("tiny-bzImage")
    initrd = shared_kernel_file(initramfs)
    chunks: list[bytes] = []
    with Machine(kernel, initrd=initrd, cmdline=cmdline, memory=memory,
                 console=chunks.append) as machine:
        result = machine.run(timeout=TIMEOUT_S)
    t = result.timings
    first = "-" if t.first_console_byte is None else f"{t.first_console_byte:.2f} s"
    marker_at = result.console.find(INIT_MARKER)
    print(f"\n[{initramfs}, {memory}, {cmdline!r}] exit={result.exit.one_line()} "
          f"load={t.load:.3f} s first_insn={t.first_instruction:.3f} s first_console={first} "
          f"exit={t.exit:.2f} s console={result.console_total} bytes")
    if marker_at >= 0:
        print("  " + result.console[marker_at:].split(b"\n", 1)[0].decode(errors="replace"))
    assert b"".join(chunks) == result.console  # the streamed console is the captured one
    assert result.exit.reason is ExitReason.RESET, (
        f"{result.exit.one_line()}\n--- console tail ---\n{result.console_text[-3000:]}"
    )
    assert marker_at >= 0, f"no {INIT_MARKER!r} on the console:\n{result.console_text[-3000:]}"
    assert result.console_dropped == 0
    return result


@pytest.mark.slow
@requires_kvm
def test_min_initramfs_quiet_boots_to_init_and_reboots() -> None:
    result = boot("tiny-initramfs-min.cpio", BASE_CMDLINE + " quiet")
    # `quiet` hides most messages, but the kernel prints this one at KERN_EMERG
    assert b"reboot: Restarting system" in result.console


@pytest.mark.slow
@requires_kvm
def test_busybox_initramfs_verbose_detects_16550a_and_reboots() -> None:
    result = boot("tiny-initramfs.cpio", BASE_CMDLINE)
    text = result.console_text
    assert "serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A" in text
    assert "Unpacking initramfs" in text
    assert "reboot: Restarting system" in text
