"""The KVM backend: ``/dev/kvm`` through ioctls from pure Python (fcntl, ctypes, mmap).

- :mod:`~vmboot.hv.kvm.abi`: every ioctl number and C structure layout;
- :mod:`~vmboot.hv.kvm.host`: whether the host KVM emulates guest ring 0 (PVM);
- :mod:`~vmboot.hv.kvm.system`: :class:`KVM` (the device, capabilities, supported CPUID);
- :mod:`~vmboot.hv.kvm.vm`: :class:`KvmVM` (memslots, irqchip, PIT, ``irq_line``, vCPUs in
  KVM's reset state, each vCPU's CPUID table under the VM's policy);
- :mod:`~vmboot.hv.kvm.vcpu`: :class:`KvmVCPU` (registers, MSRs, CPUID, FPU, LAPIC,
  ``kvm_run``);
- :mod:`~vmboot.hv.kvm.cpuid`: the CPUID policies (``auto``, ``host``, ``conservative``).

What a boot sets in a new vCPU (and with which values) is
:mod:`vmboot.linux.configurator.cpu_reset`'s choice, through the vCPU's setters.

The run loop that drives a vCPU is :class:`vmboot.vmm.runner.Runner`.
"""

from vmboot.hv.kvm.host import host_is_emulating
from vmboot.hv.kvm.system import KVM
from vmboot.hv.kvm.vcpu import KvmVCPU
from vmboot.hv.kvm.vm import KvmVM

__all__ = ["KVM", "KvmVCPU", "KvmVM", "host_is_emulating"]
