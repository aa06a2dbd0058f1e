"""Snapshots of real Linux: boot tiny-bzImage to a busybox shell once, save it at the
prompt, and resume it several times (one after another, and concurrently in threads).

Each restored guest answers a command on its serial console, its clock continues from
the snapshot (``/proc/uptime`` never goes back) and its timers fire (``sleep 1``). The
host memory a restored 256 MiB guest costs is printed (``pytest -s``), and bounded well
below the guest's size, since pages the guest does not touch are never read.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import requires_kvm, shared_kernel_file
from vmboot.errors import SnapshotMismatchError
from vmboot.vmm.console_wait import ConsoleWaiter
from vmboot.vmm.machine import Machine

pytestmark = [pytest.mark.slow, requires_kvm]

CMDLINE = "console=ttyS0 reboot=k panic=-1 vmboot.shell=1"
MEMORY = "256M"
PROMPT = b"/ # "
BOOT_TIMEOUT_S = 600
COMMAND_TIMEOUT_S = 120
CONCURRENT = 3
SEQUENTIAL = 3
UPTIME = re.compile(rb"^(\d+\.\d+) \d+\.\d+\r?$", re.MULTILINE)


@dataclass
class Saved:
    path: Path
    uptime: float
    """The guest's uptime read just before the snapshot."""
    sha256: str


def _machine(waiter: ConsoleWaiter) -> Machine:
    machine = Machine(shared_kernel_file("tiny-bzImage"),
                      initrd=shared_kernel_file("tiny-initramfs.cpio"), cmdline=CMDLINE,
                      memory=MEMORY, console=waiter)
    waiter.attach(machine)
    return machine


def _command(machine: Machine, waiter: ConsoleWaiter, command: bytes) -> bytes:
    machine.push_input(command + b"\n")
    return waiter.run_until(b"\n" + PROMPT, COMMAND_TIMEOUT_S)


def _uptimes(output: bytes) -> list[float]:
    return [float(m.group(1)) for m in UPTIME.finditer(output)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Saved]:
    path = tmp_path_factory.mktemp("linux-snap") / "shell.snap"
    waiter = ConsoleWaiter()
    with _machine(waiter) as machine:
        waiter.run_until(b"VMBOOT-INIT-OK", BOOT_TIMEOUT_S)
        waiter.run_until(PROMPT, BOOT_TIMEOUT_S)
        (uptime,) = _uptimes(_command(machine, waiter, b"cat /proc/uptime"))
        report = machine.snapshot(path)
    print(f"\nsnapshot: {report.memory_bytes_written >> 20} MiB of guest memory stored, "
          f"{report.msrs} MSRs; file {path.stat().st_size >> 20} MiB apparent, "
          f"{path.stat().st_blocks * 512 >> 20} MiB on disk")
    yield Saved(path, uptime, hashlib.sha256(path.read_bytes()).hexdigest())


def _restore_and_ask(saved: Saved, results: dict[int, bytes], key: int) -> None:
    waiter = ConsoleWaiter()
    with _machine(waiter).restore(saved.path) as machine:
        results[key] = _command(machine, waiter, b"echo $((6*7))")


def test_sequential_restores_answer_on_the_console(saved: Saved) -> None:
    results: dict[int, bytes] = {}
    for i in range(SEQUENTIAL):
        _restore_and_ask(saved, results, i)
        assert b"\n42\r\n" in results[i], results[i]


def test_concurrent_restores_answer_on_the_console(saved: Saved) -> None:
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            _restore_and_ask(saved, results, i)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == list(range(CONCURRENT))
    for output in results.values():
        assert b"\n42\r\n" in output, output


def test_the_clock_continues_and_timers_fire(saved: Saved) -> None:
    waiter = ConsoleWaiter()
    with _machine(waiter).restore(saved.path) as machine:
        output = _command(machine, waiter, b"cat /proc/uptime; sleep 1; cat /proc/uptime")
        usage = machine.vm.memory.host_usage() if machine.vm is not None else {}
    before, after = _uptimes(output)
    assert saved.uptime <= before, (saved.uptime, before)
    assert after - before >= 1.0, output  # sleep 1 returned, after at least a second
    rss = usage.get("Rss", 0)
    clean = usage.get("Shared_Clean", 0) + usage.get("Private_Clean", 0)
    print(f"\nuptime at snapshot {saved.uptime:.2f} s, after restore {before:.2f} s, after "
          f"sleep 1 {after:.2f} s; host memory of the restored 256 MiB guest: Rss "
          f"{rss / 2**20:.1f} MiB (Private_Dirty {usage.get('Private_Dirty', 0) / 2**20:.1f}"
          f" MiB, clean file pages {clean / 2**20:.1f} MiB)")
    assert 0 < rss < (256 << 20) // 4


def test_a_changed_command_line_is_refused(saved: Saved) -> None:
    waiter = ConsoleWaiter()
    machine = Machine(shared_kernel_file("tiny-bzImage"),
                      initrd=shared_kernel_file("tiny-initramfs.cpio"), cmdline=CMDLINE + " quiet",
                      memory=MEMORY, console=waiter)
    with pytest.raises(SnapshotMismatchError, match="command line"):
        machine.restore(saved.path)
    assert machine.vm is None


def test_the_snapshot_file_is_never_modified(saved: Saved) -> None:
    """Runs last in this module: every restore above wrote to its guest's memory."""
    assert hashlib.sha256(saved.path.read_bytes()).hexdigest() == saved.sha256
