"""ELF kernels booted by vmboot's loader under KVM.

- The probe kernels (vmboot.probes) loaded through ``load_kernel``/``prepare``/
  ``configure_vcpu``: the PVH probe checks the PVH contract from inside the guest (32-bit
  protected mode, EBX, hvm_start_info, memmap, cmdline, module), the ELF probes the 64-bit one.
- Slow: the real tiny vmlinux boots to its init through the PVH entry and the ELF entry.
"""

from __future__ import annotations

import time

import pytest

from conftest import requires_kvm, shared_kernel_file
from vmboot.devices.bus import PortBus
from vmboot.errors import UnsupportedKernelError
from vmboot.hv.kvm import KvmVM
from vmboot.linux import BootOptions, BootPlan, ElfKernel, PvhBootPlan, load_kernel
from vmboot.linux.options import EntryChoice
from vmboot.probes import Check, EntryKind, ProbeDevice, ProbeReport, probe_image, verify
from vmboot.probes.verify_pvh import PvhExpectation, expectation_from_plan, verify_pvh
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.runner import Runner

pytestmark = [requires_kvm, pytest.mark.kvm]

MEMORY = 64 << 20
INIT_MARKER = b"VMBOOT-INIT-OK"


def boot_probe(kind: str, options: BootOptions) -> tuple[ProbeReport, BootPlan | PvhBootPlan, str]:
    kernel = load_kernel(probe_image(kind))
    assert isinstance(kernel, ElfKernel)
    with KvmVM(MEMORY, irqchip=False) as vm:
        vcpu = vm.create_vcpu(0)
        plan = kernel.prepare(vm, options)
        plan.configure_vcpu(vcpu)
        bus = PortBus()
        device = ProbeDevice()
        bus.attach_device(device.port_base, device.port_count, device, "probe")
        runner = Runner(vm, vcpu, bus)
        device.connect_stop(runner.stop)
        result = runner.run(timeout=30)
    assert result.reason is ExitReason.POWEROFF, result.one_line()
    return device.report, plan, result.one_line()


def pvh_expectation(plan: PvhBootPlan, options: BootOptions) -> PvhExpectation:
    return expectation_from_plan(plan, options)


def failures(checks: list[Check]) -> list[str]:
    return [f"{c.name}: expected {c.expected}, observed {c.observed}" for c in checks if not c.ok]


@pytest.mark.parametrize("options", [
    BootOptions(cmdline="console=hvc0 pvh=1", initrd=bytes(range(256)) * 40 + b"tail"),
    BootOptions(),
    BootOptions(cmdline="x" * 2047, initrd=b"\xFF" * 12345, start_info_gpa=0x50000),
    BootOptions(cmdline="initrd low", initrd=b"low" * 100, initrd_gpa=0x200000, cmdline_gpa=0x8000),
], ids=["initrd", "nothing", "long cmdline, start_info at 0x50000", "explicit addresses"])
def test_pvh_probe_through_the_loader(options: BootOptions) -> None:
    report, plan, how = boot_probe("pvh", options)
    assert isinstance(plan, PvhBootPlan)
    checks = verify_pvh(report, pvh_expectation(plan, options), exit_detail=how)
    assert len(checks) > 20
    assert not failures(checks), "\n".join(failures(checks))


def test_pvh_probe_sees_a_tampered_start_info() -> None:
    """Negative control: the same verification fails when the plan lies about the module."""
    options = BootOptions(cmdline="tamper", initrd=b"module bytes" * 50)
    report, plan, how = boot_probe("pvh", options)
    assert isinstance(plan, PvhBootPlan)
    expected = pvh_expectation(plan, options)
    wrong = PvhExpectation(**{**expected.__dict__,
                              "modules": [(plan.modules[0].paddr, b"other bytes" * 50)]})
    bad = {c.name for c in verify_pvh(report, wrong, exit_detail=how) if not c.ok}
    assert bad == {"module 0 size", "module 0 checksum"}


@pytest.mark.parametrize("kind", ["elf64", "pvh"])
def test_elf64_entry_through_the_loader(kind: str) -> None:
    """The ELF probes' e_entry in 64-bit mode, with vmboot's zero page (the PVH probe too,
    when asked for entry='elf64')."""
    options = BootOptions(cmdline="elf64 entry", initrd=b"0123456789" * 333, entry="elf64")
    report, plan, how = boot_probe(kind, options)
    assert type(plan) is BootPlan and plan.entry_mode == "elf64"
    checks = verify(report, plan, options, kind=EntryKind.ELF64, exit_detail=how)
    assert not failures(checks), "\n".join(failures(checks))


def test_pvh_refused_for_the_elf_probe_without_a_note() -> None:
    kernel = load_kernel(probe_image("elf64"))
    assert isinstance(kernel, ElfKernel) and kernel.pvh_entry is None
    with KvmVM(MEMORY, irqchip=False) as vm, pytest.raises(UnsupportedKernelError, match="'pvh'"):
        kernel.prepare(vm, BootOptions(entry="pvh"))


# -- the real tiny kernel -------------------------------------------------------------------------


def boot_tiny_vmlinux(entry: EntryChoice) -> None:
    from vmboot.vmm.machine import Machine

    t0 = time.monotonic()
    with Machine(shared_kernel_file("tiny-vmlinux"),
                 initrd=shared_kernel_file("tiny-initramfs-min.cpio"),
                 cmdline="console=ttyS0 reboot=k panic=-1", memory="64M", entry=entry) as m:
        assert m.plan is not None
        want = "pvh" if entry == "auto" else entry
        assert m.plan.entry_mode == want
        result = m.run(timeout=180)
    elapsed = time.monotonic() - t0
    console = result.console
    assert INIT_MARKER in console, console[-2000:].decode(errors="replace")
    assert result.exit.reason is ExitReason.RESET, result.exit.one_line()
    print(f"\ntiny-vmlinux ({want}) to {INIT_MARKER.decode()}: {elapsed:.1f} s "
          f"(QEMU microvm PVH reference on this host: 12.6 s)")


@pytest.mark.slow
def test_tiny_vmlinux_boots_through_pvh() -> None:
    boot_tiny_vmlinux("auto")


@pytest.mark.slow
def test_tiny_vmlinux_boots_through_the_elf_entry() -> None:
    boot_tiny_vmlinux("elf64")
