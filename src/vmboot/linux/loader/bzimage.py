"""bzImage kernels: read the setup header, plan the layout, write the guest, build the zero page.

The loader half of the boot (the configurator half is :class:`~vmboot.linux.configurator.plan.BootPlan`).
Everything is validated before the first byte is written to guest memory, so a refused
boot leaves the guest untouched.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from vmboot.compression.kernel_payload import detect_compression
from vmboot.elf import ELF_MAGIC
from vmboot.errors import (
    BootConfigError,
    CmdlineError,
    KernelFormatError,
    KernelImageError,
    LayoutError,
    UnsupportedKernelError,
)
from vmboot.hv.base import VirtualMachine
from vmboot.linux import bootparam as bp
from vmboot.linux.configurator import layout
from vmboot.linux.configurator.e820 import E820Entry, default_e820_map, pack_table, validate_e820
from vmboot.linux.configurator.layout import Region
from vmboot.linux.configurator.long_mode import KernelPlacement, cmdline_address, plan_long_mode
from vmboot.linux.configurator.plan import BootPlan
from vmboot.linux.configurator.pvh import PvhBootPlan
from vmboot.linux.configurator.zero_page import U32_LIMIT, put_e820, put_split
from vmboot.linux.kernel import KernelFormat
from vmboot.linux.loader.setup_header import SetupHeader
from vmboot.linux.loader.source import KERNEL_VERSION_MAX, KernelSource, read_source
from vmboot.linux.options import BootOptions, EntryMode

if TYPE_CHECKING:
    from vmboot.linux.loader.elf_kernel import ElfEntry, ElfKernel

ENTRY_BZIMAGE64: EntryMode = "bzimage64"
HOST_DECOMPRESSED_ENTRIES: tuple[EntryMode, ...] = ("elf64", "pvh")
"""Entries a bzImage offers through its payload decompressed on the host (see
:meth:`BzImage.vmlinux`)."""


@dataclass(frozen=True)
class EntryCheck:
    """Whether the 64-bit entry can be used, and why not."""

    ok: bool
    reason: str


class BzImage:
    """A bzImage kernel: its setup header, its protected-mode payload, and how to boot it.

    Entries (``BootOptions.entry``):

    - ``"bzimage64"`` (and ``"auto"``): the 64-bit boot protocol entry at load + 0x200. The
      kernel's own decompressor runs in the guest, then relocates and enters the kernel.
    - ``"elf64"`` and ``"pvh"``: the payload (the compressed ``vmlinux.bin``, an ELF file) is
      decompressed on the host (:meth:`vmlinux`) and booted as an
      :class:`~vmboot.linux.loader.elf_kernel.ElfKernel`: its PT_LOAD segments go to their
      ``p_paddr``, the link-time physical addresses, so no relocation is processed and there
      is no KASLR, exactly as when booting the vmlinux itself. Under an emulating hypervisor
      this skips seconds of in-guest decompression. For ``"elf64"`` the zero page carries
      this bzImage's own setup header (as the kernel proper would receive it from its
      decompressor) with the loader's fields filled in.
    """

    format = KernelFormat.BZIMAGE

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self.data = data
        self.name = name
        self.setup_header = _parse_and_validate(data, name)
        self._pm_offset = self.setup_header.setup_size
        self._vmlinux: ElfKernel | None = None

    # -- what the image says ----------------------------------------------------------------
    @property
    def header_bytes(self) -> bytes:
        """The raw setup header as the image has it: offsets 0x1f1 up to its computed end."""
        return self.data[bp.SETUP_HEADER_OFFSET : self.setup_header.header_end]

    @property
    def payload_offset(self) -> int:
        """Offset of the protected-mode part in the file: (setup_sects + 1) * 512."""
        return self._pm_offset

    def payload(self) -> memoryview:
        """The protected-mode part: what is loaded at the load address."""
        return memoryview(self.data)[self._pm_offset :]

    def compressed_payload(self) -> memoryview | None:
        """The compressed vmlinux inside the protected-mode part (protocol 2.08+), if known."""
        h = self.setup_header
        if not h.is_defined("payload_offset") or h.payload_length == 0:
            return None
        return self.payload()[h.payload_offset : h.payload_offset + h.payload_length]

    @property
    def compression(self) -> str:
        blob = self.compressed_payload()
        return "unknown" if blob is None else detect_compression(blob)

    @property
    def kernel_version(self) -> str | None:
        """The version string the header's ``kernel_version`` field points at (offset + 0x200)."""
        ptr = self.setup_header.kernel_version
        if ptr == 0:
            return None
        start = ptr + bp.SECTOR_SIZE
        raw = self.data[start : start + KERNEL_VERSION_MAX]
        end = raw.find(b"\0")
        if end <= 0:
            return None
        return raw[:end].decode("ascii", "replace")

    @property
    def init_size(self) -> int:
        """Bytes the kernel needs from its load address to boot (at least the payload's size)."""
        h = self.setup_header
        init = h.init_size if h.is_defined("init_size") else 0
        return max(init, len(self.payload()))

    def default_load_address(self) -> int:
        """pref_address if non-zero, else 1 MiB if LOADED_HIGH, else 64 KiB."""
        h = self.setup_header
        if h.is_defined("pref_address") and h.pref_address:
            return h.pref_address
        return bp.HIGH_LOAD_ADDRESS if h.loaded_high else bp.LOW_LOAD_ADDRESS

    def entry_point(self, load_addr: int) -> int:
        """The 64-bit entry (``startup_64``): load address + 0x200."""
        return load_addr + bp.ENTRY_64_OFFSET

    def check_64bit_entry(self) -> EntryCheck:
        h = self.setup_header
        if h.version < bp.MIN_64BIT_PROTOCOL:
            return EntryCheck(
                False,
                f"boot protocol {h.version_string} is older than 2.12, the first with xloadflags "
                f"to declare a 64-bit entry point",
            )
        if not h.xloadflags & bp.XLF_KERNEL_64:
            return EntryCheck(False, "xloadflags lacks XLF_KERNEL_64: this kernel has no 64-bit entry")
        return EntryCheck(True, "protocol >= 2.12 and XLF_KERNEL_64 set")

    # -- the vmlinux inside ------------------------------------------------------------------
    def vmlinux(self, entry: str | None = None) -> ElfKernel:
        """The payload decompressed on the host and parsed as an ELF vmlinux (memoised).

        Raises :class:`~vmboot.errors.UnsupportedKernelError` naming the file, ``entry`` (the
        entry asked for, if any) and the usable entries when there is no payload, its
        compression is not supported, it does not decompress, or what it decompresses to is
        not an ELF vmlinux. Nothing is written anywhere, so a refusal leaves guest RAM as is.
        """
        if self._vmlinux is None:
            from vmboot.compression.kernel_payload import decompress_payload
            from vmboot.linux.loader.elf_kernel import ElfKernel

            payload = self.compressed_payload()
            if payload is None:
                self._refuse_host_entry(entry, "the setup header has no payload_offset/"
                                               "payload_length (boot protocol < 2.08)")
            try:
                data = decompress_payload(payload, self.name)
                if not data.startswith(ELF_MAGIC):
                    head = f"start with {data[:8].hex(' ')}" if data else "are empty"
                    self._refuse_host_entry(
                        entry, f"its {self.compression} payload decompresses to {len(data)} "
                               f"bytes that are not an ELF file (they {head})")
                self._vmlinux = ElfKernel(data, f"{self.name} (decompressed payload)",
                                          setup_header=self.header_bytes)
            except UnsupportedKernelError:
                raise
            except KernelImageError as exc:
                self._refuse_host_entry(entry, str(exc), exc)
        return self._vmlinux

    def _refuse_host_entry(self, entry: str | None, reason: str,
                           cause: Exception | None = None) -> NoReturn:
        usable = ENTRY_BZIMAGE64 if self.check_64bit_entry().ok else "none"
        what = (f"entry {entry!r}" if entry is not None else
                f"entries {' and '.join(map(repr, HOST_DECOMPRESSED_ENTRIES))}")
        raise UnsupportedKernelError(
            f"{self.name}: {what} cannot be used with a bzImage unless its payload "
            f"decompresses on the host to an ELF vmlinux, but {reason}; usable entries: {usable}"
        ) from cause

    def entries(self) -> dict[str, ElfEntry]:
        """Every entry this bzImage offers: ``"bzimage64"`` and, through :meth:`vmlinux`,
        ``"elf64"`` and ``"pvh"``, usable or not (this decompresses the payload)."""
        from vmboot.linux.loader.elf_kernel import ElfEntry

        check = self.check_64bit_entry()
        load = self.default_load_address()
        result: dict[str, ElfEntry] = {ENTRY_BZIMAGE64: ElfEntry(
            "bzimage64", self.entry_point(load), check.ok,
            f"startup_64 at load + 0x200; the kernel decompresses itself in the guest "
            f"({check.reason})")}
        try:
            inner = self.vmlinux().entries()
        except UnsupportedKernelError as exc:
            for mode in HOST_DECOMPRESSED_ENTRIES:
                result[mode] = ElfEntry(mode, None, False, str(exc))
            return result
        for mode, e in inner.items():
            result[mode] = ElfEntry(e.mode, e.address, e.usable,
                                    f"payload decompressed on the host, no KASLR: {e.reason}")
        return result

    # -- loading ----------------------------------------------------------------------------
    def load_into_memory(self, vm: VirtualMachine, load_addr: int) -> None:
        """Zero ``[load, load + max(init_size, len(payload)))`` and copy the payload there."""
        payload = self.payload()
        vm.memory.offset_of(load_addr, self.init_size)  # refuse before writing anything
        vm.zero(load_addr + len(payload), self.init_size - len(payload))
        vm.write(load_addr, payload)

    def build_zero_page(
        self,
        cmdline_gpa: int,
        initrd_gpa: int | None = None,
        initrd_size: int = 0,
        e820: Sequence[E820Entry] = (),
        setup_data_gpa: int | None = None,
        kernel_alignment: int | None = None,
    ) -> bytes:
        """``struct boot_params`` for this kernel, per bootparam.h.

        The image's setup header is copied in (0x1f1 to its computed end), then
        type_of_loader = 0xFF, cmd_line_ptr (+ ext_cmd_line_ptr above 4 GiB),
        ramdisk_image/size (+ ext_ fields above 4 GiB, only if XLF_CAN_BE_LOADED_ABOVE_4G),
        e820_entries/e820_table (at most 128) and setup_data; everything else is zero.
        """
        h = self.setup_header
        if len(e820) > bp.E820_MAX_ENTRIES_ZEROPAGE:
            raise BootConfigError(
                f"e820: {len(e820)} entries; the zero page holds at most "
                f"{bp.E820_MAX_ENTRIES_ZEROPAGE} (pass the rest as SETUP_E820_EXT setup_data)"
            )
        if setup_data_gpa is not None and not 0 <= setup_data_gpa < 1 << 64:
            raise LayoutError(f"setup_data {setup_data_gpa:#x} is not a 64-bit guest-physical address")
        if kernel_alignment is not None and not 0 < kernel_alignment < U32_LIMIT:
            raise BootConfigError(
                f"kernel_alignment {kernel_alignment:#x} does not fit the 32-bit header field"
            )
        above_4g_ok = bool(h.effective_xloadflags & bp.XLF_CAN_BE_LOADED_ABOVE_4G)
        zp = bytearray(bp.BOOT_PARAMS_SIZE)
        zp[bp.SETUP_HEADER_OFFSET : h.header_end] = self.header_bytes
        zp[bp.HDR_TYPE_OF_LOADER] = bp.LOADER_TYPE_UNDEFINED
        put_split(zp, "cmd_line_ptr", cmdline_gpa, bp.HDR_CMD_LINE_PTR, bp.BP_EXT_CMD_LINE_PTR,
                  above_4g_ok)
        if initrd_gpa is not None and initrd_size:
            put_split(zp, "ramdisk_image", initrd_gpa, bp.HDR_RAMDISK_IMAGE,
                      bp.BP_EXT_RAMDISK_IMAGE, above_4g_ok)
            put_split(zp, "ramdisk_size", initrd_size, bp.HDR_RAMDISK_SIZE,
                      bp.BP_EXT_RAMDISK_SIZE, above_4g_ok)
        put_e820(zp, e820)
        if setup_data_gpa is not None:
            struct.pack_into("<Q", zp, bp.HDR_SETUP_DATA, setup_data_gpa)
        if kernel_alignment is not None:
            off = bp.SETUP_HEADER_FIELD_BY_NAME["kernel_alignment"].offset
            struct.pack_into("<I", zp, off, kernel_alignment)
        return bytes(zp)

    # -- planning and preparing --------------------------------------------------------------
    def plan(self, vm: VirtualMachine, options: BootOptions | None = None) -> BootPlan | PvhBootPlan:
        """Decide where everything goes and check it all, writing nothing."""
        options = options or BootOptions()
        if options.entry in HOST_DECOMPRESSED_ENTRIES:
            return self.vmlinux(options.entry).plan(vm, options)
        return _plan(self, vm, options)

    def prepare(self, vm: VirtualMachine, options: BootOptions | None = None) -> BootPlan | PvhBootPlan:
        """Plan, then write the kernel, zero page, command line, initrd and setup_data."""
        options = options or BootOptions()
        if options.entry in HOST_DECOMPRESSED_ENTRIES:
            return self.vmlinux(options.entry).prepare(vm, options)
        plan = _plan(self, vm, options)
        initrd = options.initrd_bytes() if plan.initrd_size else None
        if initrd is not None and len(initrd) != plan.initrd_size:
            raise BootConfigError(
                f"initrd changed while loading: planned {plan.initrd_size} bytes, read {len(initrd)}"
            )
        self.load_into_memory(vm, plan.load_addr)
        ext = list(plan.e820[bp.E820_MAX_ENTRIES_ZEROPAGE :])
        if ext:
            assert plan.setup_data_gpa is not None
            vm.write(plan.setup_data_gpa, _e820_ext_setup_data(ext))
        vm.write(plan.zero_page_gpa, self.build_zero_page(
            plan.cmdline_gpa,
            plan.initrd_gpa,
            plan.initrd_size,
            plan.e820[: bp.E820_MAX_ENTRIES_ZEROPAGE],
            plan.setup_data_gpa,
            _alignment_to_report(self.setup_header, plan.load_addr),
        ))
        vm.write(plan.cmdline_gpa, plan.cmdline + b"\0")
        if initrd is not None and plan.initrd_gpa is not None:
            vm.write(plan.initrd_gpa, initrd)
        return plan

    def __repr__(self) -> str:
        return (f"BzImage({self.name!r}, protocol {self.setup_header.version_string}, "
                f"version {self.kernel_version!r})")


# -- parsing ------------------------------------------------------------------------------------


def _parse_and_validate(data: bytes, name: str) -> SetupHeader:
    magic_end = bp.SETUP_HEADER_JUMP_END + len(bp.HEADER_MAGIC)
    if len(data) < magic_end:
        raise KernelFormatError(
            f"{name}: {len(data)} bytes is too short for a bzImage: the setup header's magic "
            f"ends at {magic_end:#x}"
        )
    magic = data[bp.SETUP_HEADER_JUMP_END:magic_end]
    if magic != bp.HEADER_MAGIC:
        raise KernelFormatError(
            f"{name}: no boot protocol header: bytes at 0x202 are {magic!r}, expected {bp.HEADER_MAGIC!r}"
        )
    header_len = bp.SETUP_HEADER_OFFSET + bp.SETUP_HEADER_SIZE
    head = data[:header_len].ljust(header_len, b"\0")
    h = SetupHeader.parse(head)
    if h.boot_flag != bp.BOOT_FLAG_MAGIC:
        raise KernelFormatError(
            f"{name}: boot_flag (0x1fe) is {h.boot_flag:#06x}, expected {bp.BOOT_FLAG_MAGIC:#06x}"
        )
    if h.version < bp.PROTOCOL_2_00:
        raise UnsupportedKernelError(
            f"{name}: boot protocol version {h.version:#06x} predates 2.00 (HdrS images start at 2.00)"
        )
    if h.header_end > bp.SETUP_HEADER_MAX_END:
        raise KernelFormatError(
            f"{name}: setup header end {h.header_end:#x} (0x202 + byte at 0x201) is past "
            f"{bp.SETUP_HEADER_MAX_END:#x}: corrupt header"
        )
    if len(data) < h.header_end:
        raise KernelFormatError(
            f"{name}: truncated: {len(data)} bytes, the setup header ends at {h.header_end:#x}"
        )
    if len(data) <= h.setup_size:
        raise KernelFormatError(
            f"{name}: truncated: {len(data)} bytes, but setup_sects={h.setup_sects} puts the "
            f"protected-mode kernel at {h.setup_size:#x}"
        )
    pm_len = len(data) - h.setup_size
    if h.version >= 0x0204 and h.syssize * 16 > pm_len:
        raise KernelFormatError(
            f"{name}: truncated: syssize={h.syssize:#x} says the protected-mode kernel has "
            f"{h.syssize * 16:#x} bytes, the file has {pm_len:#x}"
        )
    payload_end = h.payload_offset + h.payload_length
    if h.is_defined("payload_offset") and h.payload_length and payload_end > pm_len:
        raise KernelFormatError(
            f"{name}: payload_offset {h.payload_offset:#x} + payload_length "
            f"{h.payload_length:#x} runs past the protected-mode kernel ({pm_len:#x} bytes)"
        )
    if h.relocatable and h.is_defined("kernel_alignment"):
        align = h.kernel_alignment
        if align == 0 or align & (align - 1):
            raise KernelFormatError(
                f"{name}: kernel_alignment {align:#x} is not a power of two"
            )
    return h


# -- planning -----------------------------------------------------------------------------------


def _required_alignment(h: SetupHeader) -> int:
    """Alignment an explicit load address must have: 1 << min_alignment if given, else
    kernel_alignment."""
    if h.is_defined("min_alignment") and h.min_alignment:
        return 1 << h.min_alignment
    return max(h.kernel_alignment, 1)


def _alignment_to_report(h: SetupHeader, load: int) -> int | None:
    """boot.rst: a loader that uses a lesser alignment than kernel_alignment updates the field."""
    if not h.relocatable or load % h.kernel_alignment == 0:
        return None
    return load & -load


def _check_load_address(kernel: BzImage, load: int | None) -> int:
    h = kernel.setup_header
    default = kernel.default_load_address()
    if load is None:
        if h.relocatable:
            return layout.align_up(default, h.kernel_alignment)
        return default
    if not h.relocatable:
        if load != default:
            raise BootConfigError(
                f"load_addr {load:#x}: {kernel.name} is not relocatable (relocatable_kernel=0); "
                f"it can only be loaded at {default:#x}"
            )
        return load
    need = _required_alignment(h)
    if load % need:
        raise BootConfigError(
            f"load_addr {load:#x} is not a multiple of the kernel's required alignment "
            f"{need:#x}; the nearest valid addresses are {layout.align_down(load, need):#x} and "
            f"{layout.align_up(load, need):#x}"
        )
    return load


def _plan(kernel: BzImage, vm: VirtualMachine, options: BootOptions) -> BootPlan:
    h = kernel.setup_header
    if options.entry not in ("auto", ENTRY_BZIMAGE64):
        raise UnsupportedKernelError(
            f"{kernel.name}: entry {options.entry!r} cannot be used with a bzImage; usable "
            f"entries: {', '.join((ENTRY_BZIMAGE64, *HOST_DECOMPRESSED_ENTRIES))} (or 'auto')"
        )
    entry = kernel.check_64bit_entry()
    if not entry.ok:
        raise UnsupportedKernelError(f"{kernel.name}: cannot use the 64-bit entry: {entry.reason}")
    options.check_scalars()
    ram = list(vm.memory.ram_ranges())
    above_4g_ok = bool(h.effective_xloadflags & bp.XLF_CAN_BE_LOADED_ABOVE_4G)

    cmdline = options.cmdline_bytes()
    limit = h.effective_cmdline_size
    if len(cmdline) > limit:
        raise CmdlineError(
            f"cmdline: {len(cmdline)} bytes is longer than the kernel's cmdline_size {limit} "
            f"(NUL excluded)"
        )

    load = _check_load_address(kernel, options.load_addr)
    for what, gpa in (("zero_page_gpa", options.zero_page_gpa),
                      ("cmdline_gpa", cmdline_address(options))):
        if gpa + bp.BOOT_PARAMS_SIZE > U32_LIMIT and not above_4g_ok:
            raise LayoutError(
                f"{what} {gpa:#x} is above 4 GiB, but {kernel.name} lacks "
                f"XLF_CAN_BE_LOADED_ABOVE_4G"
            )

    e820 = list(options.e820) if options.e820 is not None else _e820_for_ram(ram)
    validate_e820(e820)
    placement = KernelPlacement(
        regions=(Region("kernel", load, kernel.init_size, identity_mapped=True),),
        load_addr=load,
        entry_gpa=kernel.entry_point(load),
        kernel_end=load + kernel.init_size,
        entry_mode=ENTRY_BZIMAGE64,
        initrd_limit=h.effective_initrd_addr_max + 1,
        initrd_limit_name=f"initrd_addr_max {h.effective_initrd_addr_max:#x}",
        initrd_may_exceed_limit=above_4g_ok,
    )
    return plan_long_mode(placement, options, ram, cmdline, e820)


def _e820_for_ram(ram: Sequence[tuple[int, int]]) -> list[E820Entry]:
    """The default map for the VM's actual RAM regions (see :func:`default_e820_map`)."""
    total = sum(end - start for start, end in ram)
    return default_e820_map(0, total)


def _e820_ext_setup_data(entries: Sequence[E820Entry]) -> bytes:
    body = pack_table(entries)
    return struct.pack("<QII", 0, bp.SETUP_E820_EXT, len(body)) + body


def load_bzimage(source: KernelSource) -> BzImage:
    """Read a bzImage from a path, a binary file object or bytes."""
    data, name = read_source(source)
    return BzImage(data, name)


KernelImage = BzImage
"""The name :class:`BzImage` had before; kept so that existing imports work."""
