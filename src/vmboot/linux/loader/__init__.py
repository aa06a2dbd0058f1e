"""Reading kernel files: what a kernel file is and what it holds.

- :mod:`~vmboot.linux.loader.detect`: :func:`load_kernel`, format detection;
- :mod:`~vmboot.linux.loader.bzimage`: the bzImage (setup header, payload, 64-bit entry);
- :mod:`~vmboot.linux.loader.elf_kernel`: an ELF ``vmlinux`` (segments, notes, entries);
- :mod:`~vmboot.linux.loader.pvh_note`: the PVH entry note of an ELF kernel;
- :mod:`~vmboot.linux.loader.setup_header`: the boot protocol header, field by field;
- :mod:`~vmboot.linux.loader.vmlinux`: the uncompressed ``vmlinux`` inside a bzImage
  (its payload's compression is :mod:`vmboot.compression.kernel_payload`).

How a guest is set up to enter a kernel is :mod:`vmboot.linux.configurator`.
"""

from vmboot.linux.loader.detect import LinuxKernel, load_kernel

__all__ = ["LinuxKernel", "load_kernel"]
