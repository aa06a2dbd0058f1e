"""A bzImage booted through its payload decompressed on the host (entries "elf64" and "pvh").

The expected segments come from ../shared/kernels/tiny-vmlinux, decoded here with
``struct`` (independent of vmboot's ELF reader): the payload of tiny-bzImage (stored LZ4)
and of tiny-bzImage-lz4 (real LZ4) is the same kernel, so the guest must hold the same
bytes at the same physical addresses as when booting the vmlinux.
Slow: both bzImages boot to the init marker under KVM through both entries.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from bzimage_builder import BzImageSpec, build_bzimage
from conftest import requires_kvm, shared_kernel_file
from vmboot.cli.inspect import describe_bzimage, render_text
from vmboot.compression.kernel_payload import decompress_payload
from vmboot.errors import DecompressionLimitError, LayoutError, UnsupportedKernelError, VmbootError
from vmboot.hv import MemoryVM, Register
from vmboot.linux import BootOptions, BootPlan, BzImage, ElfKernel, PvhBootPlan, load_kernel
from vmboot.linux import bootparam as bp

MiB = 1 << 20
MEM = 64 * MiB
BZIMAGES = ["tiny-bzImage", "tiny-bzImage-lz4"]
CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet"
INIT_MARKER = b"VMBOOT-INIT-OK"
PT_LOAD = 1
LZO_MAGIC = b"\x89LZO\x00\r\n\x1a\n"


def program_headers(image: bytes) -> list[tuple[int, ...]]:
    """(type, flags, offset, vaddr, paddr, filesz, memsz, align) of every program header."""
    phoff, = struct.unpack_from("<Q", image, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    return [struct.unpack_from("<IIQQQQQQ", image, phoff + i * phentsize) for i in range(phnum)]


def nonzero(vm: MemoryVM) -> int:
    """Non-zero bytes in guest RAM (a fresh MemoryVM is all zero, so 0 means untouched)."""
    return int(np.count_nonzero(np.frombuffer(vm.memory.mapping, dtype=np.uint8)))


@pytest.fixture(scope="module")
def vmlinux() -> bytes:
    return Path(shared_kernel_file("tiny-vmlinux")).read_bytes()


@pytest.fixture(scope="module", params=BZIMAGES)
def bzimage(request: pytest.FixtureRequest) -> BzImage:
    kernel = load_kernel(shared_kernel_file(request.param))
    assert isinstance(kernel, BzImage)
    return kernel


@pytest.fixture(scope="module")
def initrd() -> bytes:
    return Path(shared_kernel_file("tiny-initramfs-min.cpio")).read_bytes()


@pytest.mark.parametrize("entry", ["elf64", "pvh"])
def test_segments_at_paddr_match_the_vmlinux(bzimage: BzImage, vmlinux: bytes, initrd: bytes,
                                             entry: str) -> None:
    loads = [p for p in program_headers(vmlinux) if p[0] == PT_LOAD]
    assert loads
    with MemoryVM(MEM) as vm:
        vm.write(0, b"\xA5" * MEM)  # so that zero-filled bss is really written
        plan = bzimage.prepare(vm, BootOptions(cmdline=CMDLINE, initrd=initrd, entry=entry))  # type: ignore[arg-type]
        assert plan.entry_mode == entry
        assert plan.load_addr == min(p[4] for p in loads)
        assert plan.kernel_end == max(p[4] + p[6] for p in loads)
        for _type, _flags, offset, _vaddr, paddr, filesz, memsz, _align in loads:
            assert vm.read(paddr, filesz) == vmlinux[offset : offset + filesz]
            assert vm.read(paddr + filesz, memsz - filesz) == bytes(memsz - filesz)
        assert plan.initrd_gpa is not None
        assert vm.read(plan.initrd_gpa, len(initrd)) == initrd
        assert vm.read(plan.cmdline_gpa, len(CMDLINE) + 1) == CMDLINE.encode() + b"\0"


def test_elf64_registers_as_for_the_vmlinux(bzimage: BzImage, vmlinux: bytes) -> None:
    options = BootOptions(cmdline=CMDLINE, entry="elf64")
    seen = []
    for kernel in (bzimage, load_kernel(vmlinux)):
        with MemoryVM(MEM) as vm:
            plan = kernel.prepare(vm, options)
            assert isinstance(plan, BootPlan)
            vcpu = vm.create_vcpu(0)
            plan.configure_vcpu(vcpu)
            regs = vcpu.get_registers([Register.RIP, Register.RSI, Register.CR3])
            seen.append((regs[Register.RIP], regs[Register.RSI], regs[Register.CR3]))
            assert regs[Register.RSI] == plan.zero_page_gpa
            assert regs[Register.CR3] == plan.paging_base
    assert seen[0] == seen[1]
    assert seen[0][0] == 0x1000000  # phys startup_64, not the bzImage's load + 0x200


def test_pvh_entry_is_the_vmlinux_note(bzimage: BzImage, vmlinux: bytes) -> None:
    with MemoryVM(MEM) as vm:
        plan = bzimage.prepare(vm, BootOptions(entry="pvh"))
    assert isinstance(plan, PvhBootPlan)
    elf = load_kernel(vmlinux)
    assert isinstance(elf, ElfKernel)
    assert plan.entry_gpa == elf.pvh_entry


def test_elf64_zero_page_carries_the_bzimage_header(bzimage: BzImage) -> None:
    initrd = b"\x07" * 4096
    with MemoryVM(MEM) as vm:
        plan = bzimage.prepare(vm, BootOptions(cmdline=CMDLINE, entry="elf64", initrd=initrd))
        assert isinstance(plan, BootPlan)
        zp = vm.read(plan.zero_page_gpa, bp.BOOT_PARAMS_SIZE)
    header = bzimage.header_bytes
    assert zp[0x1F1:0x210] == header[: 0x210 - 0x1F1]  # up to type_of_loader, untouched
    assert struct.unpack_from("<H", zp, 0x206)[0] == bzimage.setup_header.version == 0x020F
    assert zp[0x210] == 0xFF  # type_of_loader: undefined
    assert struct.unpack_from("<I", zp, 0x228)[0] == plan.cmdline_gpa
    assert struct.unpack_from("<II", zp, 0x218) == (plan.initrd_gpa, len(initrd))
    assert zp[0x1E8] == len(plan.e820)
    assert zp[0x1EF] == 0  # sentinel clear: the kernel keeps every field


def test_auto_stays_the_bzimage_entry(bzimage: BzImage) -> None:
    with MemoryVM(MEM) as vm:
        plan = bzimage.prepare(vm, BootOptions())
        assert plan.entry_mode == "bzimage64"
        assert plan.entry_gpa == plan.load_addr + 0x200
        assert vm.read(plan.load_addr, 64) == bytes(bzimage.payload()[:64])


def test_decompression_is_memoised_and_the_same_for_both_images(vmlinux: bytes) -> None:
    a, b = (load_kernel(shared_kernel_file(name)) for name in BZIMAGES)
    assert isinstance(a, BzImage) and isinstance(b, BzImage)
    assert a.vmlinux() is a.vmlinux()
    assert a.vmlinux().data == b.vmlinux().data
    elf = load_kernel(vmlinux)
    assert isinstance(elf, ElfKernel)
    assert a.vmlinux().entry_point == elf.entry_point


def test_inspect_lists_the_entries(bzimage: BzImage) -> None:
    info = describe_bzimage(bzimage)
    assert info["default_entry"] == "bzimage64"
    entries = info["entries"]
    assert {m: (e["usable"], e["address"]) for m, e in entries.items()} == {
        "bzimage64": (True, 0x1000200), "elf64": (True, 0x1000000),
        "pvh": (True, bzimage.vmlinux().pvh_entry)}
    assert "decompressed on the host" in entries["elf64"]["reason"]
    text = render_text(bzimage)
    assert "usable (default)" in text and "elf64" in text and "pvh" in text


# -- refusals: each leaves guest RAM all zero ------------------------------------------------------


def refuse(kernel: BzImage, options: BootOptions, exc: type[VmbootError], match: str,
           memory: int = MEM) -> None:
    with MemoryVM(memory) as vm:
        with pytest.raises(exc, match=match):
            kernel.prepare(vm, options)
        assert nonzero(vm) == 0, "a refused prepare() wrote to guest memory"


@pytest.mark.parametrize("entry", ["elf64", "pvh"])
def test_refuses_a_payload_that_is_not_elf(entry: str) -> None:
    kernel = BzImage(build_bzimage(), "synthetic-bzImage")  # an LZ4 frame of nothing
    refuse(kernel, BootOptions(entry=entry), UnsupportedKernelError,  # type: ignore[arg-type]
           rf"synthetic-bzImage: entry '{entry}' .* not an ELF file .*usable entries: bzimage64")
    assert describe_bzimage(kernel)["entries"][entry]["usable"] is False


def test_refuses_lzo() -> None:
    kernel = BzImage(build_bzimage(BzImageSpec(payload=LZO_MAGIC + bytes(64))), "lzo-bzImage")
    refuse(kernel, BootOptions(entry="elf64"), UnsupportedKernelError,
           r"lzo-bzImage: entry 'elf64' .*compression 'lzo' is not supported.*usable entries: "
           r"bzimage64")


def test_refuses_segments_outside_guest_ram() -> None:
    kernel = load_kernel(shared_kernel_file("tiny-bzImage"))
    assert isinstance(kernel, BzImage)
    for entry in ("elf64", "pvh"):
        # the kernel is linked at 16 MiB: 16 MiB of RAM cannot hold it
        refuse(kernel, BootOptions(entry=entry), LayoutError, r"kernel segment",
               memory=16 * MiB)


def test_refuses_a_payload_bomb() -> None:
    import gzip

    bomb = gzip.compress(bytes(64 * MiB))  # 64 KiB that expand 1000-fold
    with pytest.raises(DecompressionLimitError, match=r"bomb-bzImage: .*gzip payload .* "
                                                      r"more than 1048576 bytes"):
        decompress_payload(bomb, "bomb-bzImage", limit=MiB)
    assert len(decompress_payload(bomb, "bomb-bzImage", limit=64 * MiB)) == 64 * MiB


# -- slow: boot to the init under KVM -------------------------------------------------------------


@requires_kvm
@pytest.mark.kvm
@pytest.mark.slow
@pytest.mark.parametrize("entry", ["elf64", "pvh"])
@pytest.mark.parametrize("name", BZIMAGES)
def test_boots_to_init_without_the_guest_decompressor(name: str, entry: str) -> None:
    from vmboot.vmm.exits import ExitReason
    from vmboot.vmm.machine import Machine

    kernel = shared_kernel_file(name)
    initrd = shared_kernel_file("tiny-initramfs-min.cpio")
    with Machine(kernel, initrd=initrd, cmdline=CMDLINE, memory="64M",
                 entry=entry) as machine:  # type: ignore[arg-type]
        result = machine.run(timeout=600)
        assert machine.plan is not None and machine.plan.entry_mode == entry
    print(f"\n[{name} --entry {entry}] {result.exit.one_line()} exit={result.timings.exit:.2f} s")
    assert INIT_MARKER in result.console, result.console[-2000:].decode(errors="replace")
    assert result.exit.reason is ExitReason.RESET, result.exit.one_line()
