"""``struct setup_header``: parse it from a kernel image and pack it back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vmboot.linux import bootparam as bp


@dataclass(frozen=True, slots=True)
class SetupHeader:
    """All fields of ``struct setup_header`` (bootparam.h names), as read from the image.

    Fields introduced after the kernel's protocol ``version`` hold whatever bytes the
    image has there; :meth:`is_defined` says which ones the protocol defines.
    """

    setup_sects: int
    root_flags: int
    syssize: int
    ram_size: int
    vid_mode: int
    root_dev: int
    boot_flag: int
    jump: int
    header: int
    version: int
    realmode_swtch: int
    start_sys_seg: int
    kernel_version: int
    type_of_loader: int
    loadflags: int
    setup_move_size: int
    code32_start: int
    ramdisk_image: int
    ramdisk_size: int
    bootsect_kludge: int
    heap_end_ptr: int
    ext_loader_ver: int
    ext_loader_type: int
    cmd_line_ptr: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable_kernel: int
    min_alignment: int
    xloadflags: int
    cmdline_size: int
    hardware_subarch: int
    hardware_subarch_data: int
    payload_offset: int
    payload_length: int
    setup_data: int
    pref_address: int
    init_size: int
    handover_offset: int
    kernel_info_offset: int

    @classmethod
    def parse(cls, image: bytes | memoryview) -> SetupHeader:
        """Decode the header from the first bytes of an image (at least 0x26c of them)."""
        values = {
            f.name: int.from_bytes(image[f.offset : f.offset + f.size], "little")
            for f in bp.SETUP_HEADER_FIELDS
        }
        return cls(**values)

    def pack(self) -> bytes:
        """The 123 bytes of ``struct setup_header`` (image offsets 0x1f1..0x26b)."""
        out = bytearray(bp.SETUP_HEADER_SIZE)
        for f in bp.SETUP_HEADER_FIELDS:
            start = f.offset - bp.SETUP_HEADER_OFFSET
            out[start : start + f.size] = getattr(self, f.name).to_bytes(f.size, "little")
        return bytes(out)

    def replace(self, **changes: int) -> SetupHeader:
        return dataclasses.replace(self, **changes)

    # -- derived facts --------------------------------------------------------------------------
    @property
    def magic_ok(self) -> bool:
        return self.header.to_bytes(4, "little") == bp.HEADER_MAGIC

    @property
    def version_string(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    def is_defined(self, name: str) -> bool:
        """True if the kernel's protocol version defines field ``name``."""
        return self.version >= bp.SETUP_HEADER_FIELD_BY_NAME[name].since

    @property
    def effective_setup_sects(self) -> int:
        return self.setup_sects or bp.DEFAULT_SETUP_SECTS

    @property
    def setup_size(self) -> int:
        """Bytes of the real-mode part (boot sector + setup), where the protected-mode part starts."""
        return (self.effective_setup_sects + 1) * bp.SECTOR_SIZE

    @property
    def header_end(self) -> int:
        """Image offset one past the setup header: 0x202 + the byte at 0x201."""
        return bp.SETUP_HEADER_JUMP_END + ((self.jump >> 8) & 0xFF)

    @property
    def effective_cmdline_size(self) -> int:
        return self.cmdline_size if self.is_defined("cmdline_size") else bp.DEFAULT_CMDLINE_SIZE

    @property
    def effective_initrd_addr_max(self) -> int:
        if self.is_defined("initrd_addr_max"):
            return self.initrd_addr_max
        return bp.DEFAULT_INITRD_ADDR_MAX

    @property
    def relocatable(self) -> bool:
        return self.is_defined("relocatable_kernel") and self.relocatable_kernel != 0

    @property
    def effective_xloadflags(self) -> int:
        return self.xloadflags if self.is_defined("xloadflags") else 0

    @property
    def loaded_high(self) -> bool:
        return bool(self.loadflags & bp.LOADED_HIGH)

    def loadflag_names(self) -> list[str]:
        return bp.flag_names(self.loadflags, bp.LoadFlag)

    def xloadflag_names(self) -> list[str]:
        return bp.flag_names(self.effective_xloadflags, bp.XLoadFlag)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in bp.SETUP_HEADER_FIELDS}
