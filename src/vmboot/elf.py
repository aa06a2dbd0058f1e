"""A small, strict reader for ELF64 little-endian files (vmlinux), in the spirit of Go's debug/elf.

It reads the file header, program headers, section headers, notes and the
symbol table. Every offset and size read from the file is checked against the
file before use; anything out of bounds raises :class:`~vmboot.errors.ElfFormatError`
naming the file, the field, the value and the limit.

The symbol table is returned as a NumPy structured array over the file's bytes
(no per-symbol Python objects), so a 100,000-symbol vmlinux loads in milliseconds.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import IO, TYPE_CHECKING, Any

from vmboot.closeable import Closeable
from vmboot.errors import ElfFormatError

if TYPE_CHECKING:
    import numpy as np

ELF_MAGIC = b"\x7fELF"
EI_CLASS = 4
EI_DATA = 5
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
EM_X86_64 = 62
EM_386 = 3

ET_EXEC = 2
ET_DYN = 3

PT_NULL = 0
PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3
PT_NOTE = 4
PT_PHDR = 6
PT_TLS = 7
PT_GNU_STACK = 0x6474E551

PF_X = 1
PF_W = 2
PF_R = 4

SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_NOTE = 7
SHT_NOBITS = 8
SHN_UNDEF = 0
SHN_ABS = 0xFFF1
SHN_XINDEX = 0xFFFF

STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4

STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_NHDR = struct.Struct("<III")
ELF_HEADER, PROGRAM_HEADER, NOTE_HEADER = _EHDR, _PHDR, _NHDR
"""``Elf64_Ehdr``, ``Elf64_Phdr`` and ``Elf64_Nhdr`` (little-endian), for writers of ELF files."""
EHDR_SIZE = _EHDR.size  # 64
PHDR_SIZE = _PHDR.size  # 56
SHDR_SIZE = _SHDR.size  # 64
SYM_SIZE = 24

@cache
def symbol_dtype() -> np.dtype[Any]:
    """``Elf64_Sym`` as a NumPy dtype (NumPy is imported on first use, not with vmboot.elf)."""
    import numpy as np

    return np.dtype(
        [("st_name", "<u4"), ("st_info", "u1"), ("st_other", "u1"), ("st_shndx", "<u2"),
         ("st_value", "<u8"), ("st_size", "<u8")]
    )


def __getattr__(name: str) -> Any:
    if name == "SYMBOL_DTYPE":  # kept for callers of the constant
        return symbol_dtype()
    raise AttributeError(f"module 'vmboot.elf' has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class ProgramHeader:
    """``Elf64_Phdr``."""

    index: int
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


@dataclass(frozen=True, slots=True)
class SectionHeader:
    """``Elf64_Shdr`` with its name resolved."""

    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


@dataclass(frozen=True, slots=True)
class Note:
    """One ELF note: owner ``name`` (without the NUL), ``type`` and descriptor bytes."""

    name: str
    type: int
    desc: bytes
    source: str
    """``"segment N"`` or the section name where the note was found."""


def describe_elf_ident(head: bytes) -> str | None:
    """A short description of an ELF file's class/endianness/machine, or None if not ELF."""
    if len(head) < 20 or head[:4] != ELF_MAGIC:
        return None
    cls = {ELFCLASS32: "32-bit", ELFCLASS64: "64-bit"}.get(head[EI_CLASS], f"class {head[EI_CLASS]}")
    data = {ELFDATA2LSB: "little-endian", ELFDATA2MSB: "big-endian"}.get(
        head[EI_DATA], f"data encoding {head[EI_DATA]}"
    )
    fmt = "<H" if head[EI_DATA] != ELFDATA2MSB else ">H"
    machine = struct.unpack_from(fmt, head, 18)[0]
    mname = {EM_X86_64: "x86-64", EM_386: "i386", 40: "ARM", 183: "AArch64", 243: "RISC-V"}.get(
        machine, f"machine {machine}"
    )
    return f"ELF {cls} {data} {mname}"


class ElfFile(Closeable):
    """An ELF64 little-endian file held in memory (mmap for paths, bytes for file objects)."""

    def __init__(self, data: bytes | bytearray | memoryview | mmap.mmap, name: str = "<elf>") -> None:
        self.name = name
        self._data = data
        self.buf = memoryview(data)
        self._parse_header()
        self.segments: tuple[ProgramHeader, ...] = self._parse_segments()
        self.sections: tuple[SectionHeader, ...] = self._parse_sections()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def open(cls, source: str | os.PathLike[str] | IO[bytes] | bytes) -> ElfFile:
        """Open a path (memory-mapped), a binary file object, or bytes."""
        if isinstance(source, bytes | bytearray | memoryview):
            return cls(source)
        if isinstance(source, str | os.PathLike):
            name = os.fspath(source)
            with open(name, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise ElfFormatError(f"{name}: empty file, expected an ELF64 file")
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            return cls(mapped, name)
        name = str(getattr(source, "name", "<file object>"))
        data = source.read()
        if not isinstance(data, bytes):
            raise ElfFormatError(f"{name}: file object must be opened in binary mode")
        return cls(data, name)

    def close(self) -> None:
        self.buf.release()
        if isinstance(self._data, mmap.mmap):
            self._data.close()

    # -- bounds-checked access ----------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.buf)

    def _check_range(self, what: str, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > len(self.buf):
            raise ElfFormatError(
                f"{self.name}: {what} [{offset:#x}, {offset + length:#x}) lies outside the file "
                f"({len(self.buf):#x} bytes)"
            )

    def bytes_at(self, what: str, offset: int, length: int) -> memoryview:
        """A view of ``length`` file bytes at ``offset``; ``what`` names them in errors."""
        self._check_range(what, offset, length)
        return self.buf[offset : offset + length]

    # -- header -------------------------------------------------------------------------------
    def _parse_header(self) -> None:
        head = bytes(self.buf[:EHDR_SIZE])
        if len(head) < 4 or head[:4] != ELF_MAGIC:
            raise ElfFormatError(
                f"{self.name}: bad ELF magic {head[:4]!r}, expected {ELF_MAGIC!r}"
            )
        if len(head) < EHDR_SIZE:
            raise ElfFormatError(
                f"{self.name}: truncated ELF header: {len(head)} bytes, need {EHDR_SIZE}"
            )
        kind = describe_elf_ident(head)
        if head[EI_CLASS] != ELFCLASS64:
            raise ElfFormatError(f"{self.name}: {kind}: e_ident[EI_CLASS]={head[EI_CLASS]}, "
                                 f"only ELFCLASS64 (2) is accepted")
        if head[EI_DATA] != ELFDATA2LSB:
            raise ElfFormatError(f"{self.name}: {kind}: e_ident[EI_DATA]={head[EI_DATA]}, "
                                 f"only little-endian (1) is accepted")
        (_, self.e_type, self.e_machine, self.e_version, self.e_entry, self.e_phoff,
         self.e_shoff, self.e_flags, self.e_ehsize, self.e_phentsize, self.e_phnum,
         self.e_shentsize, self.e_shnum, self.e_shstrndx) = _EHDR.unpack(head)
        if self.e_machine != EM_X86_64:
            raise ElfFormatError(f"{self.name}: {kind}: e_machine={self.e_machine}, "
                                 f"only EM_X86_64 ({EM_X86_64}) is accepted")

    def _parse_segments(self) -> tuple[ProgramHeader, ...]:
        if self.e_phnum == 0:
            return ()
        if self.e_phentsize != PHDR_SIZE:
            raise ElfFormatError(
                f"{self.name}: e_phentsize={self.e_phentsize}, expected {PHDR_SIZE}"
            )
        self._check_range(f"program header table (e_phoff={self.e_phoff:#x}, "
                          f"e_phnum={self.e_phnum})", self.e_phoff, self.e_phnum * PHDR_SIZE)
        out = []
        for i in range(self.e_phnum):
            fields = _PHDR.unpack_from(self.buf, self.e_phoff + i * PHDR_SIZE)
            out.append(ProgramHeader(i, *fields))
        return tuple(out)

    def _parse_sections(self) -> tuple[SectionHeader, ...]:
        if self.e_shoff == 0 or self.e_shnum == 0:
            return ()
        if self.e_shentsize != SHDR_SIZE:
            raise ElfFormatError(
                f"{self.name}: e_shentsize={self.e_shentsize}, expected {SHDR_SIZE}"
            )
        self._check_range(f"section header table (e_shoff={self.e_shoff:#x}, "
                          f"e_shnum={self.e_shnum})", self.e_shoff, self.e_shnum * SHDR_SIZE)
        raw = [_SHDR.unpack_from(self.buf, self.e_shoff + i * SHDR_SIZE)
               for i in range(self.e_shnum)]
        names = b""
        if 0 < self.e_shstrndx < len(raw):
            s = raw[self.e_shstrndx]
            if s[1] != SHT_NOBITS:
                names = bytes(self.bytes_at(f"section-name table (section {self.e_shstrndx})",
                                            s[4], s[5]))
        out = []
        for i, (name_off, *rest) in enumerate(raw):
            name = _cstr(names, name_off) if names else ""
            out.append(SectionHeader(i, name, *rest))
        return tuple(out)

    # -- sections -----------------------------------------------------------------------------
    def section(self, name: str) -> SectionHeader | None:
        """The first section called ``name``, or None."""
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def section_data(self, sec: SectionHeader | str) -> memoryview:
        """The file bytes of a section (empty for SHT_NOBITS)."""
        if isinstance(sec, str):
            found = self.section(sec)
            if found is None:
                raise ElfFormatError(f"{self.name}: no section named {sec!r}")
            sec = found
        if sec.type == SHT_NOBITS:
            return memoryview(b"")
        return self.bytes_at(f"section {sec.name or sec.index}", sec.offset, sec.size)

    def segment_data(self, seg: ProgramHeader) -> memoryview:
        """The file bytes of a segment (``p_filesz`` of them)."""
        return self.bytes_at(f"segment {seg.index} (p_offset={seg.offset:#x}, "
                             f"p_filesz={seg.filesz:#x})", seg.offset, seg.filesz)

    # -- notes --------------------------------------------------------------------------------
    def notes(self) -> Iterator[Note]:
        """Notes from PT_NOTE segments, or from SHT_NOTE sections when there are no segments.

        Note headers, names and descriptors are 4-byte aligned in ELF64 kernels whatever
        ``p_align`` says (Linux's vmlinux uses 4), which is what this reader assumes.
        """
        sources: list[tuple[str, memoryview]] = []
        for seg in self.segments:
            if seg.type == PT_NOTE:
                sources.append((f"segment {seg.index}", self.segment_data(seg)))
        if not sources:
            for sec in self.sections:
                if sec.type == SHT_NOTE:
                    sources.append((sec.name or f"section {sec.index}", self.section_data(sec)))
        for where, data in sources:
            yield from _parse_notes(self.name, where, data)

    # -- symbols ------------------------------------------------------------------------------
    def symbol_table(self, name: str = ".symtab") -> tuple[np.ndarray[Any, Any], memoryview]:
        """``(symbols, strtab)``: a structured array (``symbol_dtype()``) and the string table."""
        sec = self.section(name)
        if sec is None:
            raise ElfFormatError(f"{self.name}: no {name} section (stripped vmlinux?)")
        if sec.entsize not in (0, SYM_SIZE):
            raise ElfFormatError(
                f"{self.name}: {name} sh_entsize={sec.entsize}, expected {SYM_SIZE}"
            )
        if sec.size % SYM_SIZE:
            raise ElfFormatError(
                f"{self.name}: {name} size {sec.size:#x} is not a multiple of {SYM_SIZE}"
            )
        if not 0 < sec.link < len(self.sections):
            raise ElfFormatError(
                f"{self.name}: {name} sh_link={sec.link} names no section (0..{len(self.sections) - 1})"
            )
        data = self.section_data(sec)
        strtab = self.section_data(self.sections[sec.link])
        import numpy as np

        syms = np.frombuffer(data, dtype=symbol_dtype())
        return syms, strtab


def _cstr(table: bytes | memoryview, offset: int) -> str:
    if offset >= len(table):
        return ""
    raw = bytes(table[offset : offset + 4096])
    end = raw.find(b"\0")
    return raw[: end if end >= 0 else len(raw)].decode("utf-8", "replace")


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _parse_notes(fname: str, where: str, data: memoryview) -> Iterator[Note]:
    pos = 0
    n = len(data)
    while pos + _NHDR.size <= n:
        namesz, descsz, ntype = _NHDR.unpack_from(data, pos)
        name_start = pos + _NHDR.size
        desc_start = name_start + _align4(namesz)
        desc_end = desc_start + descsz
        if desc_end > n:
            raise ElfFormatError(
                f"{fname}: note at offset {pos:#x} of {where} (namesz={namesz}, descsz={descsz}) "
                f"runs past the end of its {n:#x}-byte container"
            )
        name = bytes(data[name_start : name_start + namesz]).rstrip(b"\0").decode("ascii", "replace")
        yield Note(name, ntype, bytes(data[desc_start:desc_end]), where)
        pos = _align4(desc_end)
