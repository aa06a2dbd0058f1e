"""Write a guest's memory and vCPU registers as an ELF vmcore that crash and drgn open.

The layout is the kernel's own ``/proc/vmcore`` (see :mod:`vmboot.debug.elf_core`): an ELF
header, one ``PT_NOTE`` and one ``PT_LOAD`` per RAM region, the notes, then the RAM of
each region at a page-aligned offset. Pages that hold nothing (never touched by the guest,
or all zero; see :mod:`vmboot.debug.page_scan`) are not written: the file is sparse, so
it takes disk space and time in proportion to the memory the guest used, and readers see
zeros there as in RAM.

::

    info = write_guest_vmcore("vmcore", vm, vm.vcpus, kernel="bzImage")
    print(info.describe())
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmboot.debug.elf_core import (
    ELFOSABI_NONE,
    ET_CORE,
    EV_CURRENT,
    NOTE_OWNER_CORE,
    NOTE_OWNER_VMBOOT,
    NOTE_OWNER_VMCOREINFO,
    NT_PRSTATUS,
    NT_VMBOOT_CPU,
    NT_VMCOREINFO,
    PRSTATUS_PID_CPU_BASE,
    CpuState,
    pack_note,
    pack_prstatus,
    pack_vmboot_cpu,
)
from vmboot.debug.kernel_variables import kernel_variables
from vmboot.debug.page_scan import data_runs
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.debug.symbol_sources import SymbolSource, load_symbols
from vmboot.debug.vmcoreinfo import (
    DEFAULT_PAGE_OFFSET,
    SOURCE_GUEST,
    SOURCE_MINIMAL,
    VMCOREINFO_MAX,
    VmcoreInfo,
    minimal_vmcoreinfo_from,
)
from vmboot.elf import (
    ELF_HEADER,
    ELF_MAGIC,
    ELFCLASS64,
    ELFDATA2LSB,
    EM_X86_64,
    PF_R,
    PF_W,
    PF_X,
    PROGRAM_HEADER,
    PT_LOAD,
    PT_NOTE,
)
from vmboot.errors import DebugError, VmbootError
from vmboot.hv.base import VirtualCPU, VirtualMachine
from vmboot.hv.registers import GENERAL_REGISTERS, SPECIAL_REGISTERS, Register, SegmentRegister
from vmboot.x86.paging import PAGE_SIZE

WRITE_CHUNK = 8 << 20
"""Largest single write of guest RAM (bytes)."""
_SELECTORS = (SegmentRegister.CS, SegmentRegister.SS, SegmentRegister.DS, SegmentRegister.ES,
              SegmentRegister.FS, SegmentRegister.GS)


@dataclass
class VmcoreResult:
    """What :func:`write_vmcore` wrote."""

    path: Path
    file_size: int
    """The file's apparent size (RAM regions included in full)."""
    data_bytes: int
    """Bytes of guest RAM actually written (the rest are holes)."""
    cpus: int
    vmcoreinfo_source: str | None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        info = ("no VMCOREINFO" if self.vmcoreinfo_source is None
                else f"VMCOREINFO {self.vmcoreinfo_source}")
        return (f"vmcore {self.path}: {self.cpus} CPU(s), {self.data_bytes >> 20} MiB of RAM "
                f"written ({self.file_size >> 20} MiB apparent size), {info}")


def cpu_state(vcpu: VirtualCPU) -> CpuState:
    """Registers, selectors and FS/GS bases of ``vcpu`` as a core records them."""
    regs = vcpu.get_registers((*GENERAL_REGISTERS, *SPECIAL_REGISTERS))
    selectors = {}
    bases = {}
    for seg in _SELECTORS:
        s = vcpu.get_segment(seg)
        selectors[seg] = s.selector
        bases[seg] = s.base
    return CpuState(vcpu.index, regs, selectors, bases[SegmentRegister.FS],
                    bases[SegmentRegister.GS], pid=vcpu.index + PRSTATUS_PID_CPU_BASE)


def host_address(view: memoryview) -> int | None:
    """The host address of a writable view's first byte (None for a read-only buffer)."""
    try:
        anchor = ctypes.c_char.from_buffer(view)
    except TypeError:  # read-only buffer
        return None
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


def build_headers(vm: VirtualMachine, cpus: Sequence[CpuState], vmcoreinfo: bytes | None,
                  page_offset: int) -> tuple[bytes, list[tuple[int, int, int]]]:
    """The ELF header, program headers and notes, and ``(gpa, size, file offset)`` per region."""
    notes = bytearray()
    for cpu in cpus:
        notes += pack_note(NOTE_OWNER_CORE, NT_PRSTATUS, pack_prstatus(cpu))
    if vmcoreinfo is not None:
        notes += pack_note(NOTE_OWNER_VMCOREINFO, NT_VMCOREINFO, vmcoreinfo)
    for cpu in cpus:
        notes += pack_note(NOTE_OWNER_VMBOOT, NT_VMBOOT_CPU, pack_vmboot_cpu(cpu))
    regions = vm.regions
    phnum = 1 + len(regions)
    notes_offset = ELF_HEADER.size + phnum * PROGRAM_HEADER.size
    offset = -(-(notes_offset + len(notes)) // PAGE_SIZE) * PAGE_SIZE
    ident = ELF_MAGIC + bytes((ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE)) + bytes(8)
    out = bytearray(ELF_HEADER.pack(ident, ET_CORE, EM_X86_64, EV_CURRENT, 0, ELF_HEADER.size,
                                    0, 0, ELF_HEADER.size, PROGRAM_HEADER.size, phnum, 0, 0, 0))
    out += PROGRAM_HEADER.pack(PT_NOTE, 0, notes_offset, 0, 0, len(notes), len(notes), 4)
    layout = []
    for region in regions:
        out += PROGRAM_HEADER.pack(PT_LOAD, PF_R | PF_W | PF_X, offset, page_offset + region.gpa,
                                   region.gpa, region.size, region.size, PAGE_SIZE)
        layout.append((region.gpa, region.size, offset))
        offset += region.size
    out += notes
    return bytes(out), layout


def write_vmcore(path: str | os.PathLike[str], vm: VirtualMachine, cpus: Sequence[CpuState],
                 vmcoreinfo: VmcoreInfo | None = None,
                 page_offset: int = DEFAULT_PAGE_OFFSET) -> VmcoreResult:
    """Write ``vm``'s RAM and ``cpus`` to ``path`` (replacing it); see the module docstring."""
    if not cpus:
        raise DebugError("vmcore: no CPU state given; a core needs at least one NT_PRSTATUS")
    head, layout = build_headers(vm, cpus, None if vmcoreinfo is None else vmcoreinfo.text,
                                 page_offset)
    target = Path(path)
    written = 0
    end = len(head)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        raise DebugError(f"vmcore: cannot create {target}: {e.strerror}; give a writable "
                         f"path (--dump-dir)") from None
    try:
        os.write(fd, head)
        for gpa, size, offset in layout:
            view = vm.view(gpa, size)
            try:
                base = host_address(view)
                for start, stop in data_runs(view, base):
                    pos = start
                    while pos < stop:
                        n = min(WRITE_CHUNK, stop - pos)
                        chunk = view[pos:pos + n]
                        try:
                            os.pwrite(fd, chunk, offset + pos)
                        finally:
                            chunk.release()
                        pos += n
                        written += n
            finally:
                view.release()
            end = offset + size
        os.ftruncate(fd, end)
    except OSError as e:
        raise DebugError(f"vmcore: writing {target} failed after {written} bytes of RAM: "
                         f"{e.strerror}; free space or choose another --dump-dir") from None
    finally:
        os.close(fd)
    return VmcoreResult(target, end, written, len(cpus),
                        None if vmcoreinfo is None else vmcoreinfo.source)


def write_guest_vmcore(path: str | os.PathLike[str], vm: VirtualMachine,
                       vcpus: Sequence[VirtualCPU], *, vmlinux: SymbolSource | None = None,
                       system_map: SymbolSource | None = None,
                       kernel: SymbolSource | None = None) -> VmcoreResult:
    """A vmcore of a running (stopped) Linux guest: its RAM, every vCPU, and VMCOREINFO.

    The kernel's own VMCOREINFO is used when it has one; otherwise vmboot writes the
    minimum from the symbols and the KASLR slide (``vmcoreinfo_source`` says which). With
    no usable symbols the core has no VMCOREINFO, which crash and drgn need; the result's
    ``notes`` say so.
    """
    from vmboot.debug.kaslr import kaslr_slide

    if not vcpus:
        raise DebugError("vmcore: no vCPU given; pass the VM's vCPUs")
    cpus = [cpu_state(v) for v in vcpus]
    notes: list[str] = []
    boot = cpus[0].registers
    space = GuestAddressSpace(vm, boot[Register.CR3], boot[Register.CR4], boot[Register.CR0])
    info: VmcoreInfo | None = None
    page_offset = DEFAULT_PAGE_OFFSET
    try:
        symbols = load_symbols(vmlinux=vmlinux, system_map=system_map, kernel=kernel)
        slide = kaslr_slide(symbols, space)
    except VmbootError as e:
        notes.append(f"no VMCOREINFO note (crash and drgn need one): {e}")
    else:
        variables = kernel_variables(vmlinux=vmlinux, kernel=kernel)
        info, page_offset = _vmcoreinfo(space, variables, slide, notes)
    result = write_vmcore(path, vm, cpus, info, page_offset)
    result.notes.extend(notes)
    return result


def _vmcoreinfo(space: GuestAddressSpace, variables: dict[str, int], slide: int,
                notes: list[str]) -> tuple[VmcoreInfo, int]:
    page_offset = DEFAULT_PAGE_OFFSET
    try:
        if "page_offset_base" in variables:
            page_offset = space.read_u64(variables["page_offset_base"] + slide) or page_offset
    except VmbootError as e:
        notes.append(f"page_offset_base unreadable ({e}); direct map assumed at "
                     f"{DEFAULT_PAGE_OFFSET:#x}")
    if "vmcoreinfo_data" in variables and "vmcoreinfo_size" in variables:
        try:
            data = space.read_u64(variables["vmcoreinfo_data"] + slide)
            size = space.read_u64(variables["vmcoreinfo_size"] + slide)
            if data and 0 < size <= VMCOREINFO_MAX:
                return VmcoreInfo(space.read(data, size), SOURCE_GUEST), page_offset
            notes.append(f"the kernel's vmcoreinfo_data={data:#x}/vmcoreinfo_size={size} is "
                         f"not set up; VMCOREINFO written by vmboot")
        except VmbootError as e:
            notes.append(f"the kernel's vmcoreinfo is unreadable ({e}); VMCOREINFO written "
                         f"by vmboot")
    text = minimal_vmcoreinfo_from(space, variables, slide)
    return VmcoreInfo(text, SOURCE_MINIMAL), page_offset

