"""debug.btf: a synthetic type graph, the tiny-smp kernel's BTF against its DWARF (pahole),
and the BTF of the Debian cloud kernel read from the bzImage alone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from struct import pack

import pytest

import fuzz_support  # noqa: F401  (puts the repository root on sys.path for ``fuzz``)

# isort: split
from fuzz.seeds import BTF_SAMPLE, build_btf

from conftest import missing, require_tool, shared_kernel_file
from vmboot.debug.btf import Btf, BtfFormatError, BtfKind, BtfLookupError
from vmboot.debug.tasks import task_state_letter
from vmboot.elf import ElfFile


def test_synthetic_types_members_offsets_and_sizes() -> None:
    btf = Btf(build_btf(BTF_SAMPLE), "sample")
    assert len(btf) == len(BTF_SAMPLE) + 1
    assert btf.type_by_id(0).name == "void"
    task = btf.find("task_struct")
    assert task.kind is BtfKind.STRUCT and task.size == 80 and task.kind_flag
    assert btf.offsetof("task_struct", "tasks") == 8
    assert btf.offsetof("task_struct", "tasks.prev") == 16
    assert btf.offsetof("task_struct", "__state") == 0       # inside the anonymous union
    assert btf.offsetof("task_struct", "thread.sp") == 56
    assert btf.offsetof("task_struct", "comm") == 32
    _, flags = btf.member("task_struct", "flags")
    assert (flags.bitfield_size, flags.bit_offset, flags.offset) == (3, 224, 28)
    assert btf.sizeof("list_head") == 16
    assert btf.sizeof(btf.member_type("task_struct", "comm")) == 16    # char[16]
    assert btf.sizeof(btf.member_type("task_struct", "pid")) == 4      # const pid_t -> int
    assert btf.sizeof(btf.member_type("task_struct", "tasks.next")) == 8
    assert btf.find("pid_t").kind is BtfKind.TYPEDEF
    with pytest.raises(BtfLookupError, match=r"struct 'task_struct' has no member 'nope'"):
        btf.offsetof("task_struct", "nope")
    with pytest.raises(BtfLookupError, match=r"no type 'mm_struct'"):
        btf.find("mm_struct")


@pytest.mark.parametrize(("patch", "message"), [
    ((0, b"\xeb\x9f"), r"magic is 0x9feb, not 0xeb9f"),
    ((2, b"\x02"), r"version 2"),
    ((4, b"\x10\x00\x00\x00"), r"hdr_len 16 is not between 24"),
    ((12, b"\xff\xff\x00\x00"), r"type_off 0 \+ type_len 65535 runs past"),
])
def test_malformed_headers_name_the_field(patch: tuple[int, bytes], message: str) -> None:
    data = bytearray(build_btf(BTF_SAMPLE))
    at, value = patch
    data[at:at + len(value)] = value
    with pytest.raises(BtfFormatError, match=message):
        Btf(bytes(data))


def test_unknown_kind_and_truncated_type_are_format_errors() -> None:
    data = bytearray(build_btf(BTF_SAMPLE[:1]))
    data[24 + 7] = 0x1F  # kind 31
    btf = Btf(bytes(data))  # types are indexed on first use
    with pytest.raises(BtfFormatError, match=r"type 1 has kind 31; known kinds are 1..19"):
        btf.type_by_id(1)
    with pytest.raises(BtfFormatError, match=r"type 1 has kind 31"):
        len(btf)
    short = bytearray(build_btf(BTF_SAMPLE[:3]))  # int, long, list_head (36 bytes)
    short[12:16] = pack("<I", 16 + 16 + 24)  # type_len: list_head loses a member
    with pytest.raises(BtfFormatError, match=r"type 3 \(STRUCT, 36 bytes\) runs past the type "
                                             r"section \(56\)"):
        Btf(bytes(short)).find("list_head")
    with pytest.raises(BtfFormatError, match=r"shorter than its 24-byte header"):
        Btf(b"\x9f\xeb\x01")


def test_task_state_letters_follow_proc() -> None:
    assert [task_state_letter(s) for s in (0, 1, 2, 4, 8, 0x40, 0x402)] == list("RSDTtPI")
    assert task_state_letter(0, 0x20) == "Z" and task_state_letter(0, 0x10) == "X"
    assert task_state_letter(0x2 | 0x100) == "D"  # TASK_KILLABLE


# -- real kernels -----------------------------------------------------------------------------
_MEMBER = re.compile(r"^\t[^\t/{}].*?\b(\w+)(?:\[\d+\])*(?: __attribute__\(\(.*\)\))?;"
                     r"\s+/\*\s+(\d+)\s+(\d+)\s+\*/", re.M)
_SIZE = re.compile(r"/\* size: (\d+),")
CHECKED = {"task_struct": ["thread_info", "__state", "stack", "tasks", "exit_state", "pid", "tgid",
                           "thread_group", "comm", "thread"],
           "thread_struct": ["sp"], "list_head": ["next", "prev"], "thread_info": ["cpu"],
           "inactive_task_frame": ["bp", "ret_addr"]}


def pahole_layout(elf: Path, struct: str, source: str) -> tuple[int, dict[str, tuple[int, int]]]:
    out = subprocess.run(["pahole", "-F", source, "-C", struct, str(elf)], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    size = _SIZE.search(out)
    assert size is not None, out
    return int(size.group(1)), {m.group(1): (int(m.group(2)), int(m.group(3)))
                                for m in _MEMBER.finditer(out)}


@pytest.fixture(scope="module")
def tiny_smp_dwarf(tiny_smp_vmlinux_debug: Path) -> Path:
    require_tool("pahole", "dwarves")
    return tiny_smp_vmlinux_debug


@pytest.mark.slow
def test_tiny_smp_btf_agrees_with_its_dwarf(tiny_smp_dwarf: Path) -> None:
    with ElfFile.open(shared_kernel_file("tiny-smp-vmlinux")) as elf:
        btf = Btf.from_elf(elf)
    assert len(btf) > 10_000
    for struct, fields in CHECKED.items():
        size, members = pahole_layout(tiny_smp_dwarf, struct, "dwarf")
        assert btf.sizeof(struct) == size, struct
        for name in fields:
            offset, member_size = members[name]
            assert btf.offsetof(struct, name) == offset, (struct, name)
            assert btf.sizeof(btf.member_type(struct, name)) == member_size, (struct, name)


@pytest.mark.slow
def test_btf_of_the_debian_cloud_kernel_from_the_image_alone(tmp_path: Path) -> None:
    from debian_kernel import debian_kernel, skip_reason
    from vmboot.linux.loader.vmlinux import uncompressed_kernel

    image = debian_kernel()
    if image is None:
        missing("the Debian cloud kernel", skip_reason())
    data = image.read_bytes()
    btf = Btf.from_kernel_image(data, image.name)
    assert len(btf) > 50_000
    require_tool("pahole", "dwarves")
    # pahole reads the same .BTF out of the decompressed ELF: an independent parser.
    elf = tmp_path / "vmlinux"
    elf.write_bytes(uncompressed_kernel(data, image.name))
    for struct, fields in CHECKED.items():
        if struct == "thread_info" or not btf.has(struct):
            continue
        size, members = pahole_layout(elf, struct, "btf")
        assert btf.sizeof(struct) == size, struct
        for name in fields:
            assert btf.offsetof(struct, name) == members[name][0], (struct, name)


def test_an_array_of_itself_is_a_format_error_not_a_recursion() -> None:
    btf = Btf(build_btf([("array", "", 0, 0, [("", 1, 4)])]), "loop")  # type 1: int[4] of type 1
    with pytest.raises(BtfFormatError, match=r"arrays nested deeper than 32"):
        btf.sizeof(btf.type_by_id(1))
