"""Kernel reports of every kind from a real guest, provoked from the host, end to end.

One tiny-smp guest (2 vCPUs, busybox shell, ``panic_on_oops=0``) takes the faults in turn;
each leaves it alive. The hung task comes first: after an oops the kernel reports no more
hung tasks. The host patches the first bytes of a system call that only the test
calls (:mod:`vmboot.debug.text_patch`), the shell calls it, and the patch is undone:

* oops: ``mov rax, [0]`` in ``sethostname`` (``hostname``): the NULL dereference kills the
  task; ``dump_on="oops"`` writes a vmcore, which drgn opens;
* bug / warning: ``ud2`` in ``sync`` with a ``__bug_table`` entry (a BUG, then a WARN one)
  pointed at it: ``kernel BUG at ...`` kills the task, ``WARNING: ... at ...`` returns;
* soft lockup: ``jmp .`` in ``sethostname`` with ``watchdog_thresh=1``; the other vCPU keeps
  the shell alive, and putting the original bytes back lets the stuck CPU return;
* hung task: a virtio-blk device that withholds its completions while ``dd conv=fsync``
  waits for its write in ``io_schedule`` (uninterruptible; ``hung_task_timeout_secs=1``).

Each report is checked as :mod:`vmboot.report` reads it (kind, title and function, first
and last line, frames), and against ``--fail-on`` and ``vmboot report``.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import missing, requires_kvm, shared_kernel_file
from vmboot.cli.main import main
from vmboot.debug.elf_core import NT_PRSTATUS, PRSTATUS_PID_CPU_BASE
from vmboot.debug.hang import HangReport
from vmboot.debug.tasks import GuestTask, render_tasks
from vmboot.debug.text_patch import JMP_SELF, LOAD_NULL, RETURN_ZERO, UD2, TextPatch
from vmboot.devices.virtio.block import BlockDevice, Disk
from vmboot.elf import PT_NOTE
from vmboot.report import KernelReport, Reading, ReportType, Verdict, parse_fail_on, read_console
from vmboot.vmm.machine import Machine

pytestmark = [pytest.mark.slow, requires_kvm]

CMDLINE = "console=ttyS0 reboot=k panic=-1 vmboot.shell=1 panic_on_oops=0"
BOOT_LIMIT_S = 600
STEP_S = 2.0
FAULT_LIMIT_S = 240
DISK_BYTES = 4 << 20
PROMPT = b"/ # "
DONE = "DONE-$((6*7))"
"""Echoed after a command: the shell prints ``DONE-42``, its echo of the line does not."""
FRAME_LINE = re.compile(r"^(?P<head>.*?[\s:])(?P<symbol>[A-Za-z_][\w.]*)\+(?P<offset>0x[0-9a-f]+)"
                        r"/0x[0-9a-f]+$")
TAINT_DIE = 1 << 7
"""Set by an oops or a BUG; khungtaskd then stops reporting (``check_hung_uninterruptible_
tasks``), so the hung task is provoked before them (tests run in file order)."""
NOTES_READ = 1 << 16
"""Bytes at the start of a vmcore that hold its headers and notes (a few CPUs' worth)."""
PRSTATUS_PID_OFFSET = 32
"""``pr_pid`` in a 64-bit ``struct elf_prstatus``."""
SYSCALL_ENTRY = ("do_syscall_64", "asm_exc_page_fault")
"""Under a host that emulates ring 0 the patched kernel finishes a system call from its
page-fault handler (see the kernels' README), so these frames sit under every syscall."""


class WithheldBlock(BlockDevice):
    """virtio-blk whose requests wait, unanswered, while :attr:`withhold` is set."""

    def __init__(self, disk: Disk) -> None:
        super().__init__(disk)
        self.withhold = threading.Event()

    def process_queue(self, index: int) -> bool:
        if self.withhold.is_set():
            return False  # the chains stay available, untouched
        return super().process_queue(index)

    def release(self) -> None:
        """Answer what was withheld: the transport serves the queue again and interrupts."""
        self.withhold.clear()
        if self._notify is not None:
            self._notify(0)


@dataclass
class Guest:
    machine: Machine
    disk: WithheldBlock
    dumps: Path

    def since(self, mark: int) -> str:
        return bytes(self.machine.console.data[mark:]).decode("utf-8", "replace")

    def run_until(self, token: str, after: int, limit: float = FAULT_LIMIT_S) -> str:
        """Run in steps until ``token`` is on the console past ``after``; the text since."""
        end = time.monotonic() + limit
        while token not in self.since(after):
            assert time.monotonic() < end, f"{token!r} not seen in {limit} s: {self.since(after)[-3000:]}"
            self.machine.run(timeout=STEP_S)
        return self.since(after)

    def type(self, command: str) -> int:
        """Type ``command; echo DONE-42``; the console offset before it."""
        mark = len(self.machine.console.data)
        self.machine.push_input(f"{command}; echo {DONE}\n".encode())
        return mark

    def shell(self, command: str) -> str:
        """Run ``command`` to completion; the console text since it was typed."""
        mark = self.type(command)
        return self.run_until("DONE-42\r\n", mark)


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    work = tmp_path_factory.mktemp("faults")
    image = work / "disk.img"
    image.write_bytes(bytes(DISK_BYTES))
    disk = WithheldBlock(Disk(image))
    dumps = work / "vmcores"
    with Machine(shared_kernel_file("tiny-smp-bzImage"),
                 initrd=shared_kernel_file("tiny-initramfs.cpio"), memory="128M", cpus=2,
                 cmdline=CMDLINE, virtio_devices=[disk], dump_on="oops",
                 dump_dir=dumps) as m:
        g = Guest(m, disk, dumps)
        g.run_until(PROMPT.decode(), 0, BOOT_LIMIT_S)
        yield g


@dataclass
class Fault:
    """One provoked report: the console text around it, as read, and what was patched."""

    text: str
    reading: Reading
    address: int
    function: str
    vmcores: list[Path] = field(default_factory=list)

    def report(self, type_: ReportType) -> KernelReport:
        found = [r for r in self.reading.reports if r.type is type_]
        assert found, [(r.type, r.title) for r in self.reading.reports]
        return found[0]


def read(g: Guest, text: str) -> Reading:
    return read_console(text, symbolize=g.machine.symbolize)


def provoke(g: Guest, function: str, code: bytes, command: str,
            bug_entry: bool | None = None) -> Fault:
    """Patch ``function`` with ``code`` (and a __bug_table entry of the kind ``bug_entry``
    says: True a WARN, False a BUG), run ``command`` to the end, undo the patches."""
    text_ = g.machine.kernel_text()
    address = text_.address_of(function)
    patches: list[TextPatch] = []
    before = dumps_of(g)
    try:
        if bug_entry is not None:
            patches.append(text_.claim_bug_entry(address, warning=bug_entry)[1])
        patches.append(text_.patch(address, code))
        text = g.shell(command)
    finally:
        for patch in reversed(patches):
            patch.restore()
    return Fault(text, read(g, text), address, function, sorted(dumps_of(g) - before))


def dumps_of(g: Guest) -> set[Path]:
    """The vmcores written so far (``dump_on="oops"``)."""
    return set(g.dumps.iterdir()) if g.dumps.exists() else set()


def check_lines(fault: Fault, report: KernelReport, first: str, last: str) -> None:
    """The report's line range runs from a line with ``first`` to one with ``last``."""
    lines = fault.text.splitlines()
    assert first in lines[report.first_line - 1], lines[report.first_line - 1]
    assert last in lines[report.last_line - 1], (lines[report.last_line - 1], report.lines)


def check_frames(g: Guest, fault: Fault, report: KernelReport) -> None:
    """Every frame has a symbol; the first is the patched function at its first byte, which
    vmboot's own symbols name as the kernel did; and with the kernel's names replaced by bare
    addresses, vmboot names them all the same (KASLR applied)."""
    names = [f.symbol for f in report.frames]
    assert all(names), names
    assert report.frames[0].offset == 0
    ours = g.machine.symbolize(fault.address)
    assert ours is not None and ours.split("+")[0] == names[0], (ours, names)
    assert [n for n in names if n in SYSCALL_ENTRY] == list(SYSCALL_ENTRY), names
    bare = read(g, bare_addresses(g, "\n".join(report.lines)))
    (again,) = [r for r in bare.reports if r.type is report.type]
    assert [(f.symbol, f.offset) for f in again.frames] == \
        [(f.symbol, f.offset) for f in report.frames]
    assert again.title == report.title


def bare_addresses(g: Guest, text: str) -> str:
    """``text`` with every ``func+0xoff/0xsize`` frame printed as an address only, as a
    kernel without kallsyms prints it."""
    kernel = g.machine.kernel_text()
    first, *rest = text.splitlines()
    out = [first]  # the header stays as printed (a WARNING names its function there)
    for line in rest:
        m = FRAME_LINE.match(line)
        if m is not None:
            address = kernel.address_of(m["symbol"]) + int(m["offset"], 16)
            line = f"{m['head']}[<{address:016x}>]" if "RIP:" not in line else \
                f"{m['head']}0x{address:016x}"
        out.append(line)
    return "\n".join(out)


def check_fail_on(reading: Reading, verdict: Verdict, other: str) -> None:
    assert reading.triggered(parse_fail_on(verdict.value)) == [verdict]
    assert reading.triggered(parse_fail_on(other)) == []


def check_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: Fault,
                     report: KernelReport) -> None:
    """``vmboot report`` on the saved console: exit status 1 and the same report."""
    log = tmp_path / "console.log"
    log.write_text(fault.text)
    assert main(["report", str(log), "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["verdict"] == fault.reading.verdict.value
    assert report.as_dict() in printed["reports"]


# -- hung task ----------------------------------------------------------------------------------
@dataclass
class HungTask:
    fault: Fault
    tasks: list[GuestTask]
    """The guest's tasks as the host read them while dd was blocked."""


@pytest.fixture(scope="module")
def hung_task(guest: Guest) -> HungTask:
    g = guest
    taint = re.search(r"TAINT=(\d+)", g.shell("echo TAINT=$(cat /proc/sys/kernel/tainted)"))
    assert taint is not None
    tainted = int(taint.group(1))
    assert not tainted & TAINT_DIE, "an oops came first: khungtaskd reports nothing after one"
    g.shell("echo 1 > /proc/sys/kernel/hung_task_timeout_secs")
    g.disk.withhold.set()
    try:
        mark = g.type("dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync")
        g.run_until("blocked for more than", mark)
        g.run_until("</TASK>", mark + g.since(mark).index("blocked for more than"))
        tasks = g.machine.tasks()
    finally:
        g.disk.release()
    text = g.run_until("DONE-42\r\n", mark)
    g.shell("echo 120 > /proc/sys/kernel/hung_task_timeout_secs")
    return HungTask(Fault(text, read(g, text), 0, "dd"), tasks)


def test_io_waiting_forever_is_a_hung_task(hung_task: HungTask, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    fault = hung_task.fault
    assert fault.reading.verdict is Verdict.HUNG_TASK
    report = fault.report(ReportType.HUNG_TASK)
    m = re.match(r"INFO: task dd:(\d+) blocked for more than \d+ seconds\.$", report.lines[0])
    assert m is not None, report.lines[0]
    check_lines(fault, report, "INFO: task dd:", "</TASK>")
    names = [f.symbol for f in report.frames]
    assert all(names) and "io_schedule" in names, names
    assert report.title.startswith("INFO: task hung in ")
    assert report.title.removeprefix("INFO: task hung in ") in names, (report.title, names)
    check_fail_on(fault.reading, Verdict.HUNG_TASK, "soft-lockup,oops")
    check_report_cli(tmp_path, capsys, fault, report)
    # the host's view of the same task: blocked (D), its stack through io_schedule
    (dd,) = [t for t in hung_task.tasks if t.comm == "dd"]
    assert dd.pid == int(m.group(1)) and dd.blocked, dd.render()
    assert "io_schedule" in [f.symbol for f in dd.frames], dd.render()
    blocked = render_tasks(hung_task.tasks, blocked_only=True)  # what --tasks --blocked prints
    assert f"task:{'dd':<15} state:D pid:{dd.pid} " in blocked, blocked
    assert "DONE-42" in fault.text  # the write completed once the disk answered


# -- soft lockup --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def soft_lockup(guest: Guest) -> tuple[Fault, HangReport]:
    g = guest
    before = dumps_of(g)
    g.shell("echo 1 > /proc/sys/kernel/watchdog_thresh")
    text_ = g.machine.kernel_text()
    address = text_.address_of("__x64_sys_sethostname")
    patch = text_.patch(address, JMP_SELF)
    try:
        mark = g.type("hostname lockup")
        g.run_until("soft lockup - CPU#", mark)
        g.run_until("</TASK>", mark + g.since(mark).index("soft lockup - CPU#"))
        hang = g.machine.hang_report()
    finally:
        patch.restore()  # the stuck CPU runs the original code and returns
    text = g.run_until("DONE-42\r\n", mark)
    g.shell("echo 10 > /proc/sys/kernel/watchdog_thresh")
    return Fault(text, read(g, text), address, "__x64_sys_sethostname",
                 sorted(dumps_of(g) - before)), hang


def test_a_spinning_syscall_is_a_soft_lockup(guest: Guest, soft_lockup: tuple[Fault, HangReport],
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    fault, hang = soft_lockup
    assert fault.reading.verdict is Verdict.SOFT_LOCKUP
    report = fault.report(ReportType.SOFT_LOCKUP)
    m = re.match(r"watchdog: BUG: soft lockup - CPU#(\d+) stuck for \d+s! \[hostname:\d+\]$",
                 report.lines[0])
    assert m is not None, report.lines[0]
    assert report.title == "BUG: soft lockup in sethostname"
    check_lines(fault, report, "soft lockup - CPU#", "</TASK>")
    check_frames(guest, fault, report)
    check_fail_on(fault.reading, Verdict.SOFT_LOCKUP, "hung-task,warning")
    check_report_cli(tmp_path, capsys, fault, report)
    assert hang.verdict == "lockup" and hang.cpu == int(m.group(1)), \
        hang.render() + "".join(t.render() for t in hang.traces)
    assert hang.function == "__x64_sys_sethostname", hang.render()
    assert fault.vmcores == []  # a soft lockup is no oops (and must not hold the oops watch)


# -- WARN() -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def warning(guest: Guest) -> Fault:
    return provoke(guest, "__x64_sys_sync", UD2 + RETURN_ZERO, "sync; echo status=$?",
                   bug_entry=True)


def test_warn_table_ud2_is_a_warning_and_the_call_returns(
        guest: Guest, warning: Fault, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert warning.reading.verdict is Verdict.WARNING
    report = warning.report(ReportType.WARNING)
    assert report.title == "WARNING in sync"
    assert re.match(r"WARNING: CPU: \d+ PID: \d+ at \S+:\d+ __do_sys_sync\+0x0/", report.lines[0])
    check_lines(warning, report, "WARNING: CPU: ", "---[ end trace")
    check_frames(guest, warning, report)
    check_fail_on(warning.reading, Verdict.WARNING, "oops,bug")
    check_report_cli(tmp_path, capsys, warning, report)
    assert "status=0" in warning.text  # the WARN returned; the patched sync returned 0
    assert warning.vmcores == []       # a warning is no oops


# -- oops ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oops(guest: Guest) -> Fault:
    return provoke(guest, "__x64_sys_sethostname", LOAD_NULL, "hostname vmboot")


def test_null_dereference_is_an_oops(guest: Guest, oops: Fault, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert oops.reading.verdict is Verdict.OOPS
    report = oops.report(ReportType.OOPS)
    assert report.title == "BUG: unable to handle kernel NULL pointer dereference in sethostname"
    assert report.frames[0].symbol == "__x64_sys_sethostname"
    check_lines(oops, report, "BUG: kernel NULL pointer dereference, address: 0000000000000000",
                "---[ end trace")
    assert any(line.startswith("Oops: 0000 [#") for line in report.lines), report.lines
    check_frames(guest, oops, report)
    check_fail_on(oops.reading, Verdict.OOPS, "warning,hung-task")
    check_report_cli(tmp_path, capsys, oops, report)
    assert "Killed" in oops.text and "DONE-42" in oops.text  # the task died, the shell lives


def drgn_stack(core: Path, debug: Path, pid: int) -> list[str]:
    """The function names drgn unwinds for task ``pid`` of ``core`` (see test_vmcore_real
    for why the kernel's address range is set)."""
    try:
        import drgn
        from drgn.helpers.linux.pid import find_task
    except ImportError:
        missing("drgn", "the Python package is not installed (pip install drgn)")
    prog = drgn.Program()
    prog.set_core_dump(str(core))
    prog.load_debug_info([str(debug)])
    kernel = prog.main_module()
    kernel.address_range = (prog.symbol("_stext").address, kernel.address_range[1])
    return [str(frame.name) for frame in prog.stack_trace(find_task(prog, pid))]


def test_oops_writes_a_vmcore_that_drgn_opens(oops: Fault, tiny_smp_vmlinux_debug: Path,
                                              tmp_path: Path) -> None:
    """drgn unwinds the oopsing task from the vmcore written at its first line.

    drgn finds the registers of a CPU in a core without CRASHTIME (one not written by kdump)
    in the NT_PRSTATUS note whose pr_pid is the CPU number + 1, as QEMU writes them; a copy
    of the core whose note carries the task's pid instead loses them (why vmboot keeps
    CPU + 1; crash reads the notes in CPU order and ignores pr_pid on x86_64)."""
    assert [p.name.split(".")[-1] for p in oops.vmcores] == ["oops"], oops.vmcores
    m = re.search(r"CPU: (\d+) PID: (\d+) Comm: hostname", oops.text)
    assert m is not None, oops.text
    cpu, pid = int(m.group(1)), int(m.group(2))
    names = drgn_stack(oops.vmcores[0], tiny_smp_vmlinux_debug, pid)
    assert "__x64_sys_sethostname" in names and "do_syscall_64" in names, names
    by_pid = tmp_path / "vmcore.by-pid"
    shutil.copyfile(oops.vmcores[0], by_pid)
    with open(by_pid, "r+b") as f:
        pid_at = prstatus_offsets(f.read(NOTES_READ))[cpu] + PRSTATUS_PID_OFFSET
        f.seek(pid_at)
        assert int.from_bytes(f.read(4), "little") == cpu + PRSTATUS_PID_CPU_BASE
        f.seek(pid_at)
        f.write(pid.to_bytes(4, "little"))
    with pytest.raises(LookupError, match=f"CPU {cpu}"):
        drgn_stack(by_pid, tiny_smp_vmlinux_debug, pid)


def prstatus_offsets(head: bytes) -> list[int]:
    """File offsets of the NT_PRSTATUS descriptors of an ELF core (from its first bytes)."""
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    found = []
    for i in range(phnum):
        kind, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", head, phoff + i * phentsize)
        if kind != PT_NOTE:
            continue
        pos = offset
        while pos < offset + size:
            namesz, descsz, note_type = struct.unpack_from("<III", head, pos)
            desc = pos + 12 + -(-namesz // 4) * 4
            if note_type == NT_PRSTATUS:
                found.append(desc)
            pos = desc + -(-descsz // 4) * 4
    return found


# -- BUG() --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bug(guest: Guest) -> Fault:
    return provoke(guest, "__x64_sys_sync", UD2, "sync", bug_entry=False)


def test_bug_table_ud2_is_a_kernel_bug(guest: Guest, bug: Fault, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert bug.reading.verdict is Verdict.BUG
    report = bug.report(ReportType.BUG)
    assert report.title == "kernel BUG in sync"
    assert re.match(r"kernel BUG at \S+:\d+!$", report.lines[0]), report.lines[0]
    check_lines(bug, report, "kernel BUG at ", "---[ end trace")
    assert any(line.startswith("invalid opcode: 0000 [#") for line in report.lines)
    check_frames(guest, bug, report)
    check_fail_on(bug.reading, Verdict.BUG, "oops,warning")
    check_report_cli(tmp_path, capsys, bug, report)
    assert "Segmentation fault" in bug.text and "DONE-42" in bug.text
    assert [p.name.split(".")[-1] for p in bug.vmcores] == ["oops"]  # a BUG() is an oops
