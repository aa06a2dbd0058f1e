"""Probe kernels without KVM: the committed images rebuild byte-identically from source, their
headers and notes are what the boot protocols require, and the host halves of the report
protocol (checksum, ProbeDevice, report parsing, verify) behave."""

from __future__ import annotations

import shutil
import struct
import zlib

import pytest

from conftest import require
from vmboot.elf import ElfFile
from vmboot.linux import BootOptions, BzImage, load_kernel
from vmboot.linux import bootparam as bp
from vmboot.linux.configurator.plan import BootPlan
from vmboot.probes import (
    PROBE_FILES,
    EntryKind,
    Key,
    ProbeDevice,
    fnv1a64_words,
    probe_image,
    protocol,
    pvh_abi,
    verify,
)
from vmboot.probes import build as probe_build
from vmboot.probes.checksum import FNV_OFFSET, FNV_PRIME
from vmboot.vmm.exits import ExitReason


@pytest.fixture
def binutils() -> None:
    """GNU binutils, which build the probes (skipped, or failed under CI, without them)."""
    absent = probe_build.missing_tools()
    require(not absent, "GNU binutils", f"{', '.join(absent)} not on PATH (apt-get install binutils)")


needs_binutils = pytest.mark.usefixtures("binutils")


# -- the committed images ---------------------------------------------------------------------


@needs_binutils
def test_committed_images_rebuild_byte_identical() -> None:
    rebuilt = probe_build.build_images()
    assert set(rebuilt) == set(PROBE_FILES)
    for kind, data in rebuilt.items():
        committed = probe_image(kind)
        assert data == committed, (
            f"{PROBE_FILES[kind]}: rebuilt image differs from the committed one "
            f"(crc {zlib.crc32(data):#x} vs {zlib.crc32(committed):#x}); run "
            f"'python -m vmboot.probes.build' and commit the result"
        )


@needs_binutils
def test_build_is_deterministic_and_rejects_unknown_kinds() -> None:
    assert probe_build.build_images(["bzimage"]) == probe_build.build_images(["bzimage"])
    from vmboot.errors import FetchError

    with pytest.raises(FetchError, match="unknown"):
        probe_build.build_images(["floppy"])


def test_bzimage_header_fields() -> None:
    kernel = load_kernel(probe_image("bzimage"))
    assert isinstance(kernel, BzImage)
    h = kernel.setup_header
    assert h.version == probe_build.PROBE_PROTOCOL == bp.PROTOCOL_2_15
    assert h.boot_flag == bp.BOOT_FLAG_MAGIC
    assert h.setup_sects == probe_build.SETUP_SECTS
    assert h.loadflags & bp.LOADED_HIGH
    assert h.xloadflags == bp.XLF_KERNEL_64 | bp.XLF_CAN_BE_LOADED_ABOVE_4G
    assert h.relocatable
    assert h.kernel_alignment == probe_build.PROBE_KERNEL_ALIGNMENT
    assert h.min_alignment == probe_build.PROBE_MIN_ALIGNMENT_LG2
    assert h.cmdline_size == probe_build.PROBE_CMDLINE_SIZE
    assert h.pref_address == probe_build.PROBE_PREF_ADDRESS
    assert h.code32_start == bp.HIGH_LOAD_ADDRESS
    assert kernel.kernel_version == probe_build.PROBE_KERNEL_VERSION
    payload = kernel.payload()
    assert h.syssize * 16 == len(payload)
    assert h.init_size >= len(payload) and h.init_size % 4096 == 0
    # kernel_info ("LToP") at kernel_info_offset from the protected-mode start
    info = bytes(payload[h.kernel_info_offset : h.kernel_info_offset + 16])
    magic, size, size_total, _ = struct.unpack("<4sIII", info)
    assert (magic, size, size_total) == (b"LToP", 16, 16)
    assert kernel.check_64bit_entry().ok


@pytest.mark.parametrize("kind, has_pvh", [("elf64", False), ("pvh", True)])
def test_elf_probes(kind: str, has_pvh: bool) -> None:
    with ElfFile(probe_image(kind), kind) as elf:
        loads = [p for p in elf.segments if p.type == 1]
        assert len(loads) == 1
        assert loads[0].paddr == probe_build.ELF_LOAD_ADDRESS
        assert loads[0].paddr <= elf.e_entry < loads[0].paddr + loads[0].memsz
        notes = [n for n in elf.notes() if n.name == pvh_abi.XEN_ELFNOTE_NAME.decode()
                 and n.type == pvh_abi.XEN_ELFNOTE_PHYS32_ENTRY]
        assert bool(notes) == has_pvh
        if has_pvh:
            (entry,) = struct.unpack("<Q", bytes(notes[0].desc))
            assert loads[0].paddr <= entry < loads[0].paddr + loads[0].filesz
            assert entry != elf.e_entry


# -- checksum ---------------------------------------------------------------------------------


def _fnv_bytes_reference(data: bytes) -> int:
    """Independent definition: FNV-1a 64 over 8-byte little-endian units, then single bytes."""
    h = FNV_OFFSET
    full = len(data) - len(data) % 8
    units = [int.from_bytes(data[i : i + 8], "little") for i in range(0, full, 8)]
    units += list(data[full:])
    for u in units:
        h = (h ^ u) * FNV_PRIME % (1 << 64)
    return h


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 31, 32, 33, 1000])
def test_checksum_matches_its_definition(n: int) -> None:
    data = bytes((i * 37 + 11) % 256 for i in range(n))
    assert fnv1a64_words(data) == _fnv_bytes_reference(data)


def test_checksum_is_plain_fnv1a_for_short_data_and_sensitive() -> None:
    # Fewer than 8 bytes: exactly FNV-1a 64 (published test vector for "a").
    assert fnv1a64_words(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64_words(b"") == FNV_OFFSET
    base = bytes(64)
    sums = {fnv1a64_words(base[:i] + b"\x01" + base[i + 1 :]) for i in range(64)}
    assert len(sums) == 64 and fnv1a64_words(base) not in sums


# -- protocol, device, report -----------------------------------------------------------------


def _send(dev: ProbeDevice, key: Key, *values: int, index: int = 0) -> None:
    dev.port_write(protocol.PORT_KEY - protocol.PORT_BASE, 4, protocol.make_key(key, index))
    for v in values:
        dev.port_write(protocol.PORT_DATA - protocol.PORT_BASE, 4, v & 0xFFFFFFFF)
        dev.port_write(protocol.PORT_DATA - protocol.PORT_BASE, 4, v >> 32)


def test_device_collects_records_and_stops_on_done() -> None:
    stops: list[tuple[ExitReason, str]] = []
    dev = ProbeDevice()
    dev.connect_stop(lambda reason, detail: stops.append((reason, detail)))
    _send(dev, Key.CR3, 0x1234_5678_9ABC)
    _send(dev, Key.MAP_SAMPLE, 0x4000_0000, 0x4000_0000, index=1)
    assert not stops
    _send(dev, Key.DONE, 2)
    assert stops == [(ExitReason.POWEROFF, "the probe reported done")]
    r = dev.report
    assert r.value(Key.CR3) == 0x1234_5678_9ABC
    assert r.indexed(Key.MAP_SAMPLE)[1].u64(1) == 0x4000_0000
    assert r.done and r.records_before_done == 2 and not r.errors
    assert dev.port_read(0, 4) == 0xFFFFFFFF


def test_device_reports_protocol_errors() -> None:
    dev = ProbeDevice()
    dev.port_write(protocol.PORT_DATA - protocol.PORT_BASE, 4, 1)  # data before any key
    dev.port_write(protocol.PORT_KEY - protocol.PORT_BASE, 1, 1)  # byte-sized OUT
    dev.port_write(protocol.PORT_COUNT - 1, 4, 1)  # unused port
    assert len(dev.report.errors) == 3
    assert "before any key" in dev.report.errors[0]
    assert "1-byte write" in dev.report.errors[1]


def test_generated_definitions_come_from_the_python_modules() -> None:
    defs = probe_build.assembler_definitions()
    assert defs["REC_DONE"] == protocol.make_key(Key.DONE)
    assert defs["BP_CMD_LINE_PTR"] == bp.HDR_CMD_LINE_PTR
    assert defs["HVM_MEMMAP_ENTRIES"] == pvh_abi.HVM_MEMMAP_ENTRIES
    assert defs["ENTRY_PVH32"] == EntryKind.PVH32
    inc = probe_build.assembler_include()
    assert all(f".equ    {name}," in inc for name in defs)


def test_verify_without_a_report_fails_every_check() -> None:
    """An empty report (the guest never ran) must not pass anything."""
    plan = BootPlan(load_addr=0x200000, entry_gpa=0x200200, zero_page_gpa=0x90000,
                    cmdline_gpa=0x91000, stack_top_gpa=0x3FFF000, paging_base=0x20000,
                    address_space_gib=4)
    checks = verify(ProbeDevice().report, plan, BootOptions(cmdline="x"), b"")
    assert checks and not any(c.ok for c in checks)
    assert len({c.name for c in checks}) == len(checks)


def test_build_tools_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmboot.errors import FetchError

    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(FetchError, match=r"binutils .*missing: as, ld, objcopy"):
        probe_build.build_images()
