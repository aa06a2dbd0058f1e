"""The tiny kernel under QEMU (TCG) and under vmboot: the same boot milestones, side by side.

Milestones: the ``Linux version`` line, the ``Command line:``, the E820 map as the kernel
printed it (``BIOS-e820:`` lines), the UART detection line, the initramfs being unpacked,
and the init's ``VMBOOT-INIT-OK`` marker. What is compared:

- version and command line: identical under both;
- the E820 map vmboot's kernel printed equals vmboot's own table exactly (our boot
  protocol code is what the kernel saw); QEMU's usable RAM lies inside ours (SeaBIOS
  keeps a little more for itself);
- both detect the UART as a 16550A at 0x3f8, IRQ 4, unpack the initramfs, and reach init.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from conftest import require_tool, requires_kvm, shared_kernel_file
from vmboot.linux.configurator.e820 import E820Type, default_e820_map
from vmboot.units import MiB
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.machine import Machine

CMDLINE = "console=ttyS0 reboot=k panic=-1"
MEMORY_MIB = 64
INIT_MARKER = "VMBOOT-INIT-OK"
QEMU = "qemu-system-x86_64"
QEMU_TIMEOUT_S = 120
VMBOOT_TIMEOUT_S = 600

_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\] ")
_E820_LINE = re.compile(r"BIOS-e820: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\] (.+)$")

# How Linux names E820 types when it prints the map (arch/x86/kernel/e820.c, e820_print_type).
KERNEL_E820_NAMES = {
    E820Type.RAM: "usable",
    E820Type.RESERVED: "reserved",
    E820Type.ACPI: "ACPI data",
    E820Type.NVS: "ACPI NVS",
    E820Type.UNUSABLE: "unusable",
    E820Type.PMEM: "persistent (type 7)",
    E820Type.PRAM: "persistent (type 12)",
}


@dataclass
class Milestones:
    version: str | None = None
    command_line: str | None = None
    e820: list[tuple[int, int, str]] = field(default_factory=list)
    """(first byte, last byte, kernel's type name), in printed order."""
    uart: str | None = None
    initramfs_unpacked: bool = False
    init_marker: str | None = None


def parse_milestones(console: str) -> Milestones:
    m = Milestones()
    for raw in console.splitlines():
        line = _TIMESTAMP.sub("", raw.strip("\r").split("\x1b[2J")[-1])
        if line.startswith("Linux version ") and m.version is None:
            m.version = line
        elif line.startswith("Command line: ") and m.command_line is None:
            m.command_line = line.removeprefix("Command line: ")
        elif (e := _E820_LINE.match(line)) is not None:
            m.e820.append((int(e[1], 16), int(e[2], 16), e[3].strip()))
        elif line.startswith("serial8250: ttyS0 at"):
            m.uart = line
        elif line.startswith("Unpacking initramfs"):
            m.initramfs_unpacked = True
        elif INIT_MARKER in line and m.init_marker is None:
            m.init_marker = line[line.index(INIT_MARKER):]
    return m


def show(label: str, m: Milestones, seconds: float) -> None:
    print(f"\n== {label}: {seconds:.2f} s wall")
    print(f"  version:      {m.version}")
    print(f"  command line: {m.command_line}")
    for first, last, kind in m.e820:
        print(f"  e820:         [{first:#018x}-{last:#018x}] {kind}")
    print(f"  uart:         {m.uart}")
    print(f"  initramfs:    {'unpacked' if m.initramfs_unpacked else 'NOT unpacked'}")
    print(f"  init:         {m.init_marker}")


def boot_qemu() -> tuple[Milestones, float]:
    require_tool(QEMU, "qemu-system-x86")
    kernel = shared_kernel_file("tiny-bzImage")
    initrd = shared_kernel_file("tiny-initramfs-min.cpio")
    start = time.monotonic()
    proc = subprocess.run(
        [QEMU, "-accel", "tcg", "-nographic", "-no-reboot", "-m", str(MEMORY_MIB),
         "-kernel", str(kernel), "-initrd", str(initrd), "-append", CMDLINE],
        capture_output=True, timeout=QEMU_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - start
    return parse_milestones(proc.stdout.decode("utf-8", "replace")), elapsed


def boot_vmboot() -> tuple[Milestones, float]:
    kernel = shared_kernel_file("tiny-bzImage")
    initrd = shared_kernel_file("tiny-initramfs-min.cpio")
    with Machine(kernel, initrd=initrd, cmdline=CMDLINE, memory=f"{MEMORY_MIB}M") as machine:
        result = machine.run(timeout=VMBOOT_TIMEOUT_S)
    assert result.exit.reason is ExitReason.RESET, (
        f"{result.exit.one_line()}\n--- console tail ---\n{result.console_text[-3000:]}"
    )
    return parse_milestones(result.console_text), result.timings.exit


@pytest.mark.slow
@requires_kvm
def test_same_milestones_under_qemu_tcg_and_vmboot() -> None:
    qemu, qemu_s = boot_qemu()
    ours, ours_s = boot_vmboot()
    show("QEMU -accel tcg (pc, SeaBIOS)", qemu, qemu_s)
    show("vmboot (KVM)", ours, ours_s)

    for label, m in (("qemu", qemu), ("vmboot", ours)):
        assert m.version is not None, f"{label}: no 'Linux version' line"
        assert m.e820, f"{label}: no BIOS-e820 lines"
        assert m.uart is not None and m.uart.endswith("is a 16550A"), f"{label}: {m.uart}"
        assert "I/O 0x3f8 (irq = 4" in m.uart
        assert m.initramfs_unpacked, f"{label}: initramfs not unpacked"
        assert m.init_marker is not None, f"{label}: init never ran"

    assert ours.version == qemu.version
    assert ours.command_line == qemu.command_line == CMDLINE

    # The kernel printed exactly the table vmboot gave it.
    expected = [(e.addr, e.end - 1, KERNEL_E820_NAMES[E820Type(e.type)])
                for e in default_e820_map(0, MEMORY_MIB * MiB)]
    assert ours.e820 == expected

    # QEMU's usable RAM lies inside vmboot's usable RAM, and covers nearly all of it.
    ours_usable = [(a, b) for a, b, kind in ours.e820 if kind == "usable"]
    qemu_usable = [(a, b) for a, b, kind in qemu.e820 if kind == "usable"]
    for a, b in qemu_usable:
        assert any(oa <= a and b <= ob for oa, ob in ours_usable), (
            f"QEMU usable [{a:#x}-{b:#x}] is outside vmboot's usable RAM {ours_usable}"
        )
    qemu_total = sum(b - a + 1 for a, b in qemu_usable)
    ours_total = sum(b - a + 1 for a, b in ours_usable)
    assert ours_total - qemu_total < 1 * MiB


def test_parse_milestones_strips_timestamps_and_screen_clears() -> None:
    console = (
        "\x1bc\x1b[?7l\x1b[2J[    0.000000] Linux version 6.1.192 (vmboot@vmboot) #1\r\n"
        "[    0.000000] Command line: console=ttyS0 reboot=k panic=-1\n"
        "[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable\n"
        "[    0.000000] BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved\n"
        "[    0.716791] Unpacking initramfs...\n"
        "[    0.716791] serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A\n"
        "VMBOOT-INIT-OK uptime=0.90\n"
    )
    m = parse_milestones(console)
    assert m.version == "Linux version 6.1.192 (vmboot@vmboot) #1"
    assert m.command_line == CMDLINE
    assert m.e820 == [(0, 0x9FBFF, "usable"), (0x9FC00, 0x9FFFF, "reserved")]
    assert m.uart is not None and m.uart.endswith("is a 16550A")
    assert m.initramfs_unpacked
    assert m.init_marker == "VMBOOT-INIT-OK uptime=0.90"
    assert parse_milestones("nothing here") == Milestones()
