"""Every offset, size and flag of the Linux/x86 boot protocol that vmboot uses, in one place.

Authority: the kernel's ``Documentation/arch/x86/boot.rst`` ("THE REAL-MODE KERNEL
HEADER", "64-bit BOOT PROTOCOL") and ``arch/x86/include/uapi/asm/bootparam.h``
(``struct setup_header``, ``struct boot_params``). Offsets of setup-header fields
are given from the start of the kernel image (which is also their offset inside
``struct boot_params``, since the header sits at 0x1f1 in both).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# --- the image -----------------------------------------------------------------------------
SECTOR_SIZE = 512
SETUP_HEADER_OFFSET = 0x1F1
"""Where ``struct setup_header`` starts, in the image and in ``struct boot_params``."""
SETUP_HEADER_END_BYTE = 0x201
"""The byte holding (end of setup header - 0x202): the second byte of the ``jump`` field."""
SETUP_HEADER_JUMP_END = 0x202
SETUP_HEADER_MAX_END = 0x280
"""No known setup header reaches this far; a larger computed end is treated as corrupt."""
DEFAULT_SETUP_SECTS = 4
"""``setup_sects == 0`` means 4 (boot.rst)."""
BOOT_FLAG_MAGIC = 0xAA55
HEADER_MAGIC = b"HdrS"
ENTRY_64_OFFSET = 0x200
"""The 64-bit entry point is ``startup_64``: protected-mode load address + 0x200."""

# --- protocol versions ------------------------------------------------------------------------
PROTOCOL_2_00 = 0x0200
PROTOCOL_2_02 = 0x0202
PROTOCOL_2_03 = 0x0203
PROTOCOL_2_05 = 0x0205
PROTOCOL_2_06 = 0x0206
PROTOCOL_2_07 = 0x0207
PROTOCOL_2_08 = 0x0208
PROTOCOL_2_09 = 0x0209
PROTOCOL_2_10 = 0x020A
PROTOCOL_2_11 = 0x020B
PROTOCOL_2_12 = 0x020C
PROTOCOL_2_15 = 0x020F
MIN_64BIT_PROTOCOL = PROTOCOL_2_12
"""The 64-bit entry needs ``xloadflags`` (2.12) to say the kernel has one (as kexec-tools requires)."""
DEFAULT_CMDLINE_SIZE = 255
"""``cmdline_size`` for protocols before 2.06."""
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF
"""``initrd_addr_max`` for protocols before 2.03."""

# --- setup_header fields --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One ``struct setup_header`` field: image offset, size in bytes, first protocol having it."""

    name: str
    offset: int
    size: int
    since: int = PROTOCOL_2_00
    """The boot protocol version that introduced the field (older kernels leave it undefined)."""


SETUP_HEADER_FIELDS: tuple[HeaderField, ...] = (
    HeaderField("setup_sects", 0x1F1, 1, 0),
    HeaderField("root_flags", 0x1F2, 2, 0),
    HeaderField("syssize", 0x1F4, 4, 0),
    HeaderField("ram_size", 0x1F8, 2, 0),
    HeaderField("vid_mode", 0x1FA, 2, 0),
    HeaderField("root_dev", 0x1FC, 2, 0),
    HeaderField("boot_flag", 0x1FE, 2, 0),
    HeaderField("jump", 0x200, 2),
    HeaderField("header", 0x202, 4),
    HeaderField("version", 0x206, 2),
    HeaderField("realmode_swtch", 0x208, 4),
    HeaderField("start_sys_seg", 0x20C, 2),
    HeaderField("kernel_version", 0x20E, 2),
    HeaderField("type_of_loader", 0x210, 1),
    HeaderField("loadflags", 0x211, 1),
    HeaderField("setup_move_size", 0x212, 2, PROTOCOL_2_00),
    HeaderField("code32_start", 0x214, 4),
    HeaderField("ramdisk_image", 0x218, 4),
    HeaderField("ramdisk_size", 0x21C, 4),
    HeaderField("bootsect_kludge", 0x220, 4),
    HeaderField("heap_end_ptr", 0x224, 2, 0x0201),
    HeaderField("ext_loader_ver", 0x226, 1, PROTOCOL_2_02),
    HeaderField("ext_loader_type", 0x227, 1, PROTOCOL_2_02),
    HeaderField("cmd_line_ptr", 0x228, 4, PROTOCOL_2_02),
    HeaderField("initrd_addr_max", 0x22C, 4, PROTOCOL_2_03),
    HeaderField("kernel_alignment", 0x230, 4, PROTOCOL_2_05),
    HeaderField("relocatable_kernel", 0x234, 1, PROTOCOL_2_05),
    HeaderField("min_alignment", 0x235, 1, PROTOCOL_2_10),
    HeaderField("xloadflags", 0x236, 2, PROTOCOL_2_12),
    HeaderField("cmdline_size", 0x238, 4, PROTOCOL_2_06),
    HeaderField("hardware_subarch", 0x23C, 4, PROTOCOL_2_07),
    HeaderField("hardware_subarch_data", 0x240, 8, PROTOCOL_2_07),
    HeaderField("payload_offset", 0x248, 4, PROTOCOL_2_08),
    HeaderField("payload_length", 0x24C, 4, PROTOCOL_2_08),
    HeaderField("setup_data", 0x250, 8, PROTOCOL_2_09),
    HeaderField("pref_address", 0x258, 8, PROTOCOL_2_10),
    HeaderField("init_size", 0x260, 4, PROTOCOL_2_10),
    HeaderField("handover_offset", 0x264, 4, PROTOCOL_2_11),
    HeaderField("kernel_info_offset", 0x268, 4, PROTOCOL_2_15),
)
SETUP_HEADER_FIELD_BY_NAME = {f.name: f for f in SETUP_HEADER_FIELDS}
SETUP_HEADER_SIZE = 0x26C - SETUP_HEADER_OFFSET
"""``sizeof(struct setup_header)`` as of protocol 2.15 (123 bytes)."""

# --- loadflags / xloadflags -------------------------------------------------------------------
class LoadFlag(enum.IntFlag):
    """``setup_header.loadflags`` (boot.rst)."""

    LOADED_HIGH = 1 << 0
    KASLR_FLAG = 1 << 1
    QUIET_FLAG = 1 << 5
    KEEP_SEGMENTS = 1 << 6
    CAN_USE_HEAP = 1 << 7


class XLoadFlag(enum.IntFlag):
    """``setup_header.xloadflags`` (protocol 2.12+; boot.rst)."""

    XLF_KERNEL_64 = 1 << 0
    XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
    XLF_EFI_HANDOVER_32 = 1 << 2
    XLF_EFI_HANDOVER_64 = 1 << 3
    XLF_EFI_KEXEC = 1 << 4
    XLF_5LEVEL = 1 << 5
    XLF_5LEVEL_ENABLED = 1 << 6


# The kernel's own names, as bootparam.h spells them.
LOADED_HIGH = LoadFlag.LOADED_HIGH
KASLR_FLAG = LoadFlag.KASLR_FLAG
QUIET_FLAG = LoadFlag.QUIET_FLAG
KEEP_SEGMENTS = LoadFlag.KEEP_SEGMENTS
CAN_USE_HEAP = LoadFlag.CAN_USE_HEAP
XLF_KERNEL_64 = XLoadFlag.XLF_KERNEL_64
XLF_CAN_BE_LOADED_ABOVE_4G = XLoadFlag.XLF_CAN_BE_LOADED_ABOVE_4G
XLF_EFI_HANDOVER_32 = XLoadFlag.XLF_EFI_HANDOVER_32
XLF_EFI_HANDOVER_64 = XLoadFlag.XLF_EFI_HANDOVER_64
XLF_EFI_KEXEC = XLoadFlag.XLF_EFI_KEXEC
XLF_5LEVEL = XLoadFlag.XLF_5LEVEL
XLF_5LEVEL_ENABLED = XLoadFlag.XLF_5LEVEL_ENABLED


def flag_names(value: int, flags: type[enum.IntFlag]) -> list[str]:
    """The names of the ``flags`` set in ``value``, then any unknown bits in hex."""
    out = [f.name for f in flags if f.name is not None and value & f]
    unknown = value & ~sum(f.value for f in flags)
    if unknown:
        out.append(f"{unknown:#x}")
    return out


LOW_LOAD_ADDRESS = 0x10000
"""Where a zImage (not LOADED_HIGH) kernel's protected-mode part goes: 64 KiB."""
HIGH_LOAD_ADDRESS = 0x100000
"""Where a LOADED_HIGH kernel's protected-mode part goes by default: 1 MiB."""

# --- type_of_loader -------------------------------------------------------------------------
LOADER_TYPE_UNDEFINED = 0xFF
"""``type_of_loader`` for a boot loader without an assigned ID (boot.rst)."""

# --- struct boot_params (the zero page) -----------------------------------------------------
BOOT_PARAMS_SIZE = 0x1000
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_ACPI_RSDP_ADDR = 0x070
BP_E820_ENTRIES = 0x1E8
BP_SENTINEL = 0x1EF
BP_HDR = SETUP_HEADER_OFFSET
BP_E820_TABLE = 0x2D0
E820_ENTRY_SIZE = 20
E820_MAX_ENTRIES_ZEROPAGE = 128
"""``E820_MAX_ENTRIES_ZEROPAGE``: entries that fit in ``boot_params.e820_table``."""

# Setup-header fields a boot loader writes into boot_params (image offsets == zero-page offsets).
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_CMD_LINE_PTR = 0x228
HDR_SETUP_DATA = 0x250

# --- setup_data ------------------------------------------------------------------------------
SETUP_NONE = 0
SETUP_E820_EXT = 1
SETUP_DTB = 2
SETUP_PCI = 3
SETUP_EFI = 4
SETUP_APPLE_PROPERTIES = 5
SETUP_JAILHOUSE = 6
SETUP_CC_BLOB = 7
SETUP_IMA = 8
SETUP_RNG_SEED = 9
SETUP_DATA_HEADER_SIZE = 16
"""``struct setup_data``: u64 next, u32 type, u32 len, then ``len`` bytes."""

# --- GDT selectors of the 64-bit boot protocol --------------------------------------------------
BOOT_CS = 0x10
"""``__BOOT_CS``: 64-bit flat code, execute/read."""
BOOT_DS = 0x18
"""``__BOOT_DS``: flat data, read/write."""
