"""Commands writing straight to the agent's virtio-console output ports, on a real guest (slow).

One boot of tiny-smp-bzImage with two vCPUs and the agent image on virtio-console serves
every check: the command's fd 1 and 2 are the output ports, no trailing byte is lost when
the exit status follows the last write at once (many short commands in a row, each output
checked exactly), 2,000,000 bytes arrive exactly, a stalled reader makes the command
wait instead of losing bytes, stdin streams from a pipe that never closes, and a time
limit or a signal leaves the next command's output clean. One more boot runs
``yes | vmboot exec -- head -n 3`` through the CLI.

Each test prints what it measured (``pytest -s``); no assertion involves a time.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import requires_kvm, shared_kernel_file
from endless_pipe import endless_pipe
from vmboot.agent.client import StdinSource
from vmboot.agent.protocol import OutputPath

pytestmark = [pytest.mark.slow, requires_kvm]

LIMIT = 900.0
"""Seconds the boot, or any one command, may take before the test gives up (a hang)."""
SH = "/bin/sh"
BULK = 2_000_000
STALL_SECONDS = 10.0
"""How long the stalled reader sleeps on its first chunk (the guest writes 3 MB meanwhile)."""


@pytest.fixture(scope="module")
def machine(busybox: Path) -> Iterator[object]:
    from vmboot.execute.image import agent_initramfs
    from vmboot.execute.layout import AGENT_CMDLINE
    from vmboot.vmm.machine import Machine

    kernel = shared_kernel_file("tiny-smp-bzImage")
    with Machine(kernel, initrd=agent_initramfs([], busybox), cmdline=AGENT_CMDLINE,
                 cpus=2, agent=True) as m:
        print(f"\nagent on virtio-console: {m.wait_agent(LIMIT)}")
        yield m


def _run(machine: object, script: str, stdin: StdinSource = None,
         timeout: float = LIMIT) -> object:
    from vmboot.vmm.machine import Machine

    assert isinstance(machine, Machine)
    return machine.exec([SH, "-c", script], {"PATH": "/bin"}, stdin=stdin, timeout=timeout)


def test_the_command_writes_to_the_output_ports_themselves(machine: object) -> None:
    from vmboot.agent.client import CommandResult

    result = _run(machine, "readlink /proc/self/fd/1; readlink /proc/self/fd/2 >&2")
    assert isinstance(result, CommandResult)
    print(f"\nfd 1 -> {result.stdout!r}, fd 2 -> {result.stderr!r}")
    assert result.output is OutputPath.PORTS
    assert result.stdout.startswith(b"/dev/vport") and result.stderr.startswith(b"/dev/vport")
    assert result.stdout != result.stderr


def test_many_short_commands_lose_no_trailing_byte(machine: object) -> None:
    """Each command's last write comes just before its exit: the host must take the
    output ports' buffers before it reports the status."""
    from vmboot.agent.client import CommandResult

    for n in range(60):
        result = _run(machine, f"echo -n out{n}; echo -n err{n} >&2; exit {n % 5}")
        assert isinstance(result, CommandResult)
        assert (result.stdout, result.stderr, result.exit_status) == (
            f"out{n}".encode(), f"err{n}".encode(), n % 5), n


def test_a_large_last_write_just_before_exit_arrives_whole(machine: object) -> None:
    from vmboot.agent.client import CommandResult

    for size in (1, 4095, 32768, 32769, 300_000):
        result = _run(machine, f"head -c {size} /dev/zero | tr '\\0' x; exit 3")
        assert isinstance(result, CommandResult)
        assert (len(result.stdout), result.exit_status) == (size, 3), size
        assert result.stdout == b"x" * size


def test_two_million_bytes_arrive_exactly(machine: object) -> None:
    from vmboot.agent.client import CommandResult

    result = _run(machine, f"head -c {BULK} /dev/urandom | tee /tmp/bulk; md5sum /tmp/bulk >&2")
    assert isinstance(result, CommandResult)
    assert len(result.stdout) == BULK and result.exit_status == 0
    assert hashlib.md5(result.stdout).hexdigest().encode() in result.stderr


def test_stdin_streams_from_a_pipe_that_never_closes(machine: object) -> None:
    """``yes | vmboot exec -- head -n 3`` through Machine.exec: the pipe stays open and
    full, the command reads three lines and exits, and so does the run."""
    from vmboot.agent.client import CommandResult

    with endless_pipe() as stdin:
        result = _run(machine, "head -n 3", stdin=stdin)
    assert isinstance(result, CommandResult)
    assert (result.exit_status, result.stdout, result.timed_out) == (0, b"y\n" * 3, False)


def test_300_kb_of_streamed_stdin_arrive_exactly(machine: object) -> None:
    from vmboot.agent.client import CommandResult

    data = os.urandom(300_000)
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as w:
            w.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        with os.fdopen(read_end, "rb", buffering=0) as stdin:
            result = _run(machine, "md5sum", stdin=stdin)
    finally:
        writer.join(timeout=60)
    assert isinstance(result, CommandResult)
    assert result.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


def test_a_time_limit_and_a_signal_leave_the_next_output_clean(machine: object) -> None:
    from vmboot.agent.client import CommandResult
    from vmboot.vmm.machine import Machine

    assert isinstance(machine, Machine)
    slow = _run(machine, "echo started; exec sleep 1000", timeout=5)
    assert isinstance(slow, CommandResult)
    assert slow.timed_out and slow.stdout == b"started\n"

    def on_stdout(data: bytes) -> None:
        if b"ready" in data:
            machine.exec_signal(signal.SIGINT)

    interrupted = machine.exec([SH, "-c", "echo ready; exec sleep 1000"], {"PATH": "/bin"},
                               on_stdout=on_stdout, timeout=LIMIT)
    assert (interrupted.signal, interrupted.timed_out) == (signal.SIGINT, False)
    after = _run(machine, "echo clean")
    assert isinstance(after, CommandResult)
    assert (after.stdout, after.stderr, after.exit_status) == (b"clean\n", b"", 0)


def test_yes_into_vmboot_exec_head_prints_three_lines_and_ends() -> None:
    """``yes | vmboot exec -- head -n 3``: the CLI streams its stdin, which never ends."""
    import subprocess
    import sys

    kernel = shared_kernel_file("tiny-bzImage")
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        done = subprocess.run([sys.executable, "-m", "vmboot", "exec", "--kernel", str(kernel),
                               "--timeout", str(int(LIMIT)), "--", "head", "-n", "3"],
                              stdin=yes.stdout, capture_output=True, timeout=LIMIT + 60,
                              check=False)
    finally:
        yes.kill()
        yes.wait()
    print(f"\nyes | vmboot exec -- head -n 3: status {done.returncode}, {done.stdout!r}")
    assert (done.returncode, done.stdout) == (0, b"y\n" * 3), done.stderr[-2000:]


def test_a_stalled_reader_makes_the_command_wait_and_loses_nothing(machine: object) -> None:
    """The host's reader stalls on the first chunk for longer than the command takes to
    write more than the output queue (64 buffers of 32 KiB) and the socket hold: the host
    stops taking buffers, the command's writes block (the driver waits for used buffers),
    and every byte arrives in order once the reader goes on."""
    import time

    from vmboot.vmm.machine import Machine

    assert isinstance(machine, Machine)
    got = bytearray()

    def stalled(data: bytes) -> None:
        if not got:
            time.sleep(STALL_SECONDS)
        got.extend(data)

    size = 3_000_000
    result = machine.exec([SH, "-c", f"head -c {size} /dev/urandom >/tmp/stall; "
                           "md5sum /tmp/stall >&2; cat /tmp/stall"], {"PATH": "/bin"},
                          on_stdout=stalled, timeout=LIMIT)
    print(f"\nstalled reader: {len(got)} bytes, guest md5 {result.stderr[:32]!r}")
    assert result.exit_status == 0 and len(got) == size
    assert hashlib.md5(bytes(got)).hexdigest().encode() == result.stderr.split()[0]
