"""Build the probe kernels from their GNU as sources: ``python -m vmboot.probes.build``.

Three images come out of the sources in this package:

- ``probe-bzimage.bin``: a bzImage (boot protocol 2.15) whose 64-bit entry runs the probe;
- ``probe-elf64.bin``: an ELF64 vmlinux entered at ``e_entry`` in 64-bit mode;
- ``probe-pvh.bin``: the same ELF64 vmlinux plus a PVH entry (Xen ELF note type 18).

Every number the assembly needs is generated into ``probe_defs.inc`` / ``probe_defs.ld``
from :mod:`vmboot.linux.bootparam`, :mod:`vmboot.probes.protocol`, :mod:`vmboot.probes.pvh_abi`
and the probe header choices below. The build is reproducible: sources are copied to a
temporary directory and assembled under relative names, with no build ID, so the result is
byte-identical to the committed images for the same binutils behaviour.

Without arguments the images are written next to this module (the committed copies);
``--out DIR`` writes them elsewhere.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vmboot.errors import FetchError
from vmboot.linux import bootparam as bp
from vmboot.probes import protocol, pvh_abi
from vmboot.probes.checksum import FNV_OFFSET, FNV_PRIME
from vmboot.x86 import msr, paging

# --- choices for the probe kernels' headers ----------------------------------------------------
SETUP_SECTS = 1
"""One setup sector after the boot sector holds the whole 2.15 header."""
PROBE_PROTOCOL = bp.PROTOCOL_2_15
PROBE_KERNEL_ALIGNMENT = 2 << 20
PROBE_MIN_ALIGNMENT_LG2 = 12
"""The probe is position-independent: any 4 KiB-aligned load address works."""
PROBE_XLOADFLAGS = bp.XLF_KERNEL_64 | bp.XLF_CAN_BE_LOADED_ABOVE_4G
PROBE_CMDLINE_SIZE = 2047
"""As Linux: COMMAND_LINE_SIZE - 1."""
PROBE_PREF_ADDRESS = 2 << 20
PROBE_INITRD_ADDR_MAX = 0x7FFFFFFF
PROBE_KERNEL_VERSION = f"vmboot-probe {protocol.PROTOCOL_VERSION} (boot contract probe)"
SETUP_TYPE_MAX = bp.SETUP_RNG_SEED
ELF_LOAD_ADDRESS = 16 << 20
"""p_paddr of the ELF probes (as a Linux vmlinux: 16 MiB)."""
PVH_STACK_SIZE = 4096
STACK_PATTERN = 0x5A17C0DE5A17C0DE
"""Pushed and popped by the 64-bit probe's stack check."""
E820_TYPE_OFFSET = 16
"""Offset of ``type`` in ``struct boot_e820_entry`` (u64 addr, u64 size, u32 type)."""

assert FNV_PRIME == (1 << 40) + (FNV_PRIME & 0xFFFFFFFF)
FNV_PRIME_SHIFT_IN_HIGH = 40 - 32


@dataclass(frozen=True)
class ProbeImage:
    """One probe kernel: its file name and how it is linked."""

    kind: str
    filename: str
    sources: tuple[str, ...]
    linker_script: str
    flat_binary: bool


IMAGES: dict[str, ProbeImage] = {
    "bzimage": ProbeImage("bzimage", "probe-bzimage.bin", ("bzimage_head.S", "probe64.S"),
                          "bzimage.ld", flat_binary=True),
    "elf64": ProbeImage("elf64", "probe-elf64.bin", ("elf64_entry.S", "probe64.S"),
                        "elf64.ld", flat_binary=False),
    "pvh": ProbeImage("pvh", "probe-pvh.bin", ("elf64_entry.S", "probe64.S", "pvh32.S"),
                      "pvh.ld", flat_binary=False),
}
TOOLS = ("as", "ld", "objcopy")


def assembler_definitions() -> dict[str, int]:
    """Every ``.equ`` of the generated ``probe_defs.inc``."""
    version_off = bp.SETUP_HEADER_FIELD_BY_NAME["version"].offset
    d: dict[str, int] = {
        # ports and records
        "PORT_KEY": protocol.PORT_KEY,
        "PORT_DATA": protocol.PORT_DATA,
        "PROBE_MAGIC": protocol.PROBE_MAGIC,
        "PROTOCOL_VERSION": protocol.PROTOCOL_VERSION,
        "MAP_SAMPLE_OFFSET": protocol.MAP_SAMPLE_OFFSET,
        "MAX_STRING": protocol.MAX_STRING,
        "MAX_PVH_MODULES": protocol.MAX_PVH_MODULES,
        # the bzImage header
        "SECTOR_SIZE": bp.SECTOR_SIZE,
        "SETUP_SECTS": SETUP_SECTS,
        "SETUP_HEADER_OFFSET": bp.SETUP_HEADER_OFFSET,
        "BOOT_FLAG_MAGIC": bp.BOOT_FLAG_MAGIC,
        "PROBE_PROTOCOL": PROBE_PROTOCOL,
        "LOADED_HIGH": bp.LOADED_HIGH,
        "HIGH_LOAD_ADDRESS": bp.HIGH_LOAD_ADDRESS,
        "PROBE_INITRD_ADDR_MAX": PROBE_INITRD_ADDR_MAX,
        "PROBE_KERNEL_ALIGNMENT": PROBE_KERNEL_ALIGNMENT,
        "PROBE_MIN_ALIGNMENT_LG2": PROBE_MIN_ALIGNMENT_LG2,
        "PROBE_XLOADFLAGS": PROBE_XLOADFLAGS,
        "PROBE_CMDLINE_SIZE": PROBE_CMDLINE_SIZE,
        "PROBE_PREF_ADDRESS": PROBE_PREF_ADDRESS,
        "SETUP_TYPE_MAX": SETUP_TYPE_MAX,
        "ENTRY_64_OFFSET": bp.ENTRY_64_OFFSET,
        # struct boot_params
        "BP_HDR_MAGIC": bp.SETUP_HEADER_JUMP_END,
        "BP_HDR_VERSION": version_off,
        "BP_CMD_LINE_PTR": bp.HDR_CMD_LINE_PTR,
        "BP_EXT_CMD_LINE_PTR": bp.BP_EXT_CMD_LINE_PTR,
        "BP_RAMDISK_IMAGE": bp.HDR_RAMDISK_IMAGE,
        "BP_RAMDISK_SIZE": bp.HDR_RAMDISK_SIZE,
        "BP_EXT_RAMDISK_IMAGE": bp.BP_EXT_RAMDISK_IMAGE,
        "BP_EXT_RAMDISK_SIZE": bp.BP_EXT_RAMDISK_SIZE,
        "BP_E820_ENTRIES": bp.BP_E820_ENTRIES,
        "BP_E820_TABLE": bp.BP_E820_TABLE,
        "E820_ENTRY_SIZE": bp.E820_ENTRY_SIZE,
        "E820_TYPE_OFFSET": E820_TYPE_OFFSET,
        "E820_TYPE_RAM": 1,
        "BOOT_CS": bp.BOOT_CS,
        "BOOT_DS": bp.BOOT_DS,
        # x86
        "MSR_EFER": msr.MSR_EFER,
        "PTE_PRESENT": paging.PTE_PRESENT,
        "PTE_PS": paging.PTE_PS,
        "PTE_ADDR_MASK": paging.PTE_ADDR_MASK,
        "PT_ENTRIES": paging.ENTRIES_PER_TABLE,
        "PT_INDEX_MASK": paging.ENTRIES_PER_TABLE - 1,
        "PAGE_SIZE_4K": paging.PAGE_SIZE,
        "PAGE_SIZE_2M": paging.PAGE_SIZE_2M,
        "PAGE_SIZE_1G": paging.PAGE_SIZE_1G,
        "SELECTOR_INDEX_MASK": protocol.SELECTOR_INDEX_MASK,
        "STACK_PATTERN": STACK_PATTERN,
        # checksum
        "FNV_OFFSET": FNV_OFFSET,
        "FNV_PRIME": FNV_PRIME,
        "FNV_OFFSET_LO": FNV_OFFSET & 0xFFFFFFFF,
        "FNV_OFFSET_HI": FNV_OFFSET >> 32,
        "FNV_PRIME_LO": FNV_PRIME & 0xFFFFFFFF,
        "FNV_PRIME_SHIFT_IN_HIGH": FNV_PRIME_SHIFT_IN_HIGH,
        # PVH
        "XEN_ELFNOTE_PHYS32_ENTRY": pvh_abi.XEN_ELFNOTE_PHYS32_ENTRY,
        "HVM_MAGIC": pvh_abi.HVM_MAGIC,
        "HVM_VERSION": pvh_abi.HVM_VERSION,
        "HVM_FLAGS": pvh_abi.HVM_FLAGS,
        "HVM_NR_MODULES": pvh_abi.HVM_NR_MODULES,
        "HVM_MODLIST_PADDR": pvh_abi.HVM_MODLIST_PADDR,
        "HVM_CMDLINE_PADDR": pvh_abi.HVM_CMDLINE_PADDR,
        "HVM_RSDP_PADDR": pvh_abi.HVM_RSDP_PADDR,
        "HVM_MEMMAP_PADDR": pvh_abi.HVM_MEMMAP_PADDR,
        "HVM_MEMMAP_ENTRIES": pvh_abi.HVM_MEMMAP_ENTRIES,
        "HVM_MODLIST_ENTRY_SHIFT": pvh_abi.HVM_MODLIST_ENTRY_SIZE.bit_length() - 1,
        "HVM_MOD_PADDR": pvh_abi.HVM_MOD_PADDR,
        "HVM_MOD_SIZE": pvh_abi.HVM_MOD_SIZE,
        "HVM_MEMMAP_ENTRY_SIZE": pvh_abi.HVM_MEMMAP_ENTRY_SIZE,
        "PVH_STACK_SIZE": PVH_STACK_SIZE,
    }
    assert 1 << d["HVM_MODLIST_ENTRY_SHIFT"] == pvh_abi.HVM_MODLIST_ENTRY_SIZE
    for kind in protocol.EntryKind:
        d[f"ENTRY_{kind.name}"] = int(kind)
    for key in protocol.Key:
        d[f"REC_{key.name}"] = protocol.make_key(key)
    return d


def assembler_include() -> str:
    lines = ["/* Generated by vmboot.probes.build: do not edit. */"]
    lines += [f"        .equ    {name}, {value:#x}" for name, value in assembler_definitions().items()]
    lines.append("        .macro  PROBE_KERNEL_VERSION_STRING")
    lines.append(f'        .asciz  "{PROBE_KERNEL_VERSION}"')
    lines.append("        .endm")
    return "\n".join(lines) + "\n"


def linker_include() -> str:
    values = {
        "SETUP_BYTES": (SETUP_SECTS + 1) * bp.SECTOR_SIZE,
        "PAGE_SIZE_4K": paging.PAGE_SIZE,
        "ELF_LOAD_ADDRESS": ELF_LOAD_ADDRESS,
    }
    return "/* Generated by vmboot.probes.build: do not edit. */\n" + "".join(
        f"{name} = {value:#x};\n" for name, value in values.items()
    )


def source_dir() -> Path:
    """The directory holding the probe sources and the committed images."""
    return Path(str(resources.files("vmboot.probes")))


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _run(cmd: Sequence[str], cwd: Path) -> None:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise FetchError(
            f"building the probe kernels: {' '.join(cmd)} failed with exit status "
            f"{proc.returncode}:\n{proc.stderr.strip() or proc.stdout.strip()}"
        )


def _ld_flags(workdir: Path) -> list[str]:
    flags = ["-m", "elf_x86_64", "-nostdlib", "--build-id=none", "-z", "max-page-size=0x1000",
             "-z", "noexecstack"]
    help_text = subprocess.run(["ld", "--help"], cwd=workdir, capture_output=True, text=True,
                               check=False).stdout
    if "--no-warn-rwx-segments" in help_text:
        flags.append("--no-warn-rwx-segments")
    return flags


def build_images(kinds: Sequence[str] | None = None) -> dict[str, bytes]:
    """Assemble and link the probe kernels; returns ``{kind: image bytes}``.

    Raises :class:`~vmboot.errors.FetchError` when binutils is missing or a step fails.
    """
    missing = missing_tools()
    if missing:
        raise FetchError(
            f"building the probe kernels needs GNU binutils ({', '.join(TOOLS)}); missing: "
            f"{', '.join(missing)}. Install them (apt-get install binutils) or use the prebuilt "
            f"images shipped in {source_dir()}"
        )
    selected = list(IMAGES) if kinds is None else list(kinds)
    for kind in selected:
        if kind not in IMAGES:
            raise FetchError(f"probe kind {kind!r} is unknown; valid kinds: {', '.join(IMAGES)}")
    src = source_dir()
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="vmboot-probes-") as tmp:
        work = Path(tmp)
        (work / "probe_defs.inc").write_text(assembler_include())
        (work / "probe_defs.ld").write_text(linker_include())
        needed = {s for k in selected for s in IMAGES[k].sources}
        needed |= {IMAGES[k].linker_script for k in selected}
        for name in sorted(needed):
            shutil.copyfile(src / name, work / name)
        for name in sorted(s for s in needed if s.endswith(".S")):
            _run(["as", "--64", "-o", name[:-2] + ".o", name], work)
        ld_flags = _ld_flags(work)
        for kind in selected:
            image = IMAGES[kind]
            elf = f"{kind}.elf"
            objects = [s[:-2] + ".o" for s in image.sources]
            extra = ["--no-check-sections"] if image.flat_binary else []
            _run(["ld", *ld_flags, *extra, "-T", image.linker_script, "-o", elf, *objects], work)
            if image.flat_binary:
                _run(["objcopy", "-O", "binary", elf, image.filename], work)
                out[kind] = (work / image.filename).read_bytes()
            else:
                out[kind] = (work / elf).read_bytes()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmboot.probes.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for the images (default: the package directory)")
    parser.add_argument("kinds", nargs="*", choices=[*IMAGES, []], metavar="KIND",
                        help=f"which probes to build (default: all of {', '.join(IMAGES)})")
    args = parser.parse_args(argv)
    out_dir: Path = args.out or source_dir()
    images = build_images(args.kinds or None)
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, data in images.items():
        path = out_dir / IMAGES[kind].filename
        path.write_bytes(data)
        print(f"{path}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
