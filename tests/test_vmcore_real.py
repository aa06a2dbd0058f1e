"""vmcores of real tiny-smp guests, opened by drgn and crash, and read back by vmboot.

Three guests, each booted once per module: a panicked guest (``dump_on="panic"``) serves
drgn, crash and ``vmboot trace``; an idle guest under ``vmboot run`` gets a SIGUSR2 dump and
a timeout dump; QEMU TCG guests (tiny-smp, and Debian's cloud kernel when it can be had) are dumped with
``dump-guest-memory`` for the reader.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import missing, require_kvm, require_tool, requires_kvm, shared_kernel_file
from qmp_client import qmp
from vmboot.debug import capture_stack_trace
from vmboot.debug.core_reader import read_core
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.machine import Machine, RunResult

pytestmark = [pytest.mark.slow]

PANIC_CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet vmboot.panic=1"
HOLD_CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet vmboot.hold=1"
PANIC_LINE = "Kernel panic - not syncing: sysrq triggered crash"
TRACE_LINE = re.compile(r"^\[[ \d.]+\]  (\?)? ?([\w.]+)\+0x[0-9a-f]+/0x[0-9a-f]+$")
CRASHING_TASK = re.compile(r"CPU: (\d+) PID: (\d+) Comm: (\S+)")


def crashing_cpu(console: str) -> int:
    """The CPU the kernel says panicked (``CPU: N PID: P Comm: C``)."""
    m = CRASHING_TASK.search(console)
    assert m is not None, console[-2000:]
    return int(m.group(1))


def printed_call_trace(console: str) -> list[str]:
    """The reliable functions of the first call trace the kernel printed (no ``?`` lines)."""
    names: list[str] = []
    started = False
    for line in console.splitlines():
        if "Call Trace:" in line:
            started = True
            continue
        if started:
            m = TRACE_LINE.match(line.rstrip())
            if m is None:
                if names:
                    break
                continue
            if not m.group(1):
                names.append(m.group(2))
    return names


def assert_same_trace(ours: list[str], printed: list[str]) -> None:
    """From ``panic`` on, our unwind names the functions the kernel printed, in order
    (the kernel's last frame is its entry stub, which differs with how the syscall came in)."""
    assert "panic" in printed and "panic" in ours, (ours, printed)
    theirs = printed[printed.index("panic"):-1]
    mine = ours[ours.index("panic"):ours.index("panic") + len(theirs)]
    assert mine == theirs, (ours, printed)


@dataclass
class Panicked:
    result: RunResult
    vmcore: Path


@pytest.fixture(scope="module")
def panicked(tmp_path_factory: pytest.TempPathFactory) -> Panicked:
    require_kvm()
    kernel = shared_kernel_file("tiny-smp-bzImage")
    initrd = shared_kernel_file("tiny-initramfs.cpio")
    out = tmp_path_factory.mktemp("vmcores")
    with Machine(kernel, initrd=initrd, cmdline=PANIC_CMDLINE, memory="128M",
                 dump_on="panic", dump_dir=out) as machine:
        result = machine.run(timeout=400)
    assert result.exit.reason is ExitReason.PANIC, result.exit.one_line()
    assert len(result.vmcores) == 1, result.notes
    return Panicked(result, result.vmcores[0])


def import_drgn() -> Any:
    """The drgn module (a prerequisite: skipped, or failed under CI, without it)."""
    try:
        import drgn
    except ImportError:
        missing("drgn", "the Python package is not installed (pip install drgn)")
    return drgn


def drgn_program(core: Path, debug: Path) -> Any:
    """drgn on ``core`` with the DWARF-only ``debug`` file.

    drgn takes a file without a PROGBITS ``.init.text`` for something other than a vmlinux
    and then spans the kernel's address range from its lowest segment, the per-CPU one at 0;
    per-CPU offsets then fall inside the range and get the KASLR offset added. Starting the
    range at ``_stext`` (as drgn does for a real vmlinux) puts them back outside.
    """
    drgn = import_drgn()
    prog = drgn.Program()
    prog.set_core_dump(str(core))
    prog.load_debug_info([str(debug)])
    kernel = prog.main_module()
    kernel.address_range = (prog.symbol("_stext").address, kernel.address_range[1])
    return prog


@requires_kvm
def test_panic_writes_a_sparse_vmcore_with_the_kernels_vmcoreinfo(panicked: Panicked) -> None:
    st = panicked.vmcore.stat()
    assert st.st_size > 128 << 20
    assert st.st_blocks * 512 < 96 << 20, "untouched guest RAM was written"
    assert any("VMCOREINFO the guest kernel's vmcoreinfo_data" in n
               for n in panicked.result.notes), panicked.result.notes
    with read_core(panicked.vmcore) as core:
        assert core.vmcoreinfo is not None
        assert core.vmcoreinfo["OSRELEASE"] == "6.1.192"
        printed_offset = re.search(r"Kernel Offset: (0x[0-9a-f]+)", panicked.result.console_text)
        assert printed_offset is not None
        assert core.kaslr_offset == int(printed_offset.group(1), 16)


@requires_kvm
def test_vmboot_reads_its_vmcore_back_to_the_printed_trace(panicked: Panicked) -> None:
    with read_core(panicked.vmcore) as core:
        frames = capture_stack_trace(core.vm.vcpus[crashing_cpu(panicked.result.console_text)],
                                     kernel=shared_kernel_file("tiny-smp-bzImage"),
                                     slide=core.kaslr_offset or 0, max_frames=32)
    assert_same_trace([f.symbol for f in frames], printed_call_trace(panicked.result.console_text))


@requires_kvm
def test_drgn_opens_the_vmcore(panicked: Panicked, tiny_smp_vmlinux_debug: Path) -> None:
    prog = drgn_program(panicked.vmcore, tiny_smp_vmlinux_debug)
    from drgn.helpers.linux.pid import find_task, for_each_task

    assert prog["init_task"].comm.string_() == b"swapper/0"
    tasks = {t.pid.value_(): t.comm.string_() for t in for_each_task(prog)}
    assert tasks[1] == b"init" and tasks[2] == b"kthreadd"
    crashing = CRASHING_TASK.search(panicked.result.console_text)
    assert crashing is not None
    crashed = prog.crashed_thread()
    assert crashed.tid == int(crashing.group(2))
    assert crashed.object.comm.string_() == crashing.group(3).encode()
    names = [frame.name for frame in crashed.stack_trace()]
    assert "panic" in names and "sysrq_handle_crash" in names, names
    assert names == [frame.name for frame in prog.stack_trace(find_task(prog, crashed.tid))]


def run_crash(core: Path, debug: Path, commands: list[str]) -> str:
    require_tool("crash", "crash")
    # --kaslr auto: crash turns KASLR handling on only for kernels with module symbols.
    out = subprocess.run(
        ["crash", "-s", "--kaslr", "auto", str(shared_kernel_file("tiny-smp-vmlinux")),
         str(debug), str(core)],
        input="\n".join([*commands, "quit"]) + "\n", capture_output=True, text=True,
        timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@requires_kvm
def test_crash_opens_the_vmcore(panicked: Panicked, tiny_smp_vmlinux_debug: Path) -> None:
    out = run_crash(panicked.vmcore, tiny_smp_vmlinux_debug, ["bt", "ps", "log"])
    assert re.search(r"#\d+ \[[0-9a-f]+\] panic at ", out), out
    assert "__handle_sysrq" in out
    assert re.search(r">\s+1\s+0\s+0\s+[0-9a-f]+\s+RU\s.*\binit\b", out), out
    assert PANIC_LINE in out


# -- an idle guest: a dump on SIGUSR2 and one at the timeout ----------------------------------
@dataclass
class IdleRun:
    status: int
    stderr: str
    dumps: list[Path]


@pytest.fixture(scope="module")
def idle_run(tmp_path_factory: pytest.TempPathFactory) -> IdleRun:
    require_kvm()
    kernel = shared_kernel_file("tiny-smp-bzImage")
    initrd = shared_kernel_file("tiny-initramfs-min.cpio")
    out = tmp_path_factory.mktemp("idle")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "vmboot", "run", str(kernel), "--initrd", str(initrd),
         "-m", "128M", "--append", HOLD_CMDLINE, "--dump-on", "timeout", "--dump-dir",
         str(out), "--timeout", "120"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            if b"VMBOOT-INIT-OK" in raw:
                time.sleep(1)
                proc.send_signal(signal.SIGUSR2)
                break
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return IdleRun(proc.returncode, err.decode(errors="replace"), sorted(out.iterdir()))


@requires_kvm
def test_sigusr2_and_timeout_write_vmcores(idle_run: IdleRun) -> None:
    assert idle_run.status == 124, idle_run.stderr
    assert [p.name for p in idle_run.dumps] == ["vmcore.1.demand", "vmcore.2.timeout"], \
        idle_run.stderr


@requires_kvm
def test_drgn_reads_the_timeout_vmcore(idle_run: IdleRun, tiny_smp_vmlinux_debug: Path) -> None:
    import_drgn()
    from drgn.helpers.linux.pid import for_each_task

    for path in idle_run.dumps:
        prog = drgn_program(path, tiny_smp_vmlinux_debug)
        assert prog["init_task"].comm.string_() == b"swapper/0"
        tasks = {t.pid.value_(): t.comm.string_() for t in for_each_task(prog)}
        assert tasks[1] == b"init"
        idle = [frame.name for frame in prog.stack_trace(prog["init_task"].address_of_())]
        assert "do_idle" in idle or "cpu_startup_entry" in idle, idle


# -- QEMU dump-guest-memory of the same kernel --------------------------------------------------
@dataclass
class QemuDump:
    core: Path
    console: str
    kernel: Path


def qemu_kernel(name: str) -> Path:
    """tiny-smp, or Debian's cloud kernel (a distribution kernel with no debug package)."""
    if name == "tiny-smp":
        return shared_kernel_file("tiny-smp-bzImage")
    from debian_kernel import debian_kernel, skip_reason

    path = debian_kernel()
    if path is None:
        missing("the Debian cloud kernel", skip_reason())
    return path


@pytest.fixture(scope="module", params=["tiny-smp", "debian"])
def qemu_dump(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuDump]:
    qemu = require_tool("qemu-system-x86_64", "qemu-system-x86")
    kernel = qemu_kernel(request.param)
    work = tmp_path_factory.mktemp("qemu")
    serial, sock_path, core = work / "serial.log", work / "qmp.sock", work / "qemu.core"
    proc = subprocess.Popen(
        [qemu, "-M", "microvm,acpi=off", "-accel", "tcg", "-smp", "2", "-m", "128",
         "-display", "none", "-monitor", "none", "-no-reboot",
         "-kernel", str(kernel),
         "-initrd", str(shared_kernel_file("tiny-initramfs.cpio")),
         "-append", "console=ttyS0 panic=0 vmboot.panic=1",
         "-qmp", f"unix:{sock_path},server=on,wait=off", "-serial", f"file:{serial}"])
    try:
        deadline = time.monotonic() + 300
        while "---[ end Kernel panic" not in (serial.read_text(errors="replace")
                                               if serial.exists() else ""):
            assert time.monotonic() < deadline, "QEMU guest did not panic"
            assert proc.poll() is None, "QEMU exited"
            time.sleep(0.5)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(sock_path))
            sock.makefile("r").readline()  # greeting
            assert "return" in qmp(sock, "qmp_capabilities")
            reply = qmp(sock, "dump-guest-memory", paging=False, protocol=f"file:{core}")
            assert "return" in reply, reply
        yield QemuDump(core, serial.read_text(errors="replace"), kernel)
    finally:
        proc.kill()
        proc.wait()


def test_qemu_dump_reads_back_to_the_printed_trace(qemu_dump: QemuDump) -> None:
    with read_core(qemu_dump.core) as core:
        assert core.writer == "qemu"
        assert len(core.vm.vcpus) == 2
        frames = capture_stack_trace(core.vm.vcpus[crashing_cpu(qemu_dump.console)],
                                     kernel=qemu_dump.kernel,
                                     slide="auto", max_frames=32)
    assert_same_trace([f.symbol for f in frames], printed_call_trace(qemu_dump.console))


def test_vmboot_trace_cli_on_a_qemu_dump(qemu_dump: QemuDump) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vmboot", "trace", str(qemu_dump.core), "--kernel",
         str(qemu_dump.kernel), "--json"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["writer"] == "qemu"
    names = [f["symbol"] for f in report["cpus"][crashing_cpu(qemu_dump.console)]["frames"]]
    assert_same_trace(names, printed_call_trace(qemu_dump.console))
