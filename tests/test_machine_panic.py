"""A kernel panic ends the run as PANIC, with a symbolised trace of the panic path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import requires_kvm, shared_kernel_file
from vmboot.devices.console import ConsoleOutput
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.machine import PANIC_END, PANIC_START, _PanicWatch


class _FakeMachine:
    def __init__(self) -> None:
        self.stops: list[tuple[ExitReason, str]] = []

    def request_stop(self, reason: ExitReason, detail: str = "") -> None:
        self.stops.append((reason, detail))


def test_panic_watch_stops_at_the_end_of_panic_line() -> None:
    fake = _FakeMachine()
    console = ConsoleOutput()
    watch = _PanicWatch(fake)  # type: ignore[arg-type]
    console.line_watcher = watch
    text = (b"[    1.0] booting\n[   13.2] " + PANIC_START + b": sysrq triggered crash\n"
            b"[   13.3] Call Trace:\n[   14.2] " + PANIC_END + b" - not syncing: x ]---\n")
    for i, b in enumerate(text):
        console.put(b)
        if i == text.index(PANIC_END):
            assert fake.stops == [], "stopped before the end line was complete"
    assert watch.message == "Kernel panic - not syncing: sysrq triggered crash"
    assert fake.stops == [(ExitReason.PANIC, watch.message)]
    assert bytes(console.data) == text  # watching changes nothing in the capture


def test_no_panic_no_stop() -> None:
    fake = _FakeMachine()
    console = ConsoleOutput()
    console.line_watcher = _PanicWatch(fake)  # type: ignore[arg-type]
    for b in b"Kernel panics are rare\n" + PANIC_END + b"\n" + b"x" * 5000 + b"\n":
        console.put(b)
    assert fake.stops == []


@pytest.mark.slow
@requires_kvm
def test_run_trace_on_panic_symbolises_from_the_image() -> None:
    """panic=-1 resets from inside panic(); the trace is taken at that reset (no vmlinux)."""
    kernel = shared_kernel_file("tiny-bzImage")
    initrd = shared_kernel_file("tiny-initramfs-min.cpio")
    out = subprocess.run(
        [sys.executable, "-m", "vmboot", "run", str(kernel), "--initrd", str(initrd), "-m", "64M",
         "--append", "console=ttyS0 reboot=k panic=-1 quiet vmboot.panic=1", "--trace",
         "--timeout", "300"],
        capture_output=True, text=True, timeout=400)
    print(out.stderr)
    assert out.returncode == 1, out.stderr
    assert "panic: Kernel panic - not syncing: sysrq triggered crash" in out.stderr
    trace = out.stderr[out.stderr.index("Call Trace:"):]
    for fn in ("emergency_restart", "panic+", "sysrq_handle_crash", "write_sysrq_trigger"):
        assert fn in trace, fn
    assert "VMBOOT-INIT-OK" in out.stdout
