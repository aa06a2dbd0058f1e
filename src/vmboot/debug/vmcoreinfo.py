"""VMCOREINFO: the ``KEY=value`` lines a kernel publishes for crash-dump readers.

A kernel built with ``CONFIG_CRASH_CORE`` (KEXEC) keeps the text in ``vmcoreinfo_data``
(``vmcoreinfo_size`` bytes) and a ready ELF note in ``vmcoreinfo_note``; both are pointers
to pages the kernel allocated. :mod:`vmboot.debug.vmcore` follows them through the guest's
page tables; :func:`minimal_vmcoreinfo_from` writes the few lines drgn and crash cannot do
without when a kernel has none.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.errors import DebugError
from vmboot.x86.paging import PAGE_SIZE

VMCOREINFO_MAX = PAGE_SIZE
"""``VMCOREINFO_BYTES``: the kernel keeps its vmcoreinfo text in one page."""
DEFAULT_PAGE_OFFSET = 0xFFFF_8880_0000_0000
"""x86_64 ``__PAGE_OFFSET_BASE_L4``: the direct map without memory randomisation."""
SOURCE_GUEST = "the guest kernel's vmcoreinfo_data"
SOURCE_MINIMAL = "written by vmboot (the kernel has no vmcoreinfo_data)"


@dataclass(frozen=True)
class VmcoreInfo:
    """VMCOREINFO text and where it came from (:data:`SOURCE_GUEST` or :data:`SOURCE_MINIMAL`)."""

    text: bytes
    source: str


def parse_vmcoreinfo(text: bytes) -> dict[str, str]:
    """``KEY=value`` lines into a dict (later lines win; lines without ``=`` are skipped)."""
    out: dict[str, str] = {}
    for line in text.decode("ascii", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            out[key] = value
    return out


def kernel_release(space: GuestAddressSpace, banner_address: int) -> str | None:
    """The running kernel's release (``uname -r``) from ``linux_banner`` at its runtime address."""
    banner = space.read(banner_address, 256).split(b"\0", 1)[0].decode("ascii", "replace")
    words = banner.split()
    if len(words) >= 3 and words[0] == "Linux" and words[1] == "version":
        return words[2]
    return None


def minimal_vmcoreinfo_from(space: GuestAddressSpace, variables: dict[str, int],
                            slide: int) -> bytes:
    """The lines drgn and crash need, from link-time ``variables`` (see
    :mod:`vmboot.debug.kernel_variables`), the KASLR ``slide`` and the guest's memory."""
    lines: list[str] = []
    if "linux_banner" in variables:
        try:
            release = kernel_release(space, variables["linux_banner"] + slide)
        except DebugError:
            release = None
        if release is not None:
            lines.append(f"OSRELEASE={release}")
    lines.append(f"PAGESIZE={PAGE_SIZE}")
    for name in ("swapper_pg_dir", "init_top_pgt", "_stext", "init_uts_ns"):
        if name in variables:
            lines.append(f"SYMBOL({name})={variables[name] + slide:x}")
    if "swapper_pg_dir" not in variables and "init_top_pgt" in variables:
        lines.append(f"SYMBOL(swapper_pg_dir)={variables['init_top_pgt'] + slide:x}")
    if "phys_base" in variables:
        with contextlib.suppress(DebugError):
            lines.append(f"NUMBER(phys_base)={space.read_u64(variables['phys_base'] + slide)}")
    lines.append("NUMBER(pgtable_l5_enabled)=" + ("1" if space.five_level else "0"))
    lines.append(f"KERNELOFFSET={slide:x}")
    return ("\n".join(lines) + "\n").encode("ascii")
