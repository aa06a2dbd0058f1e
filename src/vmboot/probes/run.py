"""``run_probe``: boot a probe kernel under KVM and verify the boot contract it observed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmboot.devices.bus import PortBus
from vmboot.hv.base import VirtualCPU, VirtualMachine
from vmboot.linux import BootOptions, BootPlan, EntryPlan, load_kernel
from vmboot.linux.configurator.pvh import PvhBootPlan
from vmboot.linux.loader.bzimage import BzImage
from vmboot.probes.device import ProbeDevice
from vmboot.probes.images import ProbeKind, probe_image
from vmboot.probes.protocol import EntryKind
from vmboot.probes.report import ProbeReport
from vmboot.probes.verify import Check, verify
from vmboot.probes.verify_pvh import expectation_from_plan, verify_pvh
from vmboot.vmm.exits import VmExit

DEFAULT_MEMORY = 64 << 20
DEFAULT_TIMEOUT = 60.0
"""Seconds; a probe normally finishes in well under one (even on an emulating KVM)."""

Tamper = Callable[[VirtualMachine, VirtualCPU, EntryPlan], object]
"""Called after ``prepare`` and ``configure_vcpu``, before the first instruction: tests use
it to break the boot contract on purpose (negative controls)."""

ENTRY_KINDS: dict[str, EntryKind] = {
    "bzimage": EntryKind.BZIMAGE64,
    "elf64": EntryKind.ELF64,
    "pvh": EntryKind.PVH32,
}


@dataclass(frozen=True)
class ProbeTimings:
    """Wall-clock seconds of each phase (for display; never asserted on)."""

    setup: float
    """Creating the VM, loading the kernel, programming the vCPU."""
    run: float
    """From the first KVM_RUN to the end of the run."""
    verify: float

    def as_dict(self) -> dict[str, float]:
        return {"setup": self.setup, "run": self.run, "verify": self.verify}


@dataclass
class ProbeResult:
    """A probe run: every check, how the run ended, the raw report and the plan."""

    kind: str
    checks: list[Check]
    exit: VmExit
    report: ProbeReport
    plan: EntryPlan
    timings: ProbeTimings
    exit_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The run ended cleanly and every check passed."""
        return self.exit.clean and bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks: {', '.join(c.name for c in self.checks)}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ok": self.ok,
            "exit": {"reason": self.exit.reason.value, "detail": self.exit.detail},
            "checks": [c.as_dict() for c in self.checks],
            "timings": self.timings.as_dict(),
            "exits": self.exit_count,
            "plan": self._plan_dict(),
        }

    def _plan_dict(self) -> dict[str, Any]:
        plan = self.plan
        out: dict[str, Any] = {"load_addr": plan.load_addr, "entry_gpa": plan.entry_gpa,
                               "cmdline_gpa": plan.cmdline_gpa, "initrd_gpa": plan.initrd_gpa,
                               "initrd_size": plan.initrd_size}
        if isinstance(plan, BootPlan):
            out.update(zero_page_gpa=plan.zero_page_gpa, stack_top_gpa=plan.stack_top_gpa,
                       paging_base=plan.paging_base, address_space_gib=plan.address_space_gib)
        return out


def run_probe(
    kind: ProbeKind = "bzimage",
    options: BootOptions | None = None,
    *,
    memory: int = DEFAULT_MEMORY,
    timeout: float = DEFAULT_TIMEOUT,
    tamper: Tamper | None = None,
    kvm_device: str = "/dev/kvm",
    image: bytes | None = None,
) -> ProbeResult:
    """Boot the bundled probe ``kind`` (or ``image``) under KVM with ``options``; verify.

    Raises :class:`~vmboot.errors.KvmUnavailableError` when ``kvm_device`` cannot be used,
    and any error ``load_kernel``/``prepare`` raise for options that cannot be honoured.
    """
    from vmboot.hv.kvm import KVM, KvmVM
    from vmboot.vmm.runner import Runner

    options = options or BootOptions()
    entry = ENTRY_KINDS.get(kind)
    if entry is None:
        from vmboot.errors import UsageError
        raise UsageError(f"probe kind {kind!r} is unknown; valid kinds: {', '.join(ENTRY_KINDS)}")
    kernel = load_kernel(probe_image(kind) if image is None else image)
    initrd = options.initrd_bytes()
    t0 = time.perf_counter()
    with KVM(kvm_device) as kvm, KvmVM(memory, kvm=kvm, irqchip=False) as vm:
        vcpu = vm.create_vcpu(0)
        plan = kernel.prepare(vm, options)
        plan.configure_vcpu(vcpu)
        if tamper is not None:
            tamper(vm, vcpu, plan)
        bus = PortBus()
        device = ProbeDevice()
        bus.attach_device(device.port_base, device.port_count, device, "vmboot probe")
        runner = Runner(vm, vcpu, bus)
        device.connect_stop(runner.stop)
        t1 = time.perf_counter()
        exit_ = runner.run(timeout=timeout)
        t2 = time.perf_counter()
        exits = runner.exit_count
    if isinstance(plan, PvhBootPlan):
        checks = verify_pvh(device.report, expectation_from_plan(plan, options),
                            exit_detail=exit_.one_line())
    elif isinstance(plan, BootPlan):
        header_version = kernel.setup_header.version if isinstance(kernel, BzImage) else None
        checks = verify(device.report, plan, options, initrd, header_version=header_version,
                        kind=entry, exit_detail=exit_.one_line())
    else:
        raise TypeError(f"probe {kind!r}: {type(plan).__name__} is neither a 64-bit nor a PVH "
                        f"boot plan; verify has no checks for it")
    t3 = time.perf_counter()
    return ProbeResult(kind=kind, checks=checks, exit=exit_, report=device.report, plan=plan,
                       timings=ProbeTimings(setup=t1 - t0, run=t2 - t1, verify=t3 - t2),
                       exit_count=exits)
