"""Every offset, size and constant vmboot.linux.bootparam names, against the kernel's <asm/bootparam.h>.

A C program is generated from bootparam.py itself, compiled with gcc against the uapi
header from linux-libc-dev, and its output compared, as test_kvm_abi.py does for
<linux/kvm.h>.
"""

from __future__ import annotations

import itertools
import subprocess

import pytest

from conftest import require, require_tool
from vmboot.linux import bootparam as bp

HEADER_INCLUDE = "asm/bootparam.h"

BOOT_PARAMS_FIELDS: dict[str, int] = {
    "ext_ramdisk_image": bp.BP_EXT_RAMDISK_IMAGE,
    "ext_ramdisk_size": bp.BP_EXT_RAMDISK_SIZE,
    "ext_cmd_line_ptr": bp.BP_EXT_CMD_LINE_PTR,
    "acpi_rsdp_addr": bp.BP_ACPI_RSDP_ADDR,
    "e820_entries": bp.BP_E820_ENTRIES,
    "sentinel": bp.BP_SENTINEL,
    "hdr": bp.BP_HDR,
    "e820_table": bp.BP_E820_TABLE,
    "hdr.type_of_loader": bp.HDR_TYPE_OF_LOADER,
    "hdr.loadflags": bp.HDR_LOADFLAGS,
    "hdr.ramdisk_image": bp.HDR_RAMDISK_IMAGE,
    "hdr.ramdisk_size": bp.HDR_RAMDISK_SIZE,
    "hdr.cmd_line_ptr": bp.HDR_CMD_LINE_PTR,
    "hdr.setup_data": bp.HDR_SETUP_DATA,
}
"""``struct boot_params`` members (offsets in the zero page) bootparam.py names."""

SIZES: dict[str, tuple[str, int]] = {
    "struct boot_params": ("sizeof(struct boot_params)", bp.BOOT_PARAMS_SIZE),
    "struct setup_header": ("sizeof(struct setup_header)", bp.SETUP_HEADER_SIZE),
    "struct boot_e820_entry": ("sizeof(struct boot_e820_entry)", bp.E820_ENTRY_SIZE),
    "struct setup_data header": ("offsetof(struct setup_data, data)", bp.SETUP_DATA_HEADER_SIZE),
    "e820_table entries": ("sizeof(((struct boot_params *)0)->e820_table) / sizeof(struct boot_e820_entry)",
                           bp.E820_MAX_ENTRIES_ZEROPAGE),
}

CONSTANTS: dict[str, int] = {
    name: getattr(bp, name)
    for name in ("LOADED_HIGH", "KASLR_FLAG", "QUIET_FLAG", "KEEP_SEGMENTS", "CAN_USE_HEAP",
                 "E820_MAX_ENTRIES_ZEROPAGE")
} | {name: value for name, value in vars(bp).items()
     if name.startswith(("XLF_", "SETUP_")) and isinstance(value, int)
     and name not in ("SETUP_HEADER_OFFSET", "SETUP_HEADER_END_BYTE", "SETUP_HEADER_JUMP_END",
                      "SETUP_HEADER_MAX_END", "SETUP_HEADER_SIZE", "SETUP_DATA_HEADER_SIZE")}
"""Macros of the header that bootparam.py defines under the same name."""


def _program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", f"#include <{HEADER_INCLUDE}>",
             "int main(void) {"]
    for f in bp.SETUP_HEADER_FIELDS:
        lines.append(f'printf("hdr_offset {f.name} %zu\\n", '
                     f"offsetof(struct boot_params, hdr.{f.name}));")
        lines.append(f'printf("hdr_size {f.name} %zu\\n", '
                     f"sizeof(((struct setup_header *)0)->{f.name}));")
    for member in BOOT_PARAMS_FIELDS:
        lines.append(f'printf("bp_offset {member} %zu\\n", offsetof(struct boot_params, {member}));')
    for name, (expr, _) in SIZES.items():
        lines.append(f'printf("size {name.replace(" ", "_")} %zu\\n", (size_t)({expr}));')
    for name in CONSTANTS:
        lines.append(f'printf("const {name} %llu\\n", (unsigned long long)({name}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    gcc = require_tool("gcc", "gcc")
    tmp = tmp_path_factory.mktemp("bootparam-abi")
    src, exe = tmp / "bootparam.c", tmp / "bootparam"
    src.write_text(_program())
    probe = subprocess.run([gcc, "-E", "-x", "c", "-"], input=f"#include <{HEADER_INCLUDE}>\n",
                           capture_output=True, text=True)
    require(probe.returncode == 0, f"<{HEADER_INCLUDE}>", "apt-get install linux-libc-dev")
    subprocess.run([gcc, "-Wall", "-Werror", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    facts: dict[str, int] = {}
    for line in out.splitlines():
        kind, name, value = line.split()
        facts[f"{kind} {name}"] = int(value)
    return facts


@pytest.mark.parametrize("field", bp.SETUP_HEADER_FIELDS, ids=lambda f: f.name)
def test_setup_header_field_matches_header(c_facts: dict[str, int], field: bp.HeaderField) -> None:
    assert field.offset == c_facts[f"hdr_offset {field.name}"]
    assert field.size == c_facts[f"hdr_size {field.name}"]


def test_setup_header_fields_tile_the_struct(c_facts: dict[str, int]) -> None:
    """No gap and no overlap: the fields, in order, cover sizeof(struct setup_header)."""
    fields = sorted(bp.SETUP_HEADER_FIELDS, key=lambda f: f.offset)
    assert fields[0].offset == bp.SETUP_HEADER_OFFSET
    for before, after in itertools.pairwise(fields):
        assert before.offset + before.size == after.offset, (before.name, after.name)
    assert fields[-1].offset + fields[-1].size - bp.SETUP_HEADER_OFFSET == c_facts[
        "size struct_setup_header"]


@pytest.mark.parametrize("member", sorted(BOOT_PARAMS_FIELDS))
def test_boot_params_offset_matches_header(c_facts: dict[str, int], member: str) -> None:
    assert BOOT_PARAMS_FIELDS[member] == c_facts[f"bp_offset {member}"]


@pytest.mark.parametrize("name", sorted(SIZES))
def test_size_matches_header(c_facts: dict[str, int], name: str) -> None:
    assert SIZES[name][1] == c_facts[f"size {name.replace(' ', '_')}"]


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_constant_matches_header(c_facts: dict[str, int], name: str) -> None:
    assert CONSTANTS[name] == c_facts[f"const {name}"]


def test_every_flag_and_setup_type_is_checked() -> None:
    """A new constant in bootparam.py must not escape the generated program."""
    for name in ("XLF_KERNEL_64", "XLF_5LEVEL_ENABLED", "SETUP_E820_EXT", "SETUP_RNG_SEED", "CAN_USE_HEAP"):
        assert name in CONSTANTS
    assert len(BOOT_PARAMS_FIELDS) == len(
        [n for n in vars(bp) if n.startswith(("BP_", "HDR_"))])
