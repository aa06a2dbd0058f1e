"""Helpers shared by the side-by-side benchmarks against QEMU (memory, startup, exit_vs_qemu).

- :func:`watch` starts a VMM process, timestamps console markers as they arrive on its stdout,
  samples its memory from ``/proc/PID`` at a chosen marker, and reaps it with ``os.wait4`` so
  the kernel's own peak RSS of the process (``ru_maxrss``) comes back too;
- :func:`build_loop_guest` assembles a tiny PVH guest (GNU as/ld) that prints a start marker,
  writes N bytes to an I/O port nothing claims, prints an end marker and resets the machine
  through the i8042 (``outb $0xfe, $0x64``), so QEMU ``-M pc -no-reboot`` and ``vmboot run``
  both exit by themselves.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KERNELS = Path(os.environ.get("VMBOOT_SHARED_KERNELS", REPO.parent / "shared" / "kernels"))
QEMU = "qemu-system-x86_64"
QEMU_KVM = [QEMU, "-enable-kvm", "-cpu", "host,-arch-capabilities", "-nographic", "-no-reboot"]
QEMU_MACHINES = {"QEMU microvm (KVM)": ["-M", "microvm,acpi=off"],
                 "QEMU pc (KVM)": ["-M", "pc", "-net", "none"]}
"""QEMU peers. microvm has no i8042, so a reset does not end it: it is killed after the last
marker. ``-net none`` keeps iPXE's option ROM out of pc's start-up."""

START = b"EXIT-LOOP-START"
END = b"EXIT-LOOP-END"
UNUSED_PORT = 0x500
"""Claimed by nothing in QEMU pc/microvm (unassigned I/O) nor in vmboot's PC (bus default)."""


def vmboot_run(kernel: Path, memory_mib: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vmboot", "run", str(kernel), "-m", f"{memory_mib}M", *extra]


def qemu_run(peer: str, kernel: Path, memory_mib: int, *extra: str) -> list[str]:
    return [*QEMU_KVM, *QEMU_MACHINES[peer], "-m", str(memory_mib), "-kernel", str(kernel), *extra]


@dataclass
class Watched:
    """What :func:`watch` saw of one process. Times are seconds since just before ``Popen``."""

    markers: dict[str, float]
    exited: float | None
    """When the process ended by itself (None: killed after the last marker)."""
    maxrss_kib: int
    """``ru_maxrss`` from ``wait4``: the process's peak resident set, KiB."""
    status: dict[str, int] = field(default_factory=dict)
    """``/proc/PID/status`` memory lines (KiB) sampled at ``sample_at``, plus ``GuestRamRss``:
    the Rss of the largest anonymous mapping at least as big as the guest RAM (its RAM)."""
    output: bytes = b""


def _status(pid: int, ram_kib: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSize"):
                out[key] = int(rest.split()[0])
        best = (0, 0)
        size = rss = 0
        anon = False
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            if "-" in line.split(" ", 1)[0] and not line[0].isupper():
                if anon and size >= ram_kib:
                    best = max(best, (size, rss))
                parts = line.split()
                anon = len(parts) < 6
                size = rss = 0
            elif line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
        if anon and size >= ram_kib:
            best = max(best, (size, rss))
        out["GuestRamMapping"], out["GuestRamRss"] = best
    except OSError:
        pass
    return out


def watch(cmd: list[str], markers: list[bytes], *, kill_after_last: bool = False,
          sample_at: bytes | None = None, ram_mib: int = 0, timeout: float = 300.0) -> Watched:
    """Run ``cmd`` until it exits (or, with ``kill_after_last``, until the last marker)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert isinstance(proc.stdout, io.BufferedReader)  # default bufsize: buffered, with read1
    seen = bytearray()
    found: dict[str, float] = {}
    status: dict[str, int] = {}
    killed = False
    try:
        while True:
            chunk = proc.stdout.read1(65536)
            now = time.perf_counter() - t0
            if not chunk:
                break
            seen += chunk
            for m in markers:
                if m.decode() not in found and m in seen:
                    found[m.decode()] = now
                    if m == sample_at:
                        status = _status(proc.pid, ram_mib * 1024)
            if kill_after_last and len(found) == len(markers):
                break
            if now > timeout:
                break
    finally:
        if kill_after_last or time.perf_counter() - t0 > timeout:  # no poll(): it would reap
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            killed = True
        _, _, usage = os.wait4(proc.pid, 0)
        exited = None if killed else time.perf_counter() - t0
        proc.returncode = 0
        proc.stdout.close()
    missing = [m.decode() for m in markers if m.decode() not in found]
    if missing:
        tail = bytes(seen[-2000:]).decode(errors="replace")
        raise SystemExit(f"no {missing} from: {' '.join(cmd)}\n{tail}")
    return Watched(found, exited, usage.ru_maxrss, status, bytes(seen))


GUEST_S = r"""
        .section .note.Xen, "a"
        .balign 4
        .long   4, 8, 18            /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz  "Xen"
        .balign 4
        .quad   pvh_entry
        .balign 4

        .section .text, "ax"
        .code32
        .globl  pvh_entry
pvh_entry:                          /* PVH: 32-bit protected mode, paging off, no stack */
        cli
        movl    $pvh_entry, %esp    /* a stack just below the image (RAM in both VMMs) */
        movl    $msg_start, %esi
        call    puts
        movl    $EXITS, %ecx
        movw    $PORT, %dx
        testl   %ecx, %ecx
        jz      2f
1:      outb    %al, %dx            /* one exit to the VMM each */
        decl    %ecx
        jnz     1b
2:      movl    $msg_end, %esi
        call    puts
        movb    $0xfe, %al          /* i8042: pulse reset (QEMU -no-reboot / vmboot: exit) */
        outb    %al, $0x64
3:      hlt
        jmp     3b
puts:   movw    $0x3f8, %dx         /* COM1 THR, no set-up needed */
4:      lodsb
        testb   %al, %al
        jz      5f
        outb    %al, %dx
        jmp     4b
5:      ret
msg_start: .asciz "EXIT-LOOP-START\n"
msg_end:   .asciz "EXIT-LOOP-END\n"
"""

GUEST_LD = """
OUTPUT_FORMAT("elf64-x86-64")
OUTPUT_ARCH(i386:x86-64)
ENTRY(pvh_entry)
PHDRS { image PT_LOAD FLAGS(7); notes PT_NOTE FLAGS(4); }
SECTIONS {
  . = 0x1000000;
  .text : { *(.text) *(.rodata) *(.data) *(.bss) } :image
  .notes : { *(.note.Xen) } :image :notes
  /DISCARD/ : { *(.note.GNU-stack) *(.note.gnu.*) *(.comment) *(.eh_frame) }
}
"""


def build_loop_guest(out_dir: Path, exits: int, port: int = UNUSED_PORT) -> Path:
    """Assemble the PVH loop guest for ``exits`` port writes; returns the ELF's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    src, lds = out_dir / "loop.S", out_dir / "loop.ld"
    src.write_text(GUEST_S)
    lds.write_text(GUEST_LD)
    obj, elf = out_dir / f"loop-{exits}.o", out_dir / f"loop-{exits}.elf"
    subprocess.run(["as", "--64", "--defsym", f"EXITS={exits}", "--defsym", f"PORT={port:#x}",
                    "-o", str(obj), str(src)], check=True)
    subprocess.run(["ld", "-n", "-T", str(lds), "--build-id=none", "--no-warn-rwx-segments",
                    "-o", str(elf), str(obj)], check=True)
    return elf
