"""Build synthetic bzImage files for tests, for any boot protocol version from 2.00 on.

Only fields the given protocol version defines are filled in; the rest of the header
bytes stay zero, as in a real image of that era.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmboot.linux import bootparam as bp


@dataclass
class BzImageSpec:
    version: int = 0x020F
    setup_sects: int = 4
    loadflags: int = bp.LOADED_HIGH
    xloadflags: int = bp.XLF_KERNEL_64 | bp.XLF_CAN_BE_LOADED_ABOVE_4G
    kernel_alignment: int = 0x200000
    relocatable: int = 1
    min_alignment: int = 21
    cmdline_size: int = 2047
    initrd_addr_max: int = 0x7FFFFFFF
    pref_address: int = 0x1000000
    init_size: int = 0x400000
    payload: bytes = b"\x02\x21\x4c\x18" + bytes(0x1000)
    pm_size: int = 0x4000
    version_string: str = "6.99.0-synthetic (test@vmboot) #1"
    header_end_byte: int | None = None
    overrides: dict[str, int] = field(default_factory=dict)


def build_bzimage(spec: BzImageSpec | None = None) -> bytes:
    spec = spec or BzImageSpec()
    setup_sects = spec.setup_sects or bp.DEFAULT_SETUP_SECTS
    setup_size = (setup_sects + 1) * bp.SECTOR_SIZE
    img = bytearray(setup_size)
    values: dict[str, int] = {
        "setup_sects": spec.setup_sects,
        "boot_flag": bp.BOOT_FLAG_MAGIC,
        "header": int.from_bytes(bp.HEADER_MAGIC, "little"),
        "version": spec.version,
        "loadflags": spec.loadflags,
        "code32_start": bp.HIGH_LOAD_ADDRESS,
    }
    # The version string lives in the setup area; kernel_version points at it minus 0x200.
    vs_off = 0x400
    vs = spec.version_string.encode() + b"\0"
    img[vs_off : vs_off + len(vs)] = vs
    values["kernel_version"] = vs_off - bp.SECTOR_SIZE
    optional = {
        "initrd_addr_max": spec.initrd_addr_max,
        "kernel_alignment": spec.kernel_alignment,
        "relocatable_kernel": spec.relocatable,
        "min_alignment": spec.min_alignment,
        "xloadflags": spec.xloadflags,
        "cmdline_size": spec.cmdline_size,
        "pref_address": spec.pref_address,
        "init_size": spec.init_size,
    }
    for name, value in optional.items():
        if spec.version >= bp.SETUP_HEADER_FIELD_BY_NAME[name].since:
            values[name] = value
    pm = bytearray(spec.pm_size)
    if spec.version >= bp.PROTOCOL_2_08:
        payload_off = 0x100
        pm[payload_off : payload_off + len(spec.payload)] = spec.payload
        values["payload_offset"] = payload_off
        values["payload_length"] = len(spec.payload)
    # A recognisable byte pattern at the 64-bit entry (+0x200) and the end of the payload.
    pm[0x200:0x204] = b"\xf4\xeb\xfd\x90"
    pm[-4:] = b"TAIL"
    values["syssize"] = (len(pm) + 15) // 16
    values.update(spec.overrides)
    # jump: a short jmp (0xEB) whose displacement byte gives the end of the header.
    end_byte = spec.header_end_byte
    if end_byte is None:
        end_byte = _header_end_for(spec.version) - bp.SETUP_HEADER_JUMP_END
    values.setdefault("jump", 0xEB | end_byte << 8)
    for name, value in values.items():
        f = bp.SETUP_HEADER_FIELD_BY_NAME[name]
        img[f.offset : f.offset + f.size] = value.to_bytes(f.size, "little")
    return bytes(img + pm)


def _header_end_for(version: int) -> int:
    """Where a real kernel of this protocol version ends its header."""
    last = [f for f in bp.SETUP_HEADER_FIELDS if f.since <= version][-1]
    return last.offset + last.size


def u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def u64(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", data, off)[0])
