"""The hypervisor abstraction: VMs with guest RAM, and vCPUs with their registers.

``MemoryVM`` runs nothing and needs nothing; the KVM backend lives in
:mod:`vmboot.hv.kvm` and is imported only when asked for.
"""

from vmboot.hv.base import VirtualCPU, VirtualMachine
from vmboot.hv.guest_memory import GuestMemory
from vmboot.hv.memory import MemoryVCPU, MemoryVM
from vmboot.hv.memory_map import MemoryRegion, ram_regions
from vmboot.hv.registers import DescriptorTable, Register, Segment, SegmentRegister

__all__ = [
    "DescriptorTable",
    "GuestMemory",
    "MemoryRegion",
    "MemoryVCPU",
    "MemoryVM",
    "Register",
    "Segment",
    "SegmentRegister",
    "VirtualCPU",
    "VirtualMachine",
    "ram_regions",
]
