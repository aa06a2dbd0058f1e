"""Setting a guest up to enter a kernel: guest-physical layout and boot-time structures.

- :mod:`~vmboot.linux.configurator.layout`: where each region goes in guest RAM;
- :mod:`~vmboot.linux.configurator.plan`: :class:`BootPlan` (long-mode entry) and how it
  programs the vCPU;
- :mod:`~vmboot.linux.configurator.pvh`: :class:`PvhBootPlan` (32-bit PVH entry);
- :mod:`~vmboot.linux.configurator.cpu_reset`, :mod:`~vmboot.linux.configurator.boot_msrs`:
  what firmware leaves in every vCPU (CPUID, MSRs, FPU, LAPIC pins);
- :mod:`~vmboot.linux.configurator.gdt`, :mod:`~vmboot.linux.configurator.page_tables`:
  the boot GDT and identity-mapped page tables;
- :mod:`~vmboot.linux.configurator.zero_page`, :mod:`~vmboot.linux.configurator.e820`,
  :mod:`~vmboot.linux.configurator.start_info`: the zero page, the E820 memory map and
  PVH's ``hvm_start_info``.

Reading the kernel file itself is :mod:`vmboot.linux.loader`.
"""
