"""The KVM backend: ``/dev/kvm`` through ioctls from pure Python (fcntl, ctypes, mmap).

- :mod:`~vmboot.hv.kvm.abi`: every ioctl number and C structure layout;
- :mod:`~vmboot.hv.kvm.host`: whether the host KVM emulates guest ring 0 (PVM);
- :mod:`~vmboot.hv.kvm.system`: :class:`KVM` (the device, capabilities, supported CPUID);
- :mod:`~vmboot.hv.kvm.vm`: :class:`KvmVM` (memslots, irqchip, PIT, ``irq_line``, vCPUs
  created with the CPUID, MSRs, FPU and LAPIC firmware would leave);
- :mod:`~vmboot.hv.kvm.vcpu`: :class:`KvmVCPU` (registers, MSRs, FPU, LAPIC, ``kvm_run``);
- :mod:`~vmboot.hv.kvm.cpuid`: the CPUID policies (``auto``, ``host``, ``conservative``);
- :mod:`~vmboot.hv.kvm.boot_msrs`: the MSRs a vCPU starts with.

The run loop that drives a vCPU is :class:`vmboot.vmm.runner.Runner`.
"""

from vmboot.hv.kvm.host import host_is_emulating
from vmboot.hv.kvm.system import KVM
from vmboot.hv.kvm.vcpu import KvmVCPU
from vmboot.hv.kvm.vm import KvmVM

__all__ = ["KVM", "KvmVCPU", "KvmVM", "host_is_emulating"]
