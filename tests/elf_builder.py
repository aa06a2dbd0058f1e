"""A minimal ELF64 writer for tests: an ELF header, program headers, segment bytes and notes.

Every field can be overridden, so tests can build both well-formed kernels and broken ones
(bad magic, big-endian, bad e_phoff, odd note sizes, overlapping segments...). Layout:
ELF header (64 bytes) at 0, program headers at ``phoff`` (default 64), then each segment's
file bytes at its ``offset`` (default: packed after the headers, 16-byte aligned).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
NHDR = struct.Struct("<III")
PT_LOAD = 1
PT_NOTE = 4
PF_X, PF_W, PF_R = 1, 2, 4
ET_EXEC = 2
EM_X86_64 = 62
XEN_PHYS32_ENTRY = 18


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    """One ELF note: header, NUL-terminated name and descriptor, each padded to 4 bytes."""
    name_z = name + b"\0"

    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 4)

    return NHDR.pack(len(name_z), len(desc), ntype) + pad(name_z) + pad(desc)


def pvh_note(entry: int, size: int = 8) -> bytes:
    return note(b"Xen", XEN_PHYS32_ENTRY, entry.to_bytes(size, "little"))


@dataclass
class Segment:
    type: int = PT_LOAD
    data: bytes = b""
    paddr: int = 0
    vaddr: int | None = None
    memsz: int | None = None
    flags: int = PF_R | PF_X
    align: int = 0x1000
    offset: int | None = None
    filesz: int | None = None


@dataclass
class ElfSpec:
    segments: list[Segment] = field(default_factory=list)
    entry: int = 0
    ident: bytes | None = None
    e_type: int = ET_EXEC
    machine: int = EM_X86_64
    phoff: int | None = None
    phentsize: int = PHDR.size
    phnum: int | None = None


def build_elf(spec: ElfSpec) -> bytes:
    ident = spec.ident if spec.ident is not None else b"\x7fELF\x02\x01\x01" + bytes(9)
    phoff = EHDR.size if spec.phoff is None else spec.phoff
    phnum = len(spec.segments) if spec.phnum is None else spec.phnum
    pos = EHDR.size + PHDR.size * len(spec.segments)
    placed: list[tuple[Segment, int]] = []
    for seg in spec.segments:
        pos = (pos + 15) & ~15
        off = pos if seg.offset is None else seg.offset
        placed.append((seg, off))
        pos = max(pos, off + len(seg.data))
    out = bytearray(pos)
    out[:EHDR.size] = EHDR.pack(ident, spec.e_type, spec.machine, 1, spec.entry, phoff, 0, 0,
                                EHDR.size, spec.phentsize, phnum, 64, 0, 0)
    for i, (seg, off) in enumerate(placed):
        filesz = len(seg.data) if seg.filesz is None else seg.filesz
        memsz = filesz if seg.memsz is None else seg.memsz
        vaddr = seg.paddr if seg.vaddr is None else seg.vaddr
        hdr = PHDR.pack(seg.type, seg.flags, off, vaddr, seg.paddr, filesz, memsz, seg.align)
        at = EHDR.size + i * PHDR.size
        out[at : at + PHDR.size] = hdr
        out[off : off + len(seg.data)] = seg.data
    return bytes(out)


def simple_kernel(entry: int = 0x100000, *, paddr: int = 0x100000, size: int = 0x3000,
                  bss: int = 0x1000, pvh_entry: int | None = None, pvh_size: int = 8,
                  extra_notes: bytes = b"") -> bytes:
    """An ELF kernel: one PT_LOAD at ``paddr`` (patterned bytes, then ``bss`` zero bytes),
    plus a PT_NOTE with ``extra_notes`` and, if given, a PVH note."""
    body = bytes((i * 7 + 3) & 0xFF for i in range(size))
    segs = [Segment(data=body, paddr=paddr, vaddr=0xFFFFFFFF80000000 + paddr, memsz=size + bss,
                    flags=PF_R | PF_W | PF_X)]
    notes = extra_notes + (b"" if pvh_entry is None else pvh_note(pvh_entry, pvh_size))
    if notes:
        segs.append(Segment(type=PT_NOTE, data=notes, paddr=0, flags=PF_R, align=4))
    return build_elf(ElfSpec(segments=segs, entry=entry))
