"""The terminal as serial input: raw-ish mode while running, restored afterwards, keys forwarded."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

import pytest

from conftest import requires_kvm, shared_kernel_file
from vmboot.cli.terminal import TerminalInput


def test_terminal_mode_forwarding_and_restore() -> None:
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        got: list[bytes] = []
        with TerminalInput(got.append, fd=slave) as term:
            assert term.active
            mode = termios.tcgetattr(slave)
            assert not mode[3] & termios.ICANON and not mode[3] & termios.ECHO
            assert mode[3] & termios.ISIG  # Ctrl-C still reaches vmboot
            assert not mode[0] & termios.ICRNL  # Enter arrives as CR, like a serial terminal
            os.write(master, b"ls\r")
            deadline = time.monotonic() + 5
            while b"".join(got) != b"ls\r" and time.monotonic() < deadline:
                time.sleep(0.01)
        assert b"".join(got) == b"ls\r"
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_an_ignored_sigint_is_taken_back_while_the_terminal_is_ours() -> None:
    """Inherited SIG_IGN would leave Ctrl-C dead in a terminal without line editing."""
    master, slave = pty.openpty()
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with TerminalInput(lambda b: None, fd=slave) as term:
            assert term.active
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        # a handler the caller chose is left alone
        def mine(signum: int, frame: object) -> None:
            pass
        signal.signal(signal.SIGINT, mine)
        with TerminalInput(lambda b: None, fd=slave):
            assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, saved)
        os.close(master)
        os.close(slave)


def test_not_a_terminal_is_a_no_op(tmp_path: object) -> None:
    r, w = os.pipe()
    try:
        with TerminalInput(lambda b: None, fd=r) as term:
            assert not term.active
    finally:
        os.close(r)
        os.close(w)


def _read_until(fd: int, needle: bytes, timeout: float, sink: bytearray) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return needle in sink
            if not chunk:
                break
            sink.extend(chunk)
            if needle in sink:
                return True
    return needle in sink


@pytest.mark.slow
@requires_kvm
def test_interactive_shell_in_the_guest() -> None:
    """Type into a busybox shell in the guest through vmboot's terminal, then reboot it."""
    kernel = shared_kernel_file("tiny-bzImage")
    initrd = shared_kernel_file("tiny-initramfs.cpio")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmboot", "run", str(kernel), "--initrd", str(initrd), "-m", "64M",
         "--timeout", "400", "--append", "console=ttyS0 reboot=k panic=-1 quiet vmboot.shell=1"],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen = bytearray()
    try:
        assert _read_until(master, b"VMBOOT-INIT-OK", 300, seen), seen[-2000:]
        time.sleep(2)  # let the shell print its prompt
        os.write(master, b"echo hello-$((6*7))\r")
        assert _read_until(master, b"hello-42", 120, seen), seen[-2000:]
        os.write(master, b"reboot -f\r")
        assert proc.wait(timeout=200) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@requires_kvm
@pytest.mark.parametrize("inherited", [signal.SIG_DFL, signal.SIG_IGN],
                         ids=["sigint-default", "sigint-ignored"])
def test_ctrl_c_exits_130_and_restores_the_terminal(inherited: signal.Handlers) -> None:
    """Ctrl-C on the controlling terminal interrupts KVM_RUN: status 130, terminal as before.

    Also when vmboot starts with SIGINT ignored, as a shell script's background job does
    (the case that once made this test depend on how pytest itself was started).
    """
    import fcntl

    kernel = shared_kernel_file("tiny-bzImage")
    initrd = shared_kernel_file("tiny-initramfs-min.cpio")
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        signal.signal(signal.SIGINT, inherited)

    proc = subprocess.Popen(
        [sys.executable, "-m", "vmboot", "run", str(kernel), "--initrd", str(initrd), "-m", "64M"],
        stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_tty)
    seen = bytearray()
    try:
        # wait until the guest is printing (the terminal is in vmboot's mode by then)
        assert _read_until(master, b"Linux version", 120, seen), seen[-2000:]
        assert termios.tcgetattr(slave) != before
        os.write(master, b"\x03")
        assert proc.wait(timeout=60) == 130
        _read_until(master, b"interrupted", 5, seen)
        assert b"vmboot run: interrupted" in seen
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def test_stdin_without_a_descriptor_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("typed"))
    with TerminalInput(lambda b: None) as term:
        assert not term.active
