"""Seed inputs for the fuzz targets, derived at run time from the real kernels in
``../shared/kernels`` (cut down to a few KiB) plus small synthetic files for the formats
and versions the real kernels do not cover.

Nothing here is large and nothing is written anywhere; :mod:`fuzz.corpus.make_corpus`
writes these seeds into corpus directories for atheris.
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import gzip
import io
import lzma
import struct
from collections.abc import Callable
from pathlib import Path

from fuzz.harness import SHARED_KERNELS
from vmboot.linux import bootparam as bp

PM_KEEP = 0x400
"""Bytes of the real protected-mode code kept in a cut-down bzImage (covers the 64-bit entry)."""
PAYLOAD_KEEP = 0x200
"""Bytes of the real compressed payload kept (its magic and first block header)."""
TEXT = 0xFFFF_FFFF_8100_0000


def shared(name: str) -> bytes | None:
    path = SHARED_KERNELS / name
    try:
        return path.read_bytes()
    except OSError:
        return None


def _debian_kernel() -> Path | None:
    """The cached Debian cloud kernel, if tests/debian_kernel.py fetched one (never fetches)."""
    root = Path.home() / ".cache" / "vmboot" / "debian-kernels"
    found = sorted(root.glob("*/boot/vmlinuz-*"))
    return found[-1] if found else None


# -- bzImage -----------------------------------------------------------------------------------
def cut_bzimage(image: bytes) -> bytes | None:
    """A real bzImage cut down to its setup part, the start of the protected-mode code and
    the first bytes of the compressed payload, with syssize/payload_* patched to match."""
    if len(image) < 0x400 or image[0x202:0x206] != bp.HEADER_MAGIC:
        return None
    setup_sects = image[0x1F1] or bp.DEFAULT_SETUP_SECTS
    setup_size = (setup_sects + 1) * bp.SECTOR_SIZE
    pm = image[setup_size:]
    payload_offset, payload_length = struct.unpack_from("<II", image, 0x248)
    payload = pm[payload_offset : payload_offset + min(payload_length, PAYLOAD_KEEP)]
    new_pm = bytearray(pm[:PM_KEEP].ljust(PM_KEEP, b"\0") + payload)
    new_pm += bytes(-len(new_pm) % 16)
    out = bytearray(image[:setup_size]) + new_pm
    struct.pack_into("<I", out, 0x1F4, len(new_pm) // 16)  # syssize
    struct.pack_into("<II", out, 0x248, PM_KEEP, len(payload))
    return bytes(out)


def synthetic_bzimage(version: int = 0x020F, *, setup_sects: int = 4, loadflags: int = bp.LOADED_HIGH,
                      xloadflags: int = bp.XLF_KERNEL_64 | bp.XLF_CAN_BE_LOADED_ABOVE_4G,
                      init_size: int = 0x100000, pref_address: int = 0x1000000,
                      relocatable: int = 1, payload: bytes = b"\x1f\x8b\x08\x00" + bytes(60)) -> bytes:
    """A small bzImage of boot protocol ``version`` (fields it does not define left zero)."""
    setup_size = ((setup_sects or bp.DEFAULT_SETUP_SECTS) + 1) * bp.SECTOR_SIZE
    img = bytearray(setup_size)
    vs = b"6.99.0-fuzz (fuzz@vmboot) #1\0"
    img[0x400 : 0x400 + len(vs)] = vs
    pm = bytearray(0x800)
    pm[0x200:0x204] = b"\xf4\xeb\xfd\x90"
    values = {
        "setup_sects": setup_sects, "boot_flag": bp.BOOT_FLAG_MAGIC,
        "header": int.from_bytes(bp.HEADER_MAGIC, "little"), "version": version,
        "loadflags": loadflags, "code32_start": bp.HIGH_LOAD_ADDRESS,
        "kernel_version": 0x400 - bp.SECTOR_SIZE, "syssize": len(pm) // 16,
    }
    optional = {
        "initrd_addr_max": 0x7FFFFFFF, "kernel_alignment": 0x200000, "relocatable_kernel": relocatable,
        "min_alignment": 21, "xloadflags": xloadflags, "cmdline_size": 2047,
        "pref_address": pref_address, "init_size": init_size,
    }
    for name, value in optional.items():
        if version >= bp.SETUP_HEADER_FIELD_BY_NAME[name].since:
            values[name] = value
    if version >= bp.PROTOCOL_2_08:
        pm[0x300 : 0x300 + len(payload)] = payload
        values["payload_offset"] = 0x300
        values["payload_length"] = len(payload)
    fields = [f for f in bp.SETUP_HEADER_FIELDS if f.since <= version]
    values["jump"] = 0xEB | ((fields[-1].offset + fields[-1].size - bp.SETUP_HEADER_JUMP_END) << 8)
    for name, value in values.items():
        f = bp.SETUP_HEADER_FIELD_BY_NAME[name]
        img[f.offset : f.offset + f.size] = value.to_bytes(f.size, "little")
    return bytes(img + pm)


@functools.cache
def bzimage_seeds() -> tuple[bytes, ...]:
    seeds: list[bytes] = []
    for name in ("tiny-bzImage", "tiny-bzImage-lz4"):
        data = shared(name)
        cut = cut_bzimage(data) if data else None
        if cut:
            seeds.append(cut)
    deb = _debian_kernel()
    if deb is not None:
        cut = cut_bzimage(deb.read_bytes())
        if cut:
            seeds.append(cut)
    for version in (0x0200, 0x0202, 0x0205, 0x0208, 0x020A, 0x020C, 0x020F):
        seeds.append(synthetic_bzimage(version))
    seeds.append(synthetic_bzimage(relocatable=0, pref_address=0))
    seeds.append(synthetic_bzimage(setup_sects=0, loadflags=0))
    seeds.append(synthetic_bzimage(xloadflags=bp.XLF_KERNEL_64))
    seeds.append(synthetic_bzimage(payload=b"\x02\x21\x4c\x18" + bytes(12)))
    return tuple(seeds)


def bzimage_offsets() -> list[int]:
    offs = [f.offset for f in bp.SETUP_HEADER_FIELDS]
    offs += [0x201, 0x202, 0x206, 0x26C, 0x280, 0x400, 0xA00, 0xC00, 0x4000]
    return sorted(set(offs))


# -- ELF ---------------------------------------------------------------------------------------
_SHDR = struct.Struct("<IIQQQQIIQQ")
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")


def build_elf(sections: list[tuple[str, int, bytes, int, int, int, int]], *, entry: int = TEXT,
              phdrs: list[tuple[int, int, int, int, int, int, int]] | None = None) -> bytes:
    """An ELF64 x86-64 executable. ``sections``: (name, type, data, addr, link, info, entsize);
    ``phdrs``: (type, flags, section index whose data it covers (-1: none), vaddr, paddr,
    memsz extra, align)."""
    names = bytearray(b"\0")
    name_offs = []
    for name, *_ in sections:
        name_offs.append(len(names))
        names += name.encode() + b"\0"
    shstr_name = len(names)
    names += b".shstrtab\0"
    all_secs = [("", 0, b"", 0, 0, 0, 0), *sections, (".shstrtab", 3, bytes(names), 0, 0, 0, 0)]
    name_offs = [0, *name_offs, shstr_name]
    phnum = len(phdrs or [])
    body = bytearray(64 + 56 * phnum)
    data_offs = []
    for _, typ, data, *_ in all_secs:
        body += bytes(-len(body) % 16)
        data_offs.append(len(body) if typ else 0)
        if typ != 8:
            body += data
    body += bytes(-len(body) % 8)
    shoff = len(body)
    for i, (_, typ, data, addr, link, info, entsize) in enumerate(all_secs):
        body += _SHDR.pack(name_offs[i], typ, 2 if addr else 0, addr, data_offs[i], len(data),
                           link, info, 8 if typ else 0, entsize)
    for j, (ptype, flags, sec, vaddr, paddr, extra, align) in enumerate(phdrs or []):
        off, size = (data_offs[sec + 1], len(all_secs[sec + 1][2])) if sec >= 0 else (0, 0)
        struct.pack_into("<IIQQQQQQ", body, 64 + 56 * j, ptype, flags, off, vaddr, paddr, size,
                         size + extra, align)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    body[:64] = _EHDR.pack(ident, 2, 62, 1, entry, 64 if phnum else 0, shoff, 0, 64, 56, phnum, 64,
                           len(all_secs), len(all_secs) - 1)
    return bytes(body)


def _symtab(symbols: list[tuple[str, int, int, int, int]]) -> tuple[bytes, bytes]:
    """(.symtab, .strtab) for (name, value, size, info, shndx)."""
    strtab = bytearray(b"\0")
    out = bytearray(24)
    for name, value, size, info, shndx in symbols:
        off = len(strtab)
        strtab += name.encode() + b"\0"
        out += struct.pack("<IBBHQQ", off, info, 0, shndx, value, size)
    return bytes(out), bytes(strtab)


def _orc(count: int, text: int, v3: bool) -> tuple[bytes, bytes]:
    ips = b"".join(struct.pack("<i", 0x10 * i - 4 * i) for i in range(count))
    call = 2 if v3 else 0
    entries = b"".join(struct.pack("<hhH", 8, 0, 5 | (call << 8)) for _ in range(count))
    return ips, entries


def pvh_note(entry: int = 0x1000000) -> bytes:
    name = b"Xen\0"
    desc = struct.pack("<I", entry)
    return struct.pack("<III", len(name), len(desc), 18) + name + desc  # XEN_ELFNOTE_PHYS32_ENTRY


def synthetic_vmlinux(v3: bool = False, with_notes: bool = True) -> bytes:
    text = b"\xcc" * 0x200
    syms, strtab = _symtab([("startup_64", TEXT, 0x10, 0x12, 1), ("do_thing", TEXT + 0x10, 0x20, 0x12, 1),
                            ("weak_fn", TEXT + 0x30, 0, 0x22, 1), ("asm_entry", TEXT + 0x40, 8, 0x10, 1),
                            ("undef", 0, 0, 0x12, 0)])
    rodata = b"Linux version " + (b"6.4.0" if v3 else b"6.1.0") + b" (fuzz)\0" + bytes(16)
    ips, entries = _orc(8, TEXT, v3)
    sections = [
        (".text", 1, text, TEXT, 0, 0, 0),
        (".rodata", 1, rodata, TEXT + 0x1000, 0, 0, 0),
        (".orc_unwind_ip", 1, ips, TEXT + 0x2000, 0, 0, 0),
        (".orc_unwind", 1, entries, TEXT + 0x3000, 0, 0, 0),
        (".bss", 8, bytes(0x100), TEXT + 0x4000, 0, 0, 0),
        (".symtab", 2, syms, 0, 8 if with_notes else 7, 1, 24),  # link: .strtab (index 0 is null)
    ]
    if with_notes:
        sections.append((".notes", 7, pvh_note(), TEXT + 0x5000, 0, 0, 0))
    sections.append((".strtab", 3, strtab, 0, 0, 0, 0))
    phdrs = [(1, 5, 0, TEXT, 0x1000000, 0, 0x200000)]
    if with_notes:
        phdrs.append((4, 4, 6, TEXT + 0x5000, 0x1005000, 0, 4))
    return build_elf(sections, phdrs=phdrs)


def cut_vmlinux(image: bytes, keep_syms: int = 200, keep_bytes: int = 256) -> bytes | None:
    """A real vmlinux rebuilt small: every section header kept (name, type, addr, link,
    entsize), each section's data cut to ``keep_bytes`` (the .symtab to ``keep_syms``
    symbols and the .strtab to what they name), its program headers kept where they cover
    a kept section."""
    from vmboot.elf import SHT_NOBITS, SHT_STRTAB, SHT_SYMTAB, ElfFile
    from vmboot.errors import VmbootError

    try:
        elf = ElfFile(image, "<cut>")
    except VmbootError:
        return None
    secs: list[tuple[str, int, bytes, int, int, int, int]] = []
    index_of: dict[int, int] = {}
    for sec in elf.sections[1:]:
        if sec.name == ".shstrtab":
            continue
        index_of[sec.index] = len(secs)
        data = b"" if sec.type == SHT_NOBITS else bytes(elf.section_data(sec))
        if sec.type == SHT_SYMTAB:
            data = data[: 24 * keep_syms]
        elif sec.type == SHT_STRTAB:
            limit = keep_bytes
            symtab = next((s for s in elf.sections if s.type == SHT_SYMTAB and s.link == sec.index), None)
            if symtab is not None:
                raw = bytes(elf.section_data(symtab))[: 24 * keep_syms]
                limit = max((struct.unpack_from("<I", raw, o)[0] for o in range(0, len(raw), 24)),
                            default=0) + 64
            data = data[:limit]
        elif sec.type == SHT_NOBITS:
            data = bytes(min(sec.size, 64))
        else:
            data = data[:keep_bytes]
        secs.append((sec.name, sec.type, data, sec.addr, sec.link, sec.info, sec.entsize))
    for i, (name, typ, body, addr, link, info, entsize) in enumerate(secs):
        if typ == SHT_SYMTAB:
            secs[i] = (name, typ, body, addr, index_of.get(link, -1) + 1, info, entsize)
    phdrs = []
    for seg in elf.segments:
        sec_index = next((index_of[s.index] for s in elf.sections[1:]
                          if s.index in index_of and s.size and s.addr == seg.vaddr), -1)
        phdrs.append((seg.type, seg.flags, sec_index, seg.vaddr, seg.paddr, 0, seg.align))
    return build_elf(secs, entry=elf.e_entry, phdrs=phdrs)


@functools.cache
def elf_seeds() -> tuple[bytes, ...]:
    seeds = [synthetic_vmlinux(), synthetic_vmlinux(v3=True), synthetic_vmlinux(with_notes=False)]
    real = shared("tiny-vmlinux")
    if real:
        cut = cut_vmlinux(real)
        if cut:
            seeds.append(cut)
    return tuple(seeds)


def elf_offsets(data: bytes) -> list[int]:
    """Header fields, program header and section header fields of ``data``."""
    offs = [4, 5, 6, 16, 18, 20, 24, 32, 40, 48, 52, 54, 56, 58, 60, 62, 64]
    if len(data) >= 64:
        phoff, shoff = struct.unpack_from("<QQ", data, 32)
        phnum, shnum = struct.unpack_from("<H", data, 56)[0], struct.unpack_from("<H", data, 60)[0]
        for i in range(min(phnum, 16)):
            base = phoff + 56 * i
            offs += [base + d for d in (0, 4, 8, 16, 24, 32, 40, 48)]
        for i in range(min(shnum, 40)):
            base = shoff + 64 * i
            offs += [base + d for d in (0, 4, 8, 16, 24, 32, 40, 44, 48, 56)]
    return [o for o in offs if o < len(data)]


# -- System.map --------------------------------------------------------------------------------
@functools.cache
def system_map_seeds() -> tuple[bytes, ...]:
    seeds = [
        b"ffffffff81000000 T _text\nffffffff81000010 t do_thing\nffffffff81000020 W weak\n"
        b"ffffffff81000030 D data\nffffffff81000040 w weak2 [module]\n",
        b"0000000000000000 A fixed_percpu_data\r\nffffffff81000000 T startup_64\r\n",
        b"The real System.map is in the linux-image-<version>-dbg package\n",
    ]
    real = shared("tiny-System.map")
    if real:
        seeds.append(b"".join(real.splitlines(keepends=True)[:300]))
    return tuple(seeds)


# -- kallsyms ----------------------------------------------------------------------------------
# The one synthetic kallsyms encoder (scripts/kallsyms' three layouts); tests/test_debug_kallsyms.py
# uses it too.
_MULTI_TOKENS = [b"do_", b"sys_", b"_init", b"kernel", b"__"]


def _token_table() -> list[bytes]:
    table = [b""] * 256
    for c in range(0x21, 0x7F):
        table[c] = bytes([c])
    free = [i for i in range(256) if not table[i]]
    for i, tok in zip(free, _MULTI_TOKENS, strict=False):
        table[i] = tok
    for n, i in enumerate(free[len(_MULTI_TOKENS) :]):
        table[i] = f"~{n}".encode()
    return table


def _compress(name: bytes, table: list[bytes]) -> bytes:
    multi = {tok: i for i, tok in enumerate(table) if len(tok) > 1 and not tok.startswith(b"~")}
    out = bytearray()
    pos = 0
    while pos < len(name):
        for tok, i in multi.items():
            if name.startswith(tok, pos):
                out.append(i)
                pos += len(tok)
                break
        else:
            out.append(name[pos])
            pos += 1
    return bytes(out)


def build_kallsyms(symbols: list[tuple[int, str, str]], layout: str, absolute_percpu: bool = False,
                   base: int = TEXT, tail_zeros: int = 64) -> bytes:
    """The kallsyms tables as scripts/kallsyms lays them out for ``layout`` ("6.1", "6.2", "6.4"),
    after 64 bytes of unrelated data and followed by ``tail_zeros`` zero bytes and a banner."""
    table = _token_table()
    names = bytearray()
    markers = []
    for i, (_, kind, name) in enumerate(symbols):
        if i % 256 == 0:
            markers.append(len(names))
        entry = _compress((kind + name).encode(), table)
        if len(entry) > 0x7F:
            assert layout == "6.4", "two-byte lengths exist only from 6.4"
            names += bytes([(len(entry) & 0x7F) | 0x80, len(entry) >> 7])
        else:
            names.append(len(entry))
        names += entry
    offsets = bytearray()
    for addr, _, _ in symbols:
        value = addr - base
        if absolute_percpu:
            value = addr if addr < 0x8000_0000 else base - 1 - addr
        offsets += struct.pack("<i" if absolute_percpu else "<I", value)
    n = len(symbols)
    tokens = b"".join(t + b"\0" for t in table)
    index = b"".join(struct.pack("<H", sum(len(t) + 1 for t in table[:i])) for i in range(256))
    seqs = b"".join(i.to_bytes(3, "big") for i in range(n))
    if layout == "6.4":
        parts = [struct.pack("<I", n), bytes(names), struct.pack(f"<{len(markers)}I", *markers), tokens,
                 index, bytes(offsets), struct.pack("<Q", base), seqs]
    else:
        parts = [bytes(offsets), struct.pack("<Q", base), struct.pack("<I", n), bytes(names),
                 struct.pack(f"<{len(markers)}I", *markers)]
        if layout == "6.2":
            parts.append(seqs)
        parts += [tokens, index]
    out = bytearray(b"\x5a" * 64)
    for p in parts:
        out += bytes(-len(out) % 8)
        out += p
    out += bytes(-len(out) % 8)
    out += b"\0" * tail_zeros + b"Linux version 9.9\0"
    return bytes(out)


def kallsyms_symbols(count: int) -> list[tuple[int, str, str]]:
    return [(TEXT + 0x10 * i, "tTdDrRwW"[i % 8], f"do_sys_thing{i}_init") for i in range(count)]


@functools.cache
def kallsyms_seeds() -> tuple[bytes, ...]:
    seeds = []
    # <= 256 symbols: a single marker (see test_kallsyms_with_one_marker_and_padding).
    seeds.append(build_kallsyms(kallsyms_symbols(20), "6.2"))
    for layout in ("6.1", "6.2", "6.4"):
        seeds.append(build_kallsyms(kallsyms_symbols(300), layout))
    percpu = [(0, "A", "fixed_percpu_data"), (0x1000, "A", "cpu_debug_store"), *kallsyms_symbols(300)]
    seeds.append(build_kallsyms(percpu, "6.1", absolute_percpu=True))
    return tuple(seeds)


def kallsyms_offsets(data: bytes) -> list[int]:
    """Aligned words (where the tables and their counts live) and the token table's digits."""
    offs = list(range(0, len(data), 8))
    hit = data.find(b"0\x001\x002\x00")
    if hit >= 0:
        offs += list(range(max(0, hit - 200), min(len(data), hit + 800), 2))
    return offs


# -- cpio ---------------------------------------------------------------------------------------
@functools.cache
def cpio_seeds() -> tuple[bytes, ...]:
    from vmboot.initramfs import Entry, compress, cpio_bytes

    entries = [
        Entry.directory("bin"), Entry.file("bin/sh", b"#!/bin/sh\necho hi\n", 0o755),
        Entry.symlink("bin/ash", "sh"), Entry.char_device("dev/console", 5, 1),
        Entry.block_device("dev/vda", 254, 0), Entry.fifo("run/fifo"),
        Entry.file("empty", b""),
    ]
    plain = cpio_bytes(entries, mtime=0)
    seeds = [plain, plain + plain, compress(plain, "gzip")]
    for method in ("lz4", "zstd"):
        with contextlib.suppress(Exception):
            seeds.append(compress(plain, method))
    small = shared("tiny-initramfs-min.cpio")
    if small:
        seeds.append(small)
    big = shared("tiny-initramfs.cpio")
    if big:
        seeds.append(_first_members(big, 8))
    return tuple(seeds)


def _first_members(archive: bytes, count: int) -> bytes:
    """The first ``count`` members of a newc archive, then a trailer."""
    from vmboot.initramfs.newc import HEADER_SIZE, TRAILER_HEADER, TRAILER_NAME, padding

    pos = 0
    for _ in range(count):
        if archive[pos : pos + 6] != b"070701":
            break
        namesize = int(archive[pos + 94 : pos + 102], 16)
        filesize = int(archive[pos + 54 : pos + 62], 16)
        end = pos + HEADER_SIZE + namesize
        end += padding(end - pos)
        end += filesize
        pos = end + padding(end - pos)
    trailer = TRAILER_HEADER.pack() + TRAILER_NAME.encode() + b"\0"
    trailer += bytes(padding(len(trailer)))
    return archive[:pos] + trailer


def cpio_offsets(data: bytes) -> list[int]:
    offs = []
    pos = data.find(b"070701")
    while pos >= 0:
        offs += [pos + 6 + 8 * i for i in range(13)] + [pos + 110]
        pos = data.find(b"070701", pos + 1)
    return offs


def gzip_of(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def _zstd_of(data: bytes) -> bytes:
    import zstandard

    return bytes(zstandard.ZstdCompressor().compress(data))


def _lz4_legacy_of(data: bytes) -> bytes:
    from vmboot.initramfs import compress

    return compress(data, "lz4")


PACKERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip_of,
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ),
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    "bzip2": bz2.compress,
    "lz4": _lz4_legacy_of,
    "zstd": _zstd_of,
}
"""One compressor per :data:`vmboot.compression.formats.FORMATS` entry (LZ4: the kernel's legacy frame)."""


# -- BTF ------------------------------------------------------------------------------------
BtfSpec = tuple[str, str, int, int, list[tuple[str, int, int]]]
"""(kind, name, size_or_type, kind_flag, members as (name, type id, offset word))."""

BTF_KINDS = {"int": 1, "ptr": 2, "array": 3, "struct": 4, "union": 5, "typedef": 8, "const": 10}


def build_btf(types: list[BtfSpec]) -> bytes:
    """A little-endian BTF blob: header, then the types (ids from 1), then the strings.

    ``array`` types take ``members=[("", elem_type, nelems)]``; ``int`` gets a 4-byte
    encoding word of ``size * 8`` bits.
    """
    strings = bytearray(b"\0")

    def name_off(name: str) -> int:
        if not name:
            return 0
        off = len(strings)
        strings.extend(name.encode() + b"\0")
        return off

    body = bytearray()
    for kind, name, size_or_type, kind_flag, members in types:
        code = BTF_KINDS[kind]
        vlen = len(members) if kind in ("struct", "union") else 0
        info = (kind_flag << 31) | (code << 24) | vlen
        body += struct.pack("<III", name_off(name), info, size_or_type)
        if kind == "int":
            body += struct.pack("<I", size_or_type * 8)
        elif kind == "array":
            _, elem, nelems = members[0]
            body += struct.pack("<III", elem, 1, nelems)
        elif kind in ("struct", "union"):
            for m_name, m_type, m_off in members:
                body += struct.pack("<III", name_off(m_name), m_type, m_off)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings))
    return header + bytes(body) + bytes(strings)


BTF_SAMPLE: list[BtfSpec] = [
    ("int", "int", 4, 0, []),                                                   # 1
    ("int", "long unsigned int", 8, 0, []),                                     # 2
    ("struct", "list_head", 16, 0, [("next", 4, 0), ("prev", 4, 64)]),          # 3
    ("ptr", "", 3, 0, []),                                                      # 4
    ("int", "char", 1, 0, []),                                                  # 5
    ("array", "", 0, 0, [("", 5, 16)]),                                         # 6
    ("struct", "thread_struct", 16, 0, [("es", 2, 0), ("sp", 2, 64)]),          # 7
    ("union", "", 8, 0, [("state", 2, 0), ("__state", 1, 0)]),                  # 8
    ("typedef", "pid_t", 1, 0, []),                                             # 9
    ("const", "", 9, 0, []),                                                    # 10
    ("struct", "task_struct", 80, 1, [("", 8, 0), ("tasks", 3, 64), ("pid", 10, 192),
                                      ("flags", 1, (3 << 24) | 224), ("comm", 6, 256),
                                      ("thread", 7, 384)]),                      # 11
]
"""A tiny kernel-like type graph: an anonymous union, a const typedef, a bitfield."""


def btf_seeds() -> tuple[bytes, ...]:
    return (build_btf(BTF_SAMPLE), build_btf(BTF_SAMPLE[:3]))


# -- DWARF ------------------------------------------------------------------------------------
DwarfAttr = tuple[int, int, "int | str | bytes"]
"""``(DW_AT_*, DW_FORM_*, value)``: a value ``"@label"`` in a ``ref4`` form is that entry's
offset in the unit; ``strp`` takes a string (put in ``.debug_str``)."""
DwarfSpec = tuple[str, int, list[DwarfAttr], list["DwarfSpec"]]
"""``(label, DW_TAG_*, attributes, children)``."""

_FORM_FIXED = {0x0B: 1, 0x05: 2, 0x06: 4, 0x13: 4, 0x0E: 4, 0x19: 0}
"""data1, data2, data4, ref4, strp, flag_present: the forms :func:`build_dwarf` writes,
besides ``string`` (0x08) and ``exprloc`` (0x18)."""


def build_dwarf(units: list[list[DwarfSpec]]) -> tuple[bytes, bytes, bytes]:
    """``(.debug_info, .debug_abbrev, .debug_str)`` of DWARF 4 units, each a compile unit
    entry holding the given entries (one abbreviation table shared by all units)."""
    writer = _DwarfWriter()
    info = b"".join(writer.unit(unit) for unit in units)
    return info, bytes(writer.abbrev) + b"\0", bytes(writer.strings)


class _DwarfWriter:
    HEADER = 11
    """unit_length 4, version 2, abbrev offset 4, address size 1."""

    def __init__(self) -> None:
        self.abbrev = bytearray()
        self.strings = bytearray(b"\0")
        self.codes: dict[tuple[int, bool, tuple[tuple[int, int], ...]], int] = {}
        self.body = bytearray()
        self.labels: dict[str, int] = {}
        self.fixups: list[tuple[int, str]] = []

    def code_of(self, tag: int, children: bool, attrs: list[DwarfAttr]) -> int:
        key = (tag, children, tuple((a, f) for a, f, _ in attrs))
        if key not in self.codes:
            self.codes[key] = len(self.codes) + 1
            self.abbrev.extend(_uleb(self.codes[key]) + _uleb(tag) + bytes([children]))
            for a, f in key[2]:
                self.abbrev.extend(_uleb(a) + _uleb(f))
            self.abbrev.extend(b"\0\0")
        return self.codes[key]

    def unit(self, entries: list[DwarfSpec]) -> bytes:
        self.body, self.labels, self.fixups = bytearray(), {}, []
        self.emit(("cu", 0x11, [(0x03, 0x08, "sample.c")], entries))
        for at, label in self.fixups:
            self.body[at:at + 4] = struct.pack("<I", self.labels[label])
        return struct.pack("<IHIB", 7 + len(self.body), 4, 0, 8) + bytes(self.body)

    def emit(self, spec: DwarfSpec) -> None:
        label, tag, attrs, children = spec
        body = self.body
        self.labels[label] = self.HEADER + len(body)
        body.extend(_uleb(self.code_of(tag, bool(children), attrs)))
        for _, form, value in attrs:
            if form == 0x13 and isinstance(value, str):
                self.fixups.append((len(body), value[1:]))
                body.extend(b"\0\0\0\0")
            elif form == 0x0E:
                assert isinstance(value, str)
                body.extend(struct.pack("<I", len(self.strings)))
                self.strings.extend(value.encode() + b"\0")
            elif form == 0x08:
                assert isinstance(value, str)
                body.extend(value.encode() + b"\0")
            elif form == 0x18:
                assert isinstance(value, bytes)
                body.extend(_uleb(len(value)) + value)
            elif form != 0x19:  # flag_present: no value bytes
                assert isinstance(value, int)
                body.extend(value.to_bytes(_FORM_FIXED[form], "little"))
        for child in children:
            self.emit(child)
        if children:
            body.append(0)


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _dwarf_member(name: str, type_label: str, offset: int, *extra: DwarfAttr) -> DwarfSpec:
    attrs: list[DwarfAttr] = [(0x03, 0x0E, name)] if name else []
    return (f"{type_label}.{name}.{offset}", 0x0D,
            [*attrs, (0x49, 0x13, f"@{type_label}"), (0x38, 0x05, offset), *extra], [])


DWARF_SAMPLE: list[list[DwarfSpec]] = [
    [  # unit 1: only a declaration of task_struct (a unit that must be passed over)
        ("decl", 0x13, [(0x03, 0x0E, "task_struct"), (0x3C, 0x19, 1)], []),
    ],
    [  # unit 2: the layout of BTF_SAMPLE
        ("int", 0x24, [(0x0B, 0x0B, 4), (0x3E, 0x0B, 5), (0x03, 0x0E, "int")], []),
        ("ulong", 0x24, [(0x0B, 0x0B, 8), (0x3E, 0x0B, 7), (0x03, 0x0E, "long unsigned int")],
         []),
        ("list_head", 0x13, [(0x03, 0x0E, "list_head"), (0x0B, 0x0B, 16)], [
            _dwarf_member("next", "lh_ptr", 0), _dwarf_member("prev", "lh_ptr", 8)]),
        ("lh_ptr", 0x0F, [(0x0B, 0x0B, 8), (0x49, 0x13, "@list_head")], []),
        ("char", 0x24, [(0x0B, 0x0B, 1), (0x3E, 0x0B, 6), (0x03, 0x08, "char")], []),
        ("comm", 0x01, [(0x49, 0x13, "@char")], [
            ("comm.dim", 0x21, [(0x49, 0x13, "@ulong"), (0x2F, 0x0B, 15)], [])]),
        ("thread_struct", 0x13, [(0x03, 0x0E, "thread_struct"), (0x0B, 0x0B, 16)], [
            _dwarf_member("es", "ulong", 0),
            ("ts.sp", 0x0D, [(0x03, 0x0E, "sp"), (0x49, 0x13, "@ulong"),
                             (0x38, 0x18, bytes([0x23, 8]))], [])]),     # DW_OP_plus_uconst 8
        ("state_union", 0x17, [(0x0B, 0x0B, 8)], [
            ("u.state", 0x0D, [(0x03, 0x0E, "state"), (0x49, 0x13, "@ulong")], []),
            ("u.__state", 0x0D, [(0x03, 0x0E, "__state"), (0x49, 0x13, "@int")], [])]),
        ("pid_t", 0x16, [(0x03, 0x0E, "pid_t"), (0x49, 0x13, "@int")], []),
        ("const_pid", 0x26, [(0x49, 0x13, "@pid_t")], []),
        ("task_struct", 0x13, [(0x03, 0x0E, "task_struct"), (0x0B, 0x0B, 80)], [
            _dwarf_member("", "state_union", 0),
            _dwarf_member("tasks", "list_head", 8),
            _dwarf_member("pid", "const_pid", 24),
            ("ts.flags", 0x0D, [(0x03, 0x0E, "flags"), (0x49, 0x13, "@int"), (0x0D, 0x0B, 3),
                                (0x6B, 0x05, 224)], []),                 # data_bit_offset
            ("ts.old_bits", 0x0D, [(0x03, 0x0E, "old_bits"), (0x49, 0x13, "@int"),
                                   (0x0B, 0x0B, 4), (0x0D, 0x0B, 5), (0x0C, 0x0B, 24),
                                   (0x38, 0x05, 28)], []),               # DWARF 2 bit_offset
            _dwarf_member("comm", "comm", 32),
            _dwarf_member("thread", "thread_struct", 48),
            _dwarf_member("grid", "grid", 64)]),
        ("grid", 0x01, [(0x49, 0x13, "@char")], [                        # char grid[2][4]
            ("grid.d0", 0x21, [(0x49, 0x13, "@ulong"), (0x2F, 0x0B, 1)], []),
            ("grid.d1", 0x21, [(0x49, 0x13, "@ulong"), (0x37, 0x0B, 4)], [])]),
    ],
]
"""The task_struct of BTF_SAMPLE in DWARF (with a DWARF 2 bitfield and a 2-D array), after
a unit that only declares it."""


def pack_dwarf_sections(info: bytes, abbrev: bytes, strings: bytes) -> bytes:
    """One fuzz input: ``len(info)`` and ``len(abbrev)`` (u32 each), then the three sections."""
    return struct.pack("<II", len(info), len(abbrev)) + info + abbrev + strings


def dwarf_seeds() -> tuple[bytes, ...]:
    return (pack_dwarf_sections(*build_dwarf(DWARF_SAMPLE)),
            pack_dwarf_sections(*build_dwarf(DWARF_SAMPLE[1:])))
