"""ELF vmlinux kernels: load the PT_LOAD segments at their physical addresses, then enter
through the PVH note or the ELF entry point in 64-bit mode.

The loader half (as rust-vmm linux-loader's ELF loader): every PT_LOAD segment is copied
to its ``p_paddr`` and zero-filled up to ``p_memsz``. Two entries exist:

- ``"pvh"``: the Xen PVH entry named by the ``XEN_ELFNOTE_PHYS32_ENTRY`` note, entered in
  32-bit protected mode with EBX = ``struct hvm_start_info`` (:mod:`vmboot.linux.configurator.pvh`,
  :mod:`vmboot.linux.configurator.start_info`); the initrd is module 0, the E820 map is the memmap.
- ``"elf64"``: ``e_entry`` (for Linux, ``phys_startup_64``, a physical address) entered
  exactly as a bzImage's 64-bit entry (long mode, identity map, boot GDT, RSI = a zero page
  whose setup-header fields are filled in as Firecracker does for a vmlinux).

Everything is validated before the first byte is written to guest memory.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from vmboot.elf import ET_EXEC, PT_LOAD, ElfFile, ProgramHeader
from vmboot.errors import (
    BootConfigError,
    CmdlineError,
    KernelFormatError,
    UnsupportedKernelError,
)
from vmboot.hv.base import VirtualMachine
from vmboot.linux import bootparam as bp
from vmboot.linux.configurator import layout
from vmboot.linux.configurator.e820 import E820Entry, default_e820_map, validate_e820
from vmboot.linux.configurator.layout import Region
from vmboot.linux.configurator.long_mode import KernelPlacement, cmdline_address, plan_long_mode
from vmboot.linux.configurator.plan import BootPlan
from vmboot.linux.configurator.pvh import PvhBootPlan
from vmboot.linux.configurator.start_info import (
    HvmMemmapEntry,
    HvmModlistEntry,
    HvmStartInfo,
    pack_memmap,
    pack_modlist,
)
from vmboot.linux.configurator.zero_page import put_e820, put_split
from vmboot.linux.kernel import KernelFormat
from vmboot.linux.loader.pvh_note import PvhNote, find_pvh_note
from vmboot.linux.loader.source import KERNEL_VERSION_MAX, KernelSource, read_source
from vmboot.linux.options import BootOptions, EntryMode
from vmboot.units import GiB
from vmboot.x86.paging import PAGE_SIZE

LINUX_COMMAND_LINE_SIZE = 2048
"""x86 ``COMMAND_LINE_SIZE`` (arch/x86/include/asm/setup.h); an ELF kernel has no
``cmdline_size`` field to say otherwise, so the command line may have 2047 bytes."""
ELF_KERNEL_ALIGNMENT = 0x1000000
"""``kernel_alignment`` written into the zero page for a vmlinux (Firecracker's
KERNEL_MIN_ALIGNMENT_BYTES, Linux's default CONFIG_PHYSICAL_ALIGN)."""
ELF_ZERO_PAGE_PROTOCOL = bp.PROTOCOL_2_12
"""The boot protocol version the zero page claims for a vmlinux: the first with a 64-bit
entry (Linux's own PVH code builds its boot_params with 2.12 too)."""
ADDRESS_LIMIT_32 = 4 * GiB
"""The PVH entry runs with 32-bit addressing; by default the initrd also stays below 4 GiB."""
MODLIST_ALIGN = 64
"""The module list starts at the next 64-byte boundary after hvm_start_info (0x6040 by default,
as in Firecracker)."""
LINUX_BANNER = b"Linux version "
"""The start of ``linux_banner`` (init/version.c)."""
U64_LIMIT = 1 << 64

ENTRY_PVH: EntryMode = "pvh"
ENTRY_ELF64: EntryMode = "elf64"


@dataclass(frozen=True)
class ElfEntry:
    """One way into an ELF kernel: its mode, address, and whether (and why not) it can be used."""

    mode: EntryMode
    address: int | None
    usable: bool
    reason: str


class ElfKernel:
    """An ELF64 x86-64 vmlinux: its loadable segments, its entries, and how to boot it.

    A peer of :class:`~vmboot.linux.loader.bzimage.BzImage`: ``plan(vm, options)`` checks and
    decides, ``prepare(vm, options)`` also writes guest memory; both return a
    :class:`~vmboot.linux.configurator.plan.BootPlan` (a
    :class:`~vmboot.linux.configurator.pvh.PvhBootPlan` for PVH).
    """

    format = KernelFormat.VMLINUX

    def __init__(self, data: bytes, name: str = "<bytes>",
                 setup_header: bytes | None = None) -> None:
        self.data = data
        self.name = name
        self.setup_header = setup_header
        """For the vmlinux inside a bzImage: that bzImage's raw setup header (from 0x1f1),
        copied into the ``"elf64"`` zero page instead of the fields a bare vmlinux gets."""
        self.elf = ElfFile(data, name)
        if self.elf.e_type != ET_EXEC:
            raise UnsupportedKernelError(
                f"{name}: e_type={self.elf.e_type}; only an executable (ET_EXEC, {ET_EXEC}) "
                f"vmlinux can be loaded at its physical addresses"
            )
        self.segments: tuple[ProgramHeader, ...] = _load_segments(self.elf)
        self.pvh_note: PvhNote | None = find_pvh_note(self.elf)
        self._check_entry("e_entry", self.elf.e_entry)
        if self.pvh_note is not None:
            self._check_entry(f"PVH entry (note in {self.pvh_note.source})", self.pvh_note.entry)

    # -- what the image says ----------------------------------------------------------------
    @property
    def entry_point(self) -> int:
        """``e_entry``: for Linux, the physical address of ``startup_64``."""
        return int(self.elf.e_entry)

    @property
    def pvh_entry(self) -> int | None:
        return None if self.pvh_note is None else self.pvh_note.entry

    @property
    def load_start(self) -> int:
        """The lowest ``p_paddr`` of a PT_LOAD segment."""
        return min(s.paddr for s in self.segments)

    @property
    def load_end(self) -> int:
        """One past the highest byte of a PT_LOAD segment (``p_paddr + p_memsz``)."""
        return max(s.paddr + s.memsz for s in self.segments)

    @property
    def kernel_version(self) -> str | None:
        """The ``linux_banner`` found in the loaded segments ("Linux version 6.1 ..."), if any."""
        for seg in self.segments:
            start, end = seg.offset, seg.offset + seg.filesz
            at = self.data.find(LINUX_BANNER, start, end)
            while at >= 0:
                tail = self.data[at + len(LINUX_BANNER) : min(end, at + KERNEL_VERSION_MAX)]
                if tail[:1].isdigit():
                    raw = self.data[at : min(end, at + KERNEL_VERSION_MAX)]
                    stop = min((i for i in (raw.find(b"\0"), raw.find(b"\n")) if i >= 0),
                               default=len(raw))
                    return raw[:stop].decode("ascii", "replace")
                at = self.data.find(LINUX_BANNER, at + 1, end)
        return None

    def entries(self) -> dict[EntryMode, ElfEntry]:
        """Every entry this kernel offers: ``"pvh"`` and ``"elf64"``, usable or not."""
        pvh = (ElfEntry(ENTRY_PVH, None, False, "no XEN_ELFNOTE_PHYS32_ENTRY note ('Xen', 18)")
               if self.pvh_note is None else
               ElfEntry(ENTRY_PVH, self.pvh_note.entry, True,
                        f"XEN_ELFNOTE_PHYS32_ENTRY note ({self.pvh_note.desc_size}-byte "
                        f"descriptor) in {self.pvh_note.source}"))
        elf64 = ElfEntry(ENTRY_ELF64, self.elf.e_entry, True,
                         "e_entry inside a PT_LOAD segment, entered in 64-bit mode")
        return {ENTRY_PVH: pvh, ENTRY_ELF64: elf64}

    @property
    def default_entry(self) -> EntryMode:
        """``"pvh"`` when the kernel has a PVH note, else ``"elf64"``."""
        return ENTRY_PVH if self.pvh_note is not None else ENTRY_ELF64

    def choose_entry(self, choice: str) -> EntryMode:
        """The entry ``BootOptions.entry`` asks for, or an error saying which ones exist."""
        if choice == "auto":
            return self.default_entry
        usable = [m for m, e in self.entries().items() if e.usable]
        for mode, entry in self.entries().items():
            if choice == mode:
                if not entry.usable:
                    raise UnsupportedKernelError(
                        f"{self.name}: entry {choice!r} cannot be used: {entry.reason}; usable "
                        f"entries: {', '.join(usable)}"
                    )
                return mode
        raise UnsupportedKernelError(
            f"{self.name}: entry {choice!r} is not an entry of an ELF vmlinux; usable entries: "
            f"{', '.join(usable)} (or 'auto')"
        )

    def _check_entry(self, what: str, address: int) -> None:
        if not any(s.paddr <= address < s.paddr + s.memsz for s in self.segments):
            spans = ", ".join(f"[{s.paddr:#x}, {s.paddr + s.memsz:#x})" for s in self.segments)
            raise KernelFormatError(
                f"{self.name}: {what} {address:#x} lies outside every PT_LOAD segment "
                f"(physical {spans})"
            )

    # -- loading ----------------------------------------------------------------------------
    def segment_regions(self, identity_mapped: bool = True) -> list[Region]:
        return [Region(f"kernel segment {s.index} (PT_LOAD)", s.paddr, s.memsz, identity_mapped)
                for s in self.segments]

    def load_into_memory(self, vm: VirtualMachine) -> None:
        """Copy every PT_LOAD segment to its ``p_paddr`` and zero it up to ``p_memsz``."""
        for seg in self.segments:  # refuse before writing anything
            vm.memory.offset_of(seg.paddr, seg.memsz)
        for seg in self.segments:
            vm.write(seg.paddr, self.elf.segment_data(seg))
            vm.zero(seg.paddr + seg.filesz, seg.memsz - seg.filesz)

    def build_zero_page(
        self,
        cmdline_gpa: int,
        cmdline_len: int,
        initrd_gpa: int | None = None,
        initrd_size: int = 0,
        e820: Sequence[E820Entry] = (),
    ) -> bytes:
        """``struct boot_params`` for the 64-bit ELF entry.

        A vmlinux has no setup header to copy, so the loader writes the fields the kernel
        checks or reads (as Firecracker does): boot_flag 0xAA55, header "HdrS", version 2.12,
        type_of_loader 0xFF, kernel_alignment 16 MiB, cmdline_size, cmd_line_ptr (+ ext_),
        ramdisk_image/size (+ ext_), e820_entries and e820_table. When the vmlinux came from
        a bzImage (``setup_header``), that header is copied in instead of the first six
        fields, so the kernel sees what its own decompressor would have passed on.
        """
        if len(e820) > bp.E820_MAX_ENTRIES_ZEROPAGE:
            raise BootConfigError(
                f"e820: {len(e820)} entries; the zero page holds at most "
                f"{bp.E820_MAX_ENTRIES_ZEROPAGE} and vmboot passes no SETUP_E820_EXT to an ELF kernel"
            )
        zp = bytearray(bp.BOOT_PARAMS_SIZE)
        fields = bp.SETUP_HEADER_FIELD_BY_NAME
        if self.setup_header is not None:
            zp[bp.SETUP_HEADER_OFFSET : bp.SETUP_HEADER_OFFSET + len(self.setup_header)] = \
                self.setup_header
        else:
            struct.pack_into("<H", zp, fields["boot_flag"].offset, bp.BOOT_FLAG_MAGIC)
            zp[fields["header"].offset : fields["header"].offset + len(bp.HEADER_MAGIC)] = \
                bp.HEADER_MAGIC
            struct.pack_into("<H", zp, fields["version"].offset, ELF_ZERO_PAGE_PROTOCOL)
            struct.pack_into("<I", zp, fields["kernel_alignment"].offset, ELF_KERNEL_ALIGNMENT)
            struct.pack_into("<I", zp, fields["cmdline_size"].offset, cmdline_len + 1)
        zp[bp.HDR_TYPE_OF_LOADER] = bp.LOADER_TYPE_UNDEFINED
        put_split(zp, "cmd_line_ptr", cmdline_gpa, bp.HDR_CMD_LINE_PTR, bp.BP_EXT_CMD_LINE_PTR)
        if initrd_gpa is not None and initrd_size:
            put_split(zp, "ramdisk_image", initrd_gpa, bp.HDR_RAMDISK_IMAGE, bp.BP_EXT_RAMDISK_IMAGE)
            put_split(zp, "ramdisk_size", initrd_size, bp.HDR_RAMDISK_SIZE, bp.BP_EXT_RAMDISK_SIZE)
        put_e820(zp, e820)
        return bytes(zp)

    # -- planning and preparing --------------------------------------------------------------
    def plan(self, vm: VirtualMachine, options: BootOptions | None = None) -> BootPlan | PvhBootPlan:
        """Decide where everything goes and check it all, writing nothing."""
        options = options or BootOptions()
        options.check_scalars()
        mode = self.choose_entry(options.entry)
        if options.load_addr is not None and options.load_addr != self.load_start:
            raise BootConfigError(
                f"load_addr {options.load_addr:#x}: {self.name} is an ELF vmlinux, loaded at its "
                f"segments' p_paddr (lowest {self.load_start:#x}); leave load_addr unset"
            )
        cmdline = options.cmdline_bytes()
        if len(cmdline) >= LINUX_COMMAND_LINE_SIZE:
            raise CmdlineError(
                f"cmdline: {len(cmdline)} bytes is longer than the x86 COMMAND_LINE_SIZE limit of "
                f"{LINUX_COMMAND_LINE_SIZE - 1} (NUL excluded)"
            )
        ram = list(vm.memory.ram_ranges())
        e820 = list(options.e820) if options.e820 is not None else default_e820_map(
            0, sum(end - start for start, end in ram))
        validate_e820(e820)
        if mode == ENTRY_PVH:
            return self._plan_pvh(options, ram, cmdline, cmdline_address(options), e820)
        return self._plan_elf64(options, ram, cmdline, e820)

    def _plan_elf64(self, options: BootOptions, ram: list[tuple[int, int]], cmdline: bytes,
                    e820: list[E820Entry]) -> BootPlan:
        if len(e820) > bp.E820_MAX_ENTRIES_ZEROPAGE:
            raise BootConfigError(
                f"e820: {len(e820)} entries; the zero page holds at most "
                f"{bp.E820_MAX_ENTRIES_ZEROPAGE} and vmboot passes no SETUP_E820_EXT to an ELF kernel"
            )
        placement = KernelPlacement(
            regions=tuple(self.segment_regions(identity_mapped=True)),
            load_addr=self.load_start,
            entry_gpa=self.entry_point,
            kernel_end=self.load_end,
            entry_mode=ENTRY_ELF64,
            initrd_limit=ADDRESS_LIMIT_32,
            initrd_limit_name="4 GiB",
            initrd_may_exceed_limit=True,
        )
        return plan_long_mode(placement, options, ram, cmdline, e820)

    def _plan_pvh(self, options: BootOptions, ram: list[tuple[int, int]], cmdline: bytes,
                  cmdline_gpa: int, e820: list[E820Entry]) -> PvhBootPlan:
        assert self.pvh_note is not None
        start_info_gpa = options.start_info_gpa
        modlist_gpa = layout.align_up(start_info_gpa + HvmStartInfo.SIZE, MODLIST_ALIGN)
        n_modules = 1 if options.initrd_size() else 0
        memmap_gpa = layout.align_up(modlist_gpa + n_modules * HvmModlistEntry.SIZE, PAGE_SIZE)
        memmap = tuple(HvmMemmapEntry.from_e820(e) for e in e820)
        regions = [
            *self.segment_regions(identity_mapped=True),
            Region("hvm_start_info", start_info_gpa, HvmStartInfo.SIZE, identity_mapped=True),
            Region("hvm_modlist", modlist_gpa, n_modules * HvmModlistEntry.SIZE,
                   identity_mapped=True),
            Region("hvm memmap", memmap_gpa, len(memmap) * HvmMemmapEntry.SIZE,
                   identity_mapped=True),
            Region("command line", cmdline_gpa, len(cmdline) + 1, identity_mapped=True),
            Region("GDT", layout.GDT_GPA, layout.GDT_ENTRIES * 8, identity_mapped=True),
        ]
        # "identity_mapped" here: reachable with 32-bit physical addresses (paging is off).
        layout.check_regions(regions, ram, ADDRESS_LIMIT_32)
        initrd_gpa, initrd_size = layout.place_initrd(
            options.initrd_size(), options.initrd_gpa, ADDRESS_LIMIT_32, "4 GiB", regions, ram,
            ADDRESS_LIMIT_32, explicit_may_exceed=True)
        modules = (() if initrd_gpa is None else (HvmModlistEntry(initrd_gpa, initrd_size),))
        info = HvmStartInfo(
            nr_modules=len(modules),
            modlist_paddr=modlist_gpa if modules else 0,
            cmdline_paddr=cmdline_gpa,
            memmap_paddr=memmap_gpa,
            memmap_entries=len(memmap),
        )
        return PvhBootPlan(
            load_addr=self.load_start,
            entry_gpa=self.pvh_note.entry,
            cmdline_gpa=cmdline_gpa,
            initrd_gpa=initrd_gpa,
            initrd_size=initrd_size,
            kernel_end=self.load_end,
            cmdline=cmdline,
            e820=tuple(e820),
            regions=tuple(regions),
            entry_mode=ENTRY_PVH,
            start_info_gpa=start_info_gpa,
            start_info=info,
            modlist_gpa=modlist_gpa if modules else None,
            modules=modules,
            memmap_gpa=memmap_gpa,
            memmap=memmap,
        )

    def prepare(self, vm: VirtualMachine, options: BootOptions | None = None) -> BootPlan | PvhBootPlan:
        """Plan, then write the segments, the boot data (zero page or start info), the
        command line and the initrd."""
        options = options or BootOptions()
        plan = self.plan(vm, options)
        initrd = options.initrd_bytes() if plan.initrd_size else None
        if initrd is not None and len(initrd) != plan.initrd_size:
            raise BootConfigError(
                f"initrd changed while loading: planned {plan.initrd_size} bytes, read {len(initrd)}"
            )
        # Pack everything before the first write, so a packing error leaves the guest untouched.
        writes: list[tuple[int, bytes]] = []
        if isinstance(plan, PvhBootPlan):
            writes.append((plan.start_info_gpa, plan.start_info.pack()))
            if plan.modlist_gpa is not None:
                writes.append((plan.modlist_gpa, pack_modlist(plan.modules)))
            writes.append((plan.memmap_gpa, pack_memmap(plan.memmap)))
        else:
            writes.append((plan.zero_page_gpa, self.build_zero_page(
                plan.cmdline_gpa, len(plan.cmdline), plan.initrd_gpa, plan.initrd_size,
                plan.e820)))
        writes.append((plan.cmdline_gpa, plan.cmdline + b"\0"))
        self.load_into_memory(vm)
        for gpa, blob in writes:
            vm.write(gpa, blob)
        if initrd is not None and plan.initrd_gpa is not None:
            vm.write(plan.initrd_gpa, initrd)
        return plan

    def __repr__(self) -> str:
        return (f"ElfKernel({self.name!r}, entry {self.elf.e_entry:#x}, PVH entry "
                f"{'none' if self.pvh_entry is None else hex(self.pvh_entry)}, "
                f"version {self.kernel_version!r})")


# -- parsing ------------------------------------------------------------------------------------


def _load_segments(elf: ElfFile) -> tuple[ProgramHeader, ...]:
    """The non-empty PT_LOAD segments, each checked against the file and the others."""
    loads = [s for s in elf.segments if s.type == PT_LOAD and s.memsz > 0]
    if not loads:
        raise KernelFormatError(
            f"{elf.name}: no PT_LOAD segment with p_memsz > 0 among its {len(elf.segments)} "
            f"program headers: nothing to load"
        )
    for s in loads:
        if s.filesz > s.memsz:
            raise KernelFormatError(
                f"{elf.name}: segment {s.index}: p_filesz {s.filesz:#x} is larger than p_memsz "
                f"{s.memsz:#x}"
            )
        if s.paddr + s.memsz > U64_LIMIT:
            raise KernelFormatError(
                f"{elf.name}: segment {s.index}: p_paddr {s.paddr:#x} + p_memsz {s.memsz:#x} "
                f"runs past the 64-bit physical address space"
            )
        elf.segment_data(s)  # raises if p_offset + p_filesz lies outside the file
    ordered = sorted(loads, key=lambda s: s.paddr)
    for a, b in itertools.pairwise(ordered):
        if b.paddr < a.paddr + a.memsz:
            raise KernelFormatError(
                f"{elf.name}: PT_LOAD segments {a.index} [{a.paddr:#x}, {a.paddr + a.memsz:#x}) "
                f"and {b.index} [{b.paddr:#x}, {b.paddr + b.memsz:#x}) overlap in physical memory"
            )
    return tuple(loads)


# -- planning -----------------------------------------------------------------------------------


# -- entry points -------------------------------------------------------------------------------


def load_elf_kernel(source: KernelSource) -> ElfKernel:
    """Read an ELF vmlinux from a path, a binary file object or bytes."""
    data, name = read_source(source)
    return ElfKernel(data, name)
