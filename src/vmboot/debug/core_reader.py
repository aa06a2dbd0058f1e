"""Read an ELF kernel core back into a :class:`~vmboot.hv.memory.MemoryVM` with its vCPUs.

Accepted: vmboot's own vmcores, QEMU ``dump-guest-memory`` output (ELF, without paging
or filters), and kdump's ``/proc/vmcore`` copies. RAM comes from the ``PT_LOAD`` segments by
physical address; each ``NT_PRSTATUS`` note becomes a vCPU with its general registers and
selectors. Control registers (CR3 above all, which every page walk needs) come from
vmboot's ``VMBOOT`` note or QEMU's ``QEMU`` note; a core with neither gets CR3 from
VMCOREINFO (the physical address of ``init_top_pgt``, the kernel's own page tables) and
long-mode paging bits, and :attr:`GuestCore.notes` says so.

Every analysis of :mod:`vmboot.debug` then runs on the result::

    with read_core("vmcore") as core:
        frames = capture_stack_trace(core.vm.vcpus[0], kernel="bzImage", slide=core.kaslr_offset)
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from vmboot.closeable import Closeable
from vmboot.debug.elf_core import (
    ET_CORE,
    NOTE_OWNER_CORE,
    NOTE_OWNER_QEMU,
    NOTE_OWNER_VMBOOT,
    NOTE_OWNER_VMCOREINFO,
    NT_PRSTATUS,
    NT_QEMU_CPUSTATE,
    NT_VMBOOT_CPU,
    PRSTATUS_SIZE,
    CpuState,
    unpack_prstatus,
    unpack_qemu_cpustate,
    unpack_vmboot_cpu,
)
from vmboot.debug.kaslr import KERNEL_MAP_BASE
from vmboot.debug.page_scan import data_runs
from vmboot.debug.vmcoreinfo import parse_vmcoreinfo
from vmboot.elf import PT_LOAD, ElfFile
from vmboot.errors import DebugError, HypervisorError, VmbootError
from vmboot.hv.memory import MemoryVM
from vmboot.hv.memory_map import MIN_MEMORY, MMIO_GAP_END, MMIO_GAP_START
from vmboot.hv.registers import Register, Segment, SegmentRegister
from vmboot.x86.cr import CR0_PE, CR0_PG, CR4_LA57, CR4_PAE, EFER_LMA, EFER_LME
from vmboot.x86.paging import PAGE_SIZE

DEFAULT_MAX_MEMORY = 64 << 30
"""Largest guest RAM :func:`read_core` rebuilds unless told otherwise (64 GiB)."""
MAX_CPUS = 256
"""vCPU indices a :class:`MemoryVM` accepts."""
COPY_CHUNK = 8 << 20
SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)


@dataclass
class GuestCore(Closeable):
    """A core read back: guest RAM and vCPUs in ``vm``, what the notes said, and how."""

    vm: MemoryVM
    cpus: list[CpuState]
    vmcoreinfo: dict[str, str] | None
    writer: str
    """``"vmboot"``, ``"qemu"`` or ``"kernel"`` (no note naming the writer)."""
    notes: list[str] = field(default_factory=list)

    @property
    def kaslr_offset(self) -> int | None:
        """``KERNELOFFSET`` from VMCOREINFO (the KASLR slide), None without it."""
        if self.vmcoreinfo is None or "KERNELOFFSET" not in self.vmcoreinfo:
            return None
        try:
            return int(self.vmcoreinfo["KERNELOFFSET"], 16)
        except ValueError:
            return None

    def close(self) -> None:
        self.vm.close()


def _memory_layout(name: str, loads: list[tuple[int, int]], max_memory: int) -> int:
    """The RAM size of a MemoryVM (vmboot's PC layout) that holds every ``(paddr, size)``."""
    top = 0
    for paddr, size in loads:
        if MMIO_GAP_START <= paddr < MMIO_GAP_END:
            continue
        top = max(top, paddr + size)
    memory = (MMIO_GAP_START + (top - MMIO_GAP_END) if top > MMIO_GAP_END
              else min(top, MMIO_GAP_START))
    memory = max(MIN_MEMORY, -(-memory // PAGE_SIZE) * PAGE_SIZE)
    if memory > max_memory:
        raise DebugError(f"{name}: the PT_LOAD segments reach physical {top:#x}, which needs "
                         f"{memory:#x} bytes of guest RAM; the limit is {max_memory:#x} "
                         f"(max_memory=)")
    return memory


def _data_extents(fd: int | None, start: int, end: int) -> list[tuple[int, int]]:
    """File ranges within ``[start, end)`` that hold data (SEEK_DATA/SEEK_HOLE; all of it
    when the file system cannot say)."""
    if fd is None:
        return [(start, end)]
    out = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, SEEK_DATA)
            hole = os.lseek(fd, data, SEEK_HOLE) if data < end else end
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos
                break
            return [(start, end)]
        if data >= end:
            break
        out.append((data, min(hole, end)))
        pos = hole
    return out


def read_core(path: str | os.PathLike[str] | bytes, *,
              max_memory: int = DEFAULT_MAX_MEMORY) -> GuestCore:
    """Read an ELF core (a path, or its bytes) into a :class:`GuestCore`; see the module
    docstring. Only :class:`~vmboot.errors.VmbootError` escapes for a corrupt core."""
    name = "<core>" if isinstance(path, bytes) else os.fspath(path)
    try:
        elf = ElfFile(path, name) if isinstance(path, bytes) else ElfFile.open(path)
    except OSError as e:
        raise DebugError(f"{name}: cannot open the core: {e.strerror}") from None
    fd: int | None = None
    try:
        if not isinstance(path, bytes):
            fd = os.open(path, os.O_RDONLY)
        return _read(elf, name, fd, max_memory)
    except OSError as e:
        raise DebugError(f"{name}: cannot read the core: {e.strerror}") from None
    finally:
        if fd is not None:
            os.close(fd)
        elf.close()


def _read(elf: ElfFile, name: str, fd: int | None, max_memory: int) -> GuestCore:
    if elf.e_type != ET_CORE:
        raise DebugError(f"{name}: e_type={elf.e_type}, not a core file (ET_CORE={ET_CORE}); "
                         f"give a vmcore or a QEMU dump-guest-memory file")
    prstatus: list[bytes] = []
    vmboot_cpus: dict[int, dict[Register, int]] = {}
    qemu: list[bytes] = []
    info: dict[str, str] | None = None
    for note in elf.notes():
        if note.name == NOTE_OWNER_CORE and note.type == NT_PRSTATUS:
            if len(note.desc) < PRSTATUS_SIZE:
                raise DebugError(f"{name}: NT_PRSTATUS note {len(prstatus)} has "
                                 f"{len(note.desc)} bytes, need {PRSTATUS_SIZE} (x86_64 "
                                 f"struct elf_prstatus)")
            prstatus.append(note.desc)
        elif note.name == NOTE_OWNER_VMCOREINFO:
            info = parse_vmcoreinfo(note.desc)
        elif note.name == NOTE_OWNER_VMBOOT and note.type == NT_VMBOOT_CPU:
            decoded = unpack_vmboot_cpu(note.desc)
            if decoded is not None:
                vmboot_cpus[decoded[0]] = decoded[1]
        elif note.name == NOTE_OWNER_QEMU and note.type == NT_QEMU_CPUSTATE:
            qemu.append(note.desc)
    if not prstatus:
        raise DebugError(f"{name}: no NT_PRSTATUS note: the core holds no CPU registers")
    if len(prstatus) > MAX_CPUS:
        raise DebugError(f"{name}: {len(prstatus)} NT_PRSTATUS notes, more than {MAX_CPUS} CPUs")
    loads = []
    for seg in elf.segments:
        if seg.type != PT_LOAD or seg.memsz == 0:
            continue
        if seg.filesz > seg.memsz:
            raise DebugError(f"{name}: PT_LOAD {seg.index} has p_filesz={seg.filesz:#x} > "
                             f"p_memsz={seg.memsz:#x}")
        if seg.offset + seg.filesz > elf.size:
            raise DebugError(f"{name}: PT_LOAD {seg.index} [{seg.offset:#x}, "
                             f"{seg.offset + seg.filesz:#x}) runs past the end of the file "
                             f"({elf.size:#x} bytes): truncated core?")
        if seg.paddr + seg.memsz > 1 << 52:
            raise DebugError(f"{name}: PT_LOAD {seg.index} p_paddr={seg.paddr:#x} + "
                             f"p_memsz={seg.memsz:#x} is beyond 52-bit physical addresses")
        loads.append(seg)
    if not loads:
        raise DebugError(f"{name}: no PT_LOAD segment: the core holds no memory")
    memory = _memory_layout(name, [(s.paddr, s.memsz) for s in loads], max_memory)
    try:
        vm = MemoryVM(memory)
    except (OSError, MemoryError, ValueError, OverflowError) as e:
        raise DebugError(f"{name}: cannot map {memory:#x} bytes of guest RAM: {e}") from None
    notes: list[str] = []
    try:
        for seg in loads:
            _copy_segment(elf, fd, vm, seg.paddr, seg.offset, seg.filesz, notes)
        writer = "vmboot" if vmboot_cpus else "qemu" if qemu else "kernel"
        cpus = [_make_vcpu(vm, i, desc, vmboot_cpus, qemu, info, notes)
                for i, desc in enumerate(prstatus)]
    except (VmbootError, OSError) as e:
        vm.close()
        if isinstance(e, VmbootError):
            raise
        raise DebugError(f"{name}: reading memory failed: {e}") from None
    except BaseException:
        vm.close()
        raise
    return GuestCore(vm, cpus, info, writer, notes)


def _copy_segment(elf: ElfFile, fd: int | None, vm: MemoryVM, paddr: int, offset: int,
                  filesz: int, notes: list[str]) -> None:
    for start, end in _data_extents(fd, offset, offset + filesz):
        pos = start
        while pos < end:
            n = min(COPY_CHUNK, end - pos)
            gpa = paddr + (pos - offset)
            chunk = elf.bytes_at("PT_LOAD data", pos, n)
            try:
                whole = n - n % PAGE_SIZE
                runs = list(data_runs(chunk[:whole], None))
                if whole < n:
                    runs.append((whole, n))
                for a, b in runs:  # all-zero pages stay untouched in the new guest's RAM
                    piece = chunk[a:b]
                    try:
                        if vm.memory.contains(gpa + a, b - a):
                            vm.write(gpa + a, piece)
                        else:
                            _write_partial(vm, gpa + a, piece, notes)
                    finally:
                        piece.release()
            finally:
                chunk.release()
            pos += n


def _write_partial(vm: MemoryVM, gpa: int, chunk: memoryview, notes: list[str]) -> None:
    """Write the parts of ``chunk`` that fall in RAM (a segment over the 3-4 GiB hole)."""
    skipped = 0
    for page in range(0, len(chunk), PAGE_SIZE):
        piece = chunk[page:page + PAGE_SIZE]
        try:
            if vm.memory.contains(gpa + page, len(piece)):
                vm.write(gpa + page, piece)
            else:
                skipped += len(piece)
        finally:
            piece.release()
    if skipped:
        notes.append(f"{skipped:#x} bytes at physical {gpa:#x} are outside vmboot's RAM layout "
                     f"(the 3-4 GiB MMIO hole); left out")


def _fallback_control(info: dict[str, str] | None, notes: list[str], index: int,
                      ) -> dict[Register, int]:
    """CR3 from VMCOREINFO (``init_top_pgt``'s physical address), long-mode paging bits."""
    regs = {Register.CR0: CR0_PG | CR0_PE, Register.CR4: CR4_PAE,
            Register.EFER: EFER_LME | EFER_LMA}
    if info is None:
        notes.append(f"CPU {index}: no control registers and no VMCOREINFO; CR3 is 0 (page "
                     f"walks will fail)")
        return regs
    try:
        table = int(info.get("SYMBOL(init_top_pgt)") or info["SYMBOL(swapper_pg_dir)"], 16)
        phys_base = int(info.get("NUMBER(phys_base)", "0"), 0)
    except (KeyError, ValueError):
        notes.append(f"CPU {index}: no control registers, and VMCOREINFO has no "
                     f"SYMBOL(init_top_pgt)/NUMBER(phys_base); CR3 is 0")
        return regs
    regs[Register.CR3] = (table - KERNEL_MAP_BASE + phys_base) & ((1 << 64) - 1) & ~0xFFF
    if info.get("NUMBER(pgtable_l5_enabled)") == "1":
        regs[Register.CR4] |= CR4_LA57
    notes.append(f"CPU {index}: no control registers in the core; CR3 = init_top_pgt "
                 f"({regs[Register.CR3]:#x}) from VMCOREINFO")
    return regs


def _make_vcpu(vm: MemoryVM, index: int, desc: bytes, vmboot_cpus: dict[int, dict[Register, int]],
               qemu: list[bytes], info: dict[str, str] | None, notes: list[str]) -> CpuState:
    cpu = unpack_prstatus(index, desc)
    control = vmboot_cpus.get(index)
    if control is None and index < len(qemu):
        decoded = unpack_qemu_cpustate(qemu[index])
        if decoded is not None:
            regs = decoded[0]
            control = {r: regs[r] for r in (Register.CR0, Register.CR2, Register.CR3,
                                            Register.CR4) if r in regs}
            control.setdefault(Register.EFER, EFER_LME | EFER_LMA)
    if control is None:
        control = _fallback_control(info, notes, index)
    cpu.registers.update(control)
    vcpu = vm.create_vcpu(index)
    try:
        vcpu.set_registers(cpu.registers)
    except HypervisorError as e:
        raise DebugError(f"CPU {index}: {e}") from None
    segments = {seg: Segment(selector=sel) for seg, sel in cpu.selectors.items()}
    segments[SegmentRegister.FS] = Segment(base=cpu.fs_base,
                                           selector=cpu.selectors.get(SegmentRegister.FS, 0))
    segments[SegmentRegister.GS] = Segment(base=cpu.gs_base,
                                           selector=cpu.selectors.get(SegmentRegister.GS, 0))
    vcpu.set_segments(segments)
    return cpu

