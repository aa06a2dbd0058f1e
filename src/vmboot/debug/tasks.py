"""The guest kernel's tasks, read from the host: the equivalent of SysRq-t / SysRq-w.

:func:`list_tasks` walks the task list from ``init_task`` (``task_struct.tasks``, and each
process's threads through ``thread_group``) in guest memory, and for every task reads its
PID, TGID, ``comm``, state and the CPU it last ran on, then unwinds its kernel stack:

* a task running on a vCPU: that vCPU's registers (see :mod:`vmboot.debug.cpus`); which
  task runs where is read from the per-CPU ``current_task`` (6.1; ``pcpu_hot.current_task``
  from 6.2), at ``__per_cpu_offset[cpu]`` on SMP kernels;
* any other task: its saved stack pointer ``thread.sp`` points at the ``struct
  inactive_task_frame`` that ``__switch_to_asm`` pushed (r15 r14 r13 r12 bx bp ret_addr on
  x86_64); the walk starts at ``ret_addr`` (in ``__schedule``) with the stack pointer just
  above the frame and ``bp`` from it, as the kernel's own unwinders start for a blocked task,
  then follows ORC when the kernel has it, else frame pointers.

Structure layouts come from the kernel's BTF (:mod:`vmboot.debug.btf`): the ``.BTF``
section of the vmlinux, else of the kernel image (decompressed on the host); for a kernel
built without BTF, from a debug vmlinux's DWARF (:mod:`vmboot.debug.dwarf_types`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vmboot.debug.btf import Btf, BtfLookupError, TypeGraph
from vmboot.debug.cpus import CpuTrace, trace_cpus
from vmboot.debug.dwarf_types import DwarfTypes
from vmboot.debug.frames import StackFrame, format_trace
from vmboot.debug.kernel_symbols import load_symbol_addresses, runtime_address
from vmboot.debug.orc import OrcTable, UnwindState
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.debug.stack_walk import walk_frame_pointers
from vmboot.debug.symbol_sources import SymbolSource, load_symbols, memoised, read_all, rewind
from vmboot.debug.symtab import SymbolTable
from vmboot.debug.trace import frame_maker, load_orc, orc_then_scan
from vmboot.elf import ElfFile
from vmboot.errors import DebugError, NoVcpuError, VmbootError
from vmboot.hv.base import VirtualCPU
from vmboot.hv.registers import Register

MAX_TASKS = 1 << 16
"""Stop the walk after this many tasks (a corrupted list could loop for ever)."""
TASK_COMM_LEN = 16
WORD = 8

TASK_STATE_LETTERS = "RSDTtXZPI"
"""``task_state_array`` of fs/proc/array.c: running, sleeping, disk sleep, stopped,
tracing stop, dead, zombie, parked, idle."""
TASK_INTERRUPTIBLE = 0x1
TASK_UNINTERRUPTIBLE = 0x2
TASK_NOLOAD = 0x400
TASK_IDLE = TASK_UNINTERRUPTIBLE | TASK_NOLOAD
TASK_REPORT = 0x7F
"""RUNNING .. PARKED: the state bits /proc reports (``TASK_REPORT``)."""
TASK_REPORT_IDLE = TASK_REPORT + 1
"""``TASK_REPORT_MAX`` >> 1; its bit length is the index of ``I``, as the kernel's ``fls``."""

INACTIVE_FRAME_FALLBACK = {"bp": 5 * WORD, "ret_addr": 6 * WORD}
"""``struct inactive_task_frame`` on x86_64 when the BTF lacks it: r15 r14 r13 r12 bx bp ret_addr."""
INACTIVE_FRAME_SIZE_FALLBACK = 7 * WORD


def task_state_letter(state: int, exit_state: int = 0) -> str:
    """The letter ``ps`` shows for a task's ``__state | exit_state`` (``task_state_index``)."""
    raw = state | exit_state
    if raw & TASK_IDLE == TASK_IDLE and not raw & TASK_REPORT & ~TASK_UNINTERRUPTIBLE:
        return TASK_STATE_LETTERS[TASK_REPORT_IDLE.bit_length()]
    reported = raw & TASK_REPORT
    return TASK_STATE_LETTERS[reported.bit_length()]


@dataclass(frozen=True)
class GuestTask:
    """One task of the guest: identity, state, where it ran, and its kernel stack."""

    address: int
    pid: int
    tgid: int
    comm: str
    state: str
    """One of ``RSDTtXZPI`` (as ``ps``)."""
    state_value: int
    cpu: int
    """The CPU it last ran on."""
    running_on: int | None = None
    """The vCPU it is running on right now, if any."""
    frames: list[StackFrame] = field(default_factory=list)
    error: str | None = None
    """Why there are no (or only some) frames."""
    switches: int = -1
    """Context switches so far (``nvcsw + nivcsw``; -1 when unknown)."""

    @property
    def blocked(self) -> bool:
        """In uninterruptible sleep and not TASK_IDLE: what SysRq-w shows."""
        return (bool(self.state_value & TASK_UNINTERRUPTIBLE)
                and self.state_value & TASK_IDLE != TASK_IDLE)

    def render(self) -> str:
        """A ``sched_show_task``-like block: a header line, then the call trace."""
        where = f" (running on CPU {self.running_on})" if self.running_on is not None else ""
        head = (f"task:{self.comm:<15} state:{self.state} pid:{self.pid:<5} tgid:{self.tgid:<5} "
                f"cpu:{self.cpu}{where}\n")
        body = format_trace(self.frames) if self.frames else ""
        if self.error:
            body += f" ({self.error})\n"
        return head + body

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "tgid": self.tgid, "comm": self.comm, "state": self.state,
                "cpu": self.cpu, "running_on": self.running_on, "error": self.error,
                "switches": self.switches,
                "frames": [{"pc": f.pc, "symbol": f.symbol, "offset": f.offset, "size": f.size,
                            "reliable": f.reliable, "note": f.note} for f in self.frames]}


PCPU_HOT = "pcpu_hot"
"""The per-CPU structure holding ``current_task`` from Linux 6.2 (a variable and a type)."""


def load_types(vmlinux: SymbolSource | None = None,
               kernel: SymbolSource | None = None) -> TypeGraph:
    """The kernel's structure layouts (memoised): the vmlinux's ``.BTF``, else the kernel
    image's, else the DWARF of a debug vmlinux (:mod:`vmboot.debug.dwarf_types`)."""
    failures = []
    if vmlinux is not None:
        try:
            return memoised("btf-vmlinux", vmlinux, lambda: _btf_from_elf_source(vmlinux))
        except (OSError, VmbootError) as exc:
            failures.append(f"vmlinux: {exc}")
    if kernel is not None:
        try:
            return memoised("btf-kernel", kernel,
                            lambda: Btf.from_kernel_image(read_all(kernel)))
        except (OSError, VmbootError) as exc:
            failures.append(f"kernel image: {exc}")
    if vmlinux is not None:
        try:
            return memoised("dwarf-vmlinux", vmlinux, lambda: _dwarf_from_elf_source(vmlinux))
        except (OSError, VmbootError) as exc:
            failures.append(f"vmlinux DWARF: {exc}")
    raise BtfLookupError("no kernel type information (needs CONFIG_DEBUG_INFO_BTF in the "
                         "kernel, or a debug vmlinux with DWARF): " +
                         ("; ".join(failures) or "pass vmlinux= or kernel="))


def _btf_from_elf_source(source: SymbolSource) -> Btf:
    rewind(source)
    with ElfFile.open(source) as elf:
        return Btf.from_elf(elf)


def _dwarf_from_elf_source(source: SymbolSource) -> DwarfTypes:
    """The DWARF layouts :class:`TaskLayout` reads: ``task_struct`` and the types in it,
    ``inactive_task_frame``, and ``pcpu_hot`` when the kernel has that variable (looking
    for a structure no unit defines searches all of ``.debug_info``)."""
    also = ["inactive_task_frame"]
    try:
        if PCPU_HOT in load_symbol_addresses(source):
            also.append(PCPU_HOT)
    except VmbootError:
        also.append(PCPU_HOT)
    rewind(source)
    with ElfFile.open(source) as elf:
        return DwarfTypes.from_elf(elf, also=also)


@dataclass(frozen=True)
class TaskLayout:
    """The byte offsets :func:`list_tasks` needs, read from BTF (or DWARF) once per kernel."""

    tasks: int
    thread_group: int | None
    pid: int
    tgid: int
    comm: int
    state: int
    state_size: int
    exit_state: int
    cpu: int | None
    thread_sp: int
    frame_bp: int
    frame_ret: int
    frame_size: int
    current_task_member: int | None
    """Offset of ``current_task`` in ``struct pcpu_hot`` (6.2+), else None."""
    nvcsw: int | None
    nivcsw: int | None

    @property
    def span(self) -> int:
        """Bytes from the start of a task_struct that hold every field read."""
        ends = [self.pid + 4, self.tgid + 4, self.comm + TASK_COMM_LEN,
                self.state + self.state_size, self.exit_state + 4, self.thread_sp + WORD]
        ends += [off + WORD for off in (self.cpu, self.nvcsw, self.nivcsw) if off is not None]
        return max(ends)

    @classmethod
    def from_btf(cls, btf: TypeGraph) -> TaskLayout:
        def opt(path: str, struct: str = "task_struct") -> int | None:
            try:
                return btf.offsetof(struct, path)
            except BtfLookupError:
                return None

        state_name = "__state" if opt("__state") is not None else "state"
        cpu = opt("cpu")
        if cpu is None:
            cpu = opt("thread_info.cpu")
        if btf.has("inactive_task_frame"):
            frame_bp = btf.offsetof("inactive_task_frame", "bp")
            frame_ret = btf.offsetof("inactive_task_frame", "ret_addr")
            frame_size = btf.sizeof("inactive_task_frame")
        else:
            frame_bp, frame_ret = INACTIVE_FRAME_FALLBACK["bp"], INACTIVE_FRAME_FALLBACK["ret_addr"]
            frame_size = INACTIVE_FRAME_SIZE_FALLBACK
        return cls(
            tasks=btf.offsetof("task_struct", "tasks"),
            thread_group=opt("thread_group"),
            pid=btf.offsetof("task_struct", "pid"),
            tgid=btf.offsetof("task_struct", "tgid"),
            comm=btf.offsetof("task_struct", "comm"),
            state=btf.offsetof("task_struct", state_name),
            state_size=btf.sizeof(btf.member_type("task_struct", state_name)),
            exit_state=btf.offsetof("task_struct", "exit_state"),
            cpu=cpu,
            thread_sp=btf.offsetof("task_struct", "thread.sp"),
            frame_bp=frame_bp, frame_ret=frame_ret, frame_size=frame_size,
            current_task_member=opt("current_task", PCPU_HOT) if btf.has(PCPU_HOT) else None,
            nvcsw=opt("nvcsw"), nivcsw=opt("nivcsw"),
        )


def _field(raw: bytes, offset: int, size: int, signed: bool = False) -> int:
    return int.from_bytes(raw[offset:offset + size], "little", signed=signed)


class _Reader:
    def __init__(self, space: GuestAddressSpace) -> None:
        self.space = space

    def u64(self, va: int) -> int:
        return self.space.read_u64(va)



def task_addresses(reader: _Reader, init_task: int, layout: TaskLayout) -> list[int]:
    """``init_task``, every process on its ``tasks`` list, and their other threads."""
    head = init_task + layout.tasks
    out = [init_task]
    seen = {init_task}
    node = reader.u64(head)
    while node != head and len(out) < MAX_TASKS:
        task = node - layout.tasks
        if task in seen:
            break
        seen.add(task)
        out.append(task)
        node = reader.u64(node)
    if layout.thread_group is None:
        return out
    threads: list[int] = []
    for leader in out:
        start = leader + layout.thread_group
        node = reader.u64(start)
        while node != start and len(out) + len(threads) < MAX_TASKS:
            task = node - layout.thread_group
            if task in seen:
                break
            seen.add(task)
            threads.append(task)
            node = reader.u64(node)
    return out + threads


def current_tasks(reader: _Reader, symbols: dict[str, int], slide: int, layout: TaskLayout,
                  cpus: Sequence[int]) -> dict[int, int]:
    """The task running on each CPU: ``{task address: cpu}``."""
    if layout.current_task_member is not None and PCPU_HOT in symbols:
        var = runtime_address(symbols, PCPU_HOT, slide) + layout.current_task_member
    else:
        var = runtime_address(symbols, "current_task", slide)
    out: dict[int, int] = {}
    for cpu in cpus:
        base = 0
        if "__per_cpu_offset" in symbols:
            base = reader.u64(runtime_address(symbols, "__per_cpu_offset", slide) + WORD * cpu)
        out[reader.u64(base + var)] = cpu
    return out


def sleeping_task_frames(space: GuestAddressSpace, sp: int, layout: TaskLayout,
                         symbols: SymbolTable, orc: OrcTable | None, slide: int,
                         max_frames: int) -> list[StackFrame]:
    """The stack of a task switched out at ``thread.sp`` (see the module docstring)."""
    ret = space.read_u64(sp + layout.frame_ret)
    bp = space.read_u64(sp + layout.frame_bp)
    if orc is not None:
        start = UnwindState(ret, sp + layout.frame_size, bp, None, False)
        return orc_then_scan(space, orc, start, max_frames, symbols, slide)
    make = frame_maker(symbols)
    return walk_frame_pointers(space, ret, bp, max_frames,
                               lambda i, pc, rel, is_ret: make(i, pc, rel, is_ret or i == 0))


def list_tasks(vcpus: Sequence[VirtualCPU], *, vmlinux: SymbolSource | None = None,
               system_map: SymbolSource | None = None, kernel: SymbolSource | None = None,
               slide: int = 0, max_frames: int = 16,
               cpu_traces: Sequence[CpuTrace] | None = None) -> list[GuestTask]:
    """Every task of the guest with its kernel stack, in task-list order (threads last).

    ``vcpus``: the guest's vCPUs in CPU order (their page tables are used to read memory;
    their registers give the stacks of the tasks running on them). ``slide``: the KASLR
    slide. Raises :class:`DebugError` when the kernel's symbols or BTF are missing or the
    task list cannot be read; a task whose stack cannot be unwound has ``error`` set.
    """
    if not vcpus:
        raise NoVcpuError("list_tasks: no vCPU given; pass the guest's vCPUs")
    btf = load_types(vmlinux, kernel)
    layout = memoised("task-layout", vmlinux if vmlinux is not None else kernel,  # type: ignore[arg-type]
                      lambda: TaskLayout.from_btf(btf))
    addresses = load_symbol_addresses(vmlinux, system_map, kernel)
    functions = load_symbols(vmlinux=vmlinux, system_map=system_map, kernel=kernel).slid(slide)
    orc = load_orc(vmlinux, kernel)
    regs = vcpus[0].get_registers((Register.CR0, Register.CR3, Register.CR4))
    space = GuestAddressSpace(vcpus[0].vm, regs[Register.CR3], regs[Register.CR4], regs[Register.CR0])
    reader = _Reader(space)
    init_task = runtime_address(addresses, "init_task", slide)
    try:
        tasks = task_addresses(reader, init_task, layout)
        running = current_tasks(reader, addresses, slide, layout, [v.index for v in vcpus])
    except VmbootError as exc:
        raise DebugError(f"cannot walk the task list from init_task at {init_task:#x} "
                         f"(KASLR slide {slide:+#x}): {exc}") from exc
    traces = ({t.cpu: t for t in cpu_traces} if cpu_traces is not None else
              {t.cpu: t for t in trace_cpus(vcpus, vmlinux=vmlinux, system_map=system_map,
                                            kernel=kernel, slide=slide, max_frames=max_frames)})
    out = []
    for task in tasks:
        try:
            raw = space.read(task, layout.span)  # one read of the fields, not one per field
        except VmbootError as exc:
            out.append(GuestTask(task, -1, -1, "?", "?", 0, -1, error=f"unreadable task_struct "
                                 f"at {task:#x}: {exc}"))
            continue
        pid = _field(raw, layout.pid, 4, signed=True)
        tgid = _field(raw, layout.tgid, 4, signed=True)
        name = raw[layout.comm:layout.comm + TASK_COMM_LEN].split(b"\0", 1)[0].decode(
            "utf-8", "replace")
        state = _field(raw, layout.state, layout.state_size)
        exit_state = _field(raw, layout.exit_state, 4)
        cpu = _field(raw, layout.cpu, 4) if layout.cpu is not None else 0
        sp = _field(raw, layout.thread_sp, WORD)
        switches = -1
        if layout.nvcsw is not None and layout.nivcsw is not None:
            switches = _field(raw, layout.nvcsw, WORD) + _field(raw, layout.nivcsw, WORD)
        letter = task_state_letter(state, exit_state)
        on = running.get(task)
        frames: list[StackFrame] = []
        error = None
        if on is not None and on in traces:
            t = traces[on]
            frames, error = t.frames, t.error
            if t.user_mode:
                error = f"in user mode at RIP {t.rip:#x}"
        else:
            try:
                frames = sleeping_task_frames(space, sp, layout, functions, orc, slide, max_frames)
            except DebugError as exc:
                frames = [f for f in getattr(exc, "frames", []) if isinstance(f, StackFrame)]
                error = f"stack at thread.sp={sp:#x}: {exc}"
        out.append(GuestTask(task, pid, tgid, name, letter, state | exit_state, cpu, on, frames,
                             error, switches))
    return out


def still_blocked(before: Sequence[GuestTask], after: Sequence[GuestTask]) -> list[GuestTask]:
    """Tasks blocked (D, not idle) in both lists with no context switch in between."""
    earlier = {(t.address, t.pid): t for t in before if t.blocked}
    return [t for t in after if t.blocked and (old := earlier.get((t.address, t.pid))) is not None
            and old.switches == t.switches]


def render_tasks(tasks: Sequence[GuestTask], blocked_only: bool = False) -> str:
    """Every task (or only the blocked ones, as SysRq-w) as :meth:`GuestTask.render` shows it."""
    chosen = [t for t in tasks if t.blocked] if blocked_only else list(tasks)
    title = "blocked tasks" if blocked_only else "tasks"
    return f"{len(chosen)} {title}:\n" + "".join(t.render() for t in chosen)
