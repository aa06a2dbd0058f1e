"""Stack traces of a real Linux guest (the tiny 6.1 kernel) under KVM: the idle loop, and a panic.

Slow (each boot takes 15-40 s where /dev/kvm emulates guest ring-0 code) and needs
/dev/kvm and the shared test kernels.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from conftest import SHARED_KERNELS, require
from vmboot.debug import capture_stack_trace, clear_symbol_cache, format_trace, kaslr_slide
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.debug.symbol_sources import load_symbols
from vmboot.hv.registers import GENERAL_REGISTERS

if TYPE_CHECKING:
    from vmboot.vmm.machine import Machine

BZIMAGE = SHARED_KERNELS / "tiny-bzImage"
VMLINUX = SHARED_KERNELS / "tiny-vmlinux"
INITRD = SHARED_KERNELS / "tiny-initramfs-min.cpio"
BASE_CMDLINE = "console=ttyS0 reboot=k quiet"
BOOT_LIMIT_S = 240.0
RUN_SLICE_S = 5.0

pytestmark = [pytest.mark.slow, pytest.mark.kvm]


def _machine_class() -> type[Machine]:
    for path in (BZIMAGE, VMLINUX, INITRD):
        require(path.exists(), f"shared test kernel {path.name}", f"{path} is missing")
    from vmboot.vmm.machine import Machine

    return Machine


def _run_until(machine: Machine, marker: bytes) -> bytes:
    """Run in slices until ``marker`` is on the console (the guest keeps running after it)."""
    deadline = time.monotonic() + BOOT_LIMIT_S
    console = b""
    while time.monotonic() < deadline:
        result = machine.run(timeout=RUN_SLICE_S)
        console = result.console
        if marker in console:
            return console
        if result.exit.reason.name != "TIMEOUT":
            pytest.fail(f"guest stopped ({result.exit}) before {marker!r}; console:\n"
                        f"{console.decode(errors='replace')[-3000:]}")
    pytest.fail(f"no {marker!r} within {BOOT_LIMIT_S} s; console:\n"
                f"{console.decode(errors='replace')[-3000:]}")


def test_idle_guest_trace_shows_the_idle_loop() -> None:
    machine_cls = _machine_class()
    clear_symbol_cache()
    with machine_cls(BZIMAGE, initrd=INITRD, cmdline=f"{BASE_CMDLINE} panic=-1 vmboot.hold=1",
                     memory="64M") as m:
        _run_until(m, b"VMBOOT-INIT-OK")
        m.run(timeout=1.0)  # let init settle into its idle wait
        assert m.vcpu is not None
        frames = capture_stack_trace(m.vcpu, vmlinux=VMLINUX)
        names = [f.symbol for f in frames]
        print(format_trace(frames, m.vcpu.get_registers(GENERAL_REGISTERS)))
        # default_idle itself is inlined into arch_cpu_idle in this build; default_idle_call is not.
        assert any(n.startswith("default_idle") for n in names), names
        assert {"do_idle", "cpu_startup_entry"} <= set(names), names
        assert names[-1] == "secondary_startup_64", names  # the walk reached the bottom cleanly
        # The same trace from the bzImage's own kallsyms, and with the slide auto-detected.
        # (kallsyms also lists asm labels that .symtab has without a size, such as
        # secondary_startup_64_no_verify, so the bottom frame may be named differently.)
        from_kallsyms = capture_stack_trace(m.vcpu, kernel=BZIMAGE)
        assert [f.pc for f in from_kallsyms] == [f.pc for f in frames]
        assert [f.symbol for f in from_kallsyms][:-1] == names[:-1]
        assert [f.symbol for f in capture_stack_trace(m.vcpu, vmlinux=VMLINUX, slide="auto")] == names
        space = GuestAddressSpace.from_vcpu(m.vcpu)
        assert kaslr_slide(load_symbols(vmlinux=VMLINUX), space) == 0  # RANDOMIZE_BASE is off


def test_panicked_guest_trace_shows_sysrq_crash_and_panic() -> None:
    """vmboot's automatic trace: the run stops at the guest's end-of-panic line (panic=0), still
    inside panic(), and the trace is taken there. (A trace taken at an arbitrary later moment can
    land in a timer interrupt on the IRQ stack, where the seed's frame-pointer rules stop.)"""
    machine_cls = _machine_class()
    clear_symbol_cache()
    with machine_cls(BZIMAGE, initrd=INITRD, cmdline=f"{BASE_CMDLINE} vmboot.panic=1 panic=0",
                     memory="64M", vmlinux=VMLINUX) as m:
        deadline = time.monotonic() + BOOT_LIMIT_S
        result = m.run(timeout=RUN_SLICE_S)
        while result.exit.reason.name == "TIMEOUT" and time.monotonic() < deadline:
            result = m.run(timeout=RUN_SLICE_S)
        assert result.exit.reason.name == "PANIC", result.exit.one_line()
        assert result.panic_message == "Kernel panic - not syncing: sysrq triggered crash"
        frames = result.stack_trace
        assert isinstance(frames, list), result.notes
        names = [f.symbol for f in frames]
        print(result.stack_trace_text)
        assert "panic" in names, names
        assert "sysrq_handle_crash" in names, names
