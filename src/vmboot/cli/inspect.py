"""``vmboot inspect KERNEL``: decode a kernel image's boot protocol header."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, cast

from vmboot.elf import describe_elf_ident
from vmboot.linux import bootparam as bp
from vmboot.linux.kernel import Kernel, KernelFormat
from vmboot.linux.loader.bzimage import ENTRY_BZIMAGE64, BzImage
from vmboot.linux.loader.detect import load_kernel
from vmboot.linux.loader.elf_kernel import ElfKernel

DESCRIPTION = """\
Decode a kernel image without running it: every field of the boot protocol's setup
header (flags by name), the kernel version string, how the payload is compressed,
the default load and 64-bit entry addresses, and which entries vmboot can use
(bzimage64, and elf64/pvh through the payload decompressed on the host).
"""

EPILOG = """\
examples:
  vmboot inspect /boot/vmlinuz-$(uname -r)
  vmboot inspect bzImage --json | jq .setup_header.init_size

With --json, the object has the keys kernel, format, kernel_version (the version
string), protocol, compression, default_load_address, entry_point, entry_64 {ok, reason},
entries {bzimage64, elf64, pvh: {address, usable, reason}} and default_entry (elf64 and
pvh decompress the payload on the host: vmboot inspect decompresses it to list them),
loadflags / xloadflags (names), and setup_header with every struct setup_header field
under its bootparam.h name (there, kernel_version is the header's pointer field).
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect",
        help="decode a kernel's boot protocol header",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kernel", help="a bzImage (e.g. arch/x86/boot/bzImage, /boot/vmlinuz-*)")
    p.add_argument("--json", action="store_true", help="print one JSON object for programs")
    p.set_defaults(func=run)


def describe_bzimage(kernel: BzImage) -> dict[str, Any]:
    """Everything ``inspect`` reports about a bzImage, JSON-ready."""
    h = kernel.setup_header
    load = kernel.default_load_address()
    entry = kernel.check_64bit_entry()
    return {
        "kernel": kernel.name,
        "format": kernel.format,
        "kernel_version": kernel.kernel_version,
        "protocol": h.version_string,
        "compression": kernel.compression,
        "default_load_address": load,
        "entry_point": kernel.entry_point(load),
        "entry_64": {"ok": entry.ok, "reason": entry.reason},
        "entries": {mode: {"address": e.address, "usable": e.usable, "reason": e.reason}
                    for mode, e in kernel.entries().items()},
        "default_entry": ENTRY_BZIMAGE64,
        "relocatable": h.relocatable,
        "init_size": kernel.init_size,
        "loadflags": h.loadflag_names(),
        "xloadflags": h.xloadflag_names(),
        "setup_header": h.as_dict(),
        "undefined_fields": [f.name for f in bp.SETUP_HEADER_FIELDS if not h.is_defined(f.name)],
    }


def _annotation(kernel: BzImage, name: str) -> str:
    h = kernel.setup_header
    notes = {
        "setup_sects": f"real-mode part {h.setup_size:#x} bytes" + (" (0 means 4)" if not
                                                                    h.setup_sects else ""),
        "boot_flag": "ok" if h.boot_flag == bp.BOOT_FLAG_MAGIC else "BAD",
        "header": repr(h.header.to_bytes(4, "little").decode("latin-1")),
        "version": f"protocol {h.version_string}",
        "kernel_version": repr(kernel.kernel_version),
        "loadflags": " | ".join(h.loadflag_names()) or "none",
        "xloadflags": " | ".join(h.xloadflag_names()) or "none",
        "relocatable_kernel": "yes" if h.relocatable else "no",
        "min_alignment": f"{1 << h.min_alignment:#x}" if h.is_defined("min_alignment") else "",
        "kernel_alignment": f"{h.kernel_alignment >> 20} MiB" if h.kernel_alignment >= 1 << 20 else "",
        "init_size": f"{h.init_size / (1 << 20):.1f} MiB",
        "payload_length": f"{kernel.compression}",
        "pref_address": f"{h.pref_address >> 20} MiB" if h.pref_address else "",
    }
    return notes.get(name, "")


def render_text(kernel: BzImage) -> str:
    """The text form of ``vmboot inspect`` for a bzImage."""
    return "\n".join(render_lines(kernel))


def render_lines(kernel: BzImage) -> list[str]:
    """Human-readable lines describing a bzImage: its header, entries and every field."""
    info = describe_bzimage(kernel)
    h = kernel.setup_header
    lines = [
        f"kernel:               {kernel.name}",
        f"format:               bzImage, boot protocol {info['protocol']}",
        f"version:              {info['kernel_version'] or '(none in header)'}",
        f"payload compression:  {info['compression']}",
        f"default load address: {info['default_load_address']:#x}",
        f"64-bit entry point:   {info['entry_point']:#x}",
        f"64-bit entry usable:  {'yes' if info['entry_64']['ok'] else 'NO'} "
        f"({info['entry_64']['reason']})",
        "entries (vmboot run --entry):",
    ]
    lines += entry_lines(info["entries"], info["default_entry"])
    lines += ["", "setup header (struct setup_header):"]
    for f in bp.SETUP_HEADER_FIELDS:
        value = getattr(h, f.name)
        width = 2 + 2 * f.size
        text = f"{value:#0{width}x}"
        if not h.is_defined(f.name):
            note = f"(not defined before protocol {f.since >> 8}.{f.since & 0xFF:02d})"
        else:
            note = _annotation(kernel, f.name)
        lines.append(f"  {f.offset:#05x} {f.name:<22} {text:<20} {note}".rstrip())
    return lines


_FLAG_LETTERS = ((4, "R"), (2, "W"), (1, "E"))
_SEGMENT_TYPES = {0: "NULL", 1: "LOAD", 2: "DYNAMIC", 3: "INTERP", 4: "NOTE", 6: "PHDR", 7: "TLS",
                  0x6474E550: "GNU_EH_FRAME", 0x6474E551: "GNU_STACK", 0x6474E552: "GNU_RELRO",
                  0x6474E553: "GNU_PROPERTY"}


def describe_elf_kernel(kernel: ElfKernel) -> dict[str, Any]:
    """A JSON-ready description of an ELF vmlinux (for ``vmboot inspect``)."""
    elf = kernel.elf
    entries = kernel.entries()
    return {
        "file": kernel.name,
        "format": kernel.format,
        "size": len(kernel.data),
        "elf": describe_elf_ident(bytes(kernel.data[:64])),
        "e_type": int(elf.e_type),
        "e_entry": kernel.entry_point,
        "pvh_entry": kernel.pvh_entry,
        "pvh_note": None if kernel.pvh_note is None else {
            "desc_size": kernel.pvh_note.desc_size, "source": kernel.pvh_note.source},
        "kernel_version": kernel.kernel_version,
        "load": {"start": kernel.load_start, "end": kernel.load_end},
        "segments": [
            {
                "index": s.index,
                "type": _SEGMENT_TYPES.get(s.type, f"{s.type:#x}"),
                "offset": s.offset,
                "vaddr": s.vaddr,
                "paddr": s.paddr,
                "filesz": s.filesz,
                "memsz": s.memsz,
                "flags": "".join(ch if s.flags & bit else " " for bit, ch in _FLAG_LETTERS).rstrip(),
                "align": s.align,
            }
            for s in elf.segments
        ],
        "notes": [{"name": n.name, "type": n.type, "desc_size": len(n.desc), "source": n.source}
                  for n in elf.notes()],
        "entries": {mode: {"address": e.address, "usable": e.usable, "reason": e.reason}
                    for mode, e in entries.items()},
        "default_entry": kernel.default_entry,
    }


def entry_lines(entries: dict[str, dict[str, Any]], default_entry: str) -> list[str]:
    """One text line per entry (``vmboot inspect``): mode, address, usable, default, why."""
    lines = []
    for mode, e in entries.items():
        where = "-" if e["address"] is None else f"{e['address']:#x}"
        default = " (default)" if mode == default_entry else ""
        lines.append(f"  {mode:<9} {where:<12} {'usable' if e['usable'] else 'unusable'}{default}: "
                     f"{e['reason']}")
    return lines


def elf_kernel_summary(kernel: ElfKernel) -> list[str]:
    """Human-readable lines describing an ELF vmlinux (the text form of ``vmboot inspect``)."""
    info = describe_elf_kernel(kernel)
    lines = [
        f"{info['file']}: {info['format']} ({info['elf']}, {info['size']} bytes)",
        f"kernel version: {info['kernel_version'] or '(no linux_banner found)'}",
        f"e_entry: {info['e_entry']:#x}",
        "PVH entry: " + ("none" if info["pvh_entry"] is None else f"{info['pvh_entry']:#x}"),
        f"loaded at: [{info['load']['start']:#x}, {info['load']['end']:#x})",
        "entries:",
    ]
    lines += entry_lines(info["entries"], info["default_entry"])
    lines.append("program headers:")
    lines.append(f"  {'type':<12} {'offset':>10} {'vaddr':>18} {'paddr':>12} {'filesz':>10} "
                 f"{'memsz':>10} flags")
    for s in info["segments"]:
        lines.append(f"  {s['type']:<12} {s['offset']:#10x} {s['vaddr']:#18x} {s['paddr']:#12x} "
                     f"{s['filesz']:#10x} {s['memsz']:#10x} {s['flags']}")
    lines.append("notes:")
    for n in info["notes"]:
        lines.append(f"  {n['name']:<8} type {n['type']:<5} {n['desc_size']:>3}-byte descriptor "
                     f"({n['source']})")
    return lines


K = TypeVar("K", BzImage, ElfKernel)


@dataclass(frozen=True)
class Describer(Generic[K]):
    """How ``inspect`` shows one kernel format: a JSON-ready object and the text lines."""

    as_json: Callable[[K], dict[str, Any]]
    as_text: Callable[[K], list[str]]

    def json(self, kernel: Kernel) -> dict[str, Any]:
        return self.as_json(cast(K, kernel))

    def text(self, kernel: Kernel) -> list[str]:
        return self.as_text(cast(K, kernel))


DESCRIBERS: Final[dict[KernelFormat, Describer[Any]]] = {
    KernelFormat.BZIMAGE: Describer(describe_bzimage, render_lines),
    KernelFormat.VMLINUX: Describer(describe_elf_kernel, elf_kernel_summary),
}
"""The display of each :class:`~vmboot.linux.kernel.KernelFormat`, keyed by the format a
loaded kernel reports (its ``format`` property)."""


def describe_kernel(kernel: Kernel) -> dict[str, Any]:
    """Everything ``inspect --json`` reports about ``kernel``, whatever its format."""
    return DESCRIBERS[kernel.format].json(kernel)


def kernel_summary(kernel: Kernel) -> list[str]:
    """The text form of ``vmboot inspect`` for ``kernel``, whatever its format."""
    return DESCRIBERS[kernel.format].text(kernel)


def run(args: argparse.Namespace) -> int:
    kernel = load_kernel(args.kernel)
    if args.json:
        print(json.dumps(describe_kernel(kernel), indent=2))
    else:
        print("\n".join(kernel_summary(kernel)))
    return 0
