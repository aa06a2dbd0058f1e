"""The host's root as the guest's root, commands through the guest agent (slow: one
module-scoped boot of tiny-smp-bzImage serves the Machine.exec checks; the CLI check boots
once more through ``vmboot exec --rootfs /``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, requires_kvm, shared_kernel_file
from vmboot.vmm.machine import Machine

pytestmark = [pytest.mark.slow, requires_kvm]

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
READY_SECONDS = 400
COMMAND_SECONDS = 120


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    kernel = shared_kernel_file("tiny-smp-bzImage")
    from test_vhost_user import virtiofsd_or_skip

    virtiofsd_or_skip()
    console = bytearray()
    with Machine(kernel, rootfs="/", memory="512M", console=console.extend) as m:
        m.exec(["/bin/true"], ENV, timeout=COMMAND_SECONDS, ready_timeout=READY_SECONDS)
        yield m


def test_host_python_runs_in_the_guest(machine: Machine) -> None:
    result = machine.exec(["/usr/bin/python3", "-c", "print(6*7)"], ENV, timeout=COMMAND_SECONDS)
    assert (result.exit_status, result.stdout, result.stderr) == (0, b"42\n", b"")


def test_exit_status_and_stdin(machine: Machine) -> None:
    assert machine.exec(["/bin/sh", "-c", "exit 7"], ENV, timeout=COMMAND_SECONDS).exit_status == 7
    piped = machine.exec(["/bin/cat"], ENV, stdin=b"bytes for cat\n" * 1000,
                         timeout=COMMAND_SECONDS)
    assert piped.stdout == b"bytes for cat\n" * 1000


def test_it_is_the_hosts_tree_read_only_with_writable_tmpfs(machine: Machine,
                                                              tmp_path: Path) -> None:
    host_file = Path("/etc/os-release").read_bytes()
    guest = machine.exec(["/bin/cat", "/etc/os-release"], ENV, timeout=COMMAND_SECONDS)
    assert guest.stdout == host_file
    script = ("touch /etc/vmboot-must-not-exist; echo rc=$?; "
              "for d in /tmp /run /var/tmp; do echo x > $d/w && echo $d-ok; done; pwd")
    out = machine.exec(["/bin/sh", "-c", script], ENV, cwd="/usr/share",
                       timeout=COMMAND_SECONDS)
    assert b"Read-only file system" in out.stderr and b"rc=1" in out.stdout
    assert out.stdout.endswith(b"/tmp-ok\n/run-ok\n/var/tmp-ok\n/usr/share\n")
    assert not os.path.exists("/etc/vmboot-must-not-exist")
    mounts = machine.exec(["/bin/cat", "/proc/mounts"], ENV, timeout=COMMAND_SECONDS).stdout
    assert b" / virtiofs ro" in mounts
    for where in (b"/proc proc", b"/sys sysfs", b"/dev devtmpfs", b"/tmp tmpfs"):
        assert where in mounts, mounts


def test_fifty_commands_each_status_right(machine: Machine) -> None:
    for n in range(50):
        result = machine.exec(["/bin/sh", "-c", f"echo run {n}; exit {n % 5}"], ENV,
                              timeout=COMMAND_SECONDS)
        assert (result.exit_status, result.stdout) == (n % 5, f"run {n}\n".encode())


def test_timeout_kills_the_command_and_the_guest_stays_usable(machine: Machine) -> None:
    stuck = machine.exec(["/bin/sleep", "1000"], ENV, timeout=3)
    assert stuck.timed_out and stuck.signal == signal.SIGKILL
    after = machine.exec(["/bin/echo", "still here"], ENV, timeout=COMMAND_SECONDS)
    assert (after.exit_status, after.stdout) == (0, b"still here\n")


def test_a_signal_from_the_host_reaches_the_command(machine: Machine) -> None:
    timer = threading.Timer(3.0, machine.exec_signal, (signal.SIGINT,))
    timer.start()
    try:
        result = machine.exec(["/bin/sleep", "1000"], ENV, timeout=COMMAND_SECONDS)
    finally:
        timer.cancel()
    assert (result.signal, result.timed_out) == (signal.SIGINT, False)


def test_death_by_signal(machine: Machine) -> None:
    result = machine.exec(["/bin/sh", "-c", "kill -TERM $$"], ENV, timeout=COMMAND_SECONDS)
    assert (result.exit_status, result.signal) == (None, signal.SIGTERM)


HOST_DIR = "/usr"


def test_vmboot_exec_rootfs_cli() -> None:
    kernel = shared_kernel_file("tiny-smp-bzImage")
    code = ("import sys, os; print(6*7); print(os.getcwd()); "
            "sys.stdout.write(sys.stdin.read()); sys.exit(7)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "vmboot", "exec", "--kernel", str(kernel), "--rootfs", "/",
         "--", "python3", "-c", code],
        # From a directory the guest keeps (not under /tmp, /run or /var/tmp, which it replaces
        # with tmpfs), wherever this checkout is.
        input=b"piped into vmboot exec\n", capture_output=True, cwd=HOST_DIR, env=env,
        timeout=READY_SECONDS + COMMAND_SECONDS, check=False)
    assert proc.returncode == 7, proc.stderr.decode(errors="replace")[-2000:]
    assert proc.stdout == f"42\n{HOST_DIR}\npiped into vmboot exec\n".encode()

