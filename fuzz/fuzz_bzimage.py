"""bzImage loader: parse, every derived property, zero page, prepare() into a small VM.

Also checks that a refused prepare() wrote nothing (README: "validates everything before
writing anything") and that a successful one put the payload at the load address.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import contextlib

from fuzz.harness import Target, atheris_main
from fuzz.seeds import bzimage_offsets, bzimage_seeds
from vmboot.cli.inspect import describe_bzimage, render_text
from vmboot.errors import VmbootError
from vmboot.hv import MemoryVM
from vmboot.linux import BootOptions, default_e820_map, load_bzimage
from vmboot.linux.loader.setup_header import SetupHeader
from vmboot.linux.loader.vmlinux import uncompressed_kernel

VM_BYTES = 64 << 20
INITRD = b"070701" + bytes(4090)


class RecordingVM(MemoryVM):
    """A MemoryVM that counts writes and zeroings (to check refusals write nothing)."""

    def __init__(self, memory_bytes: int) -> None:
        super().__init__(memory_bytes)
        self.mutations = 0

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.mutations += 1
        super().write(gpa, data)

    def zero(self, gpa: int, n: int) -> None:
        self.mutations += 1
        super().zero(gpa, n)


_vm: RecordingVM | None = None


def vm() -> RecordingVM:
    global _vm
    if _vm is None:
        _vm = RecordingVM(VM_BYTES)
    return _vm


def one_input(data: bytes) -> None:
    kernel = load_bzimage(data)  # ELF-shaped inputs are fuzz_elf's
    h = kernel.setup_header
    assert SetupHeader.parse(bytes(data[:0x26C]).ljust(0x26C, b"\0")).pack() == h.pack()
    assert kernel.header_bytes == data[0x1F1 : h.header_end]
    kernel.payload()
    kernel.compressed_payload()
    _ = kernel.compression, kernel.kernel_version, kernel.init_size, kernel.payload_offset
    load = kernel.default_load_address()
    kernel.entry_point(load)
    kernel.check_64bit_entry()
    repr(kernel)
    h.as_dict()
    h.loadflag_names()
    h.xloadflag_names()
    _ = h.version_string, h.effective_cmdline_size, h.effective_initrd_addr_max, h.relocatable
    describe_bzimage(kernel)
    render_text(kernel)
    zp = kernel.build_zero_page(0x91000, 0x4000000, len(INITRD), default_e820_map(0, VM_BYTES))
    assert len(zp) == 4096
    machine = vm()
    for options in (BootOptions(cmdline="console=ttyS0", initrd=INITRD), BootOptions()):
        machine.mutations = 0
        try:
            plan = kernel.prepare(machine, options)
        except VmbootError:
            assert machine.mutations == 0, "a refused prepare() wrote to guest memory"
            continue
        payload = kernel.payload()
        head = bytes(payload[:64])
        assert machine.read(plan.load_addr, len(head)) == head
        plan.describe()
    with contextlib.suppress(VmbootError):
        uncompressed_kernel(data)


TARGET = Target("bzimage", one_input, lambda: list(bzimage_seeds()), bzimage_offsets, max_len=1 << 15,
                description="load_bzimage: properties, zero page, prepare, payload")

if __name__ == "__main__":
    atheris_main(TARGET)
