"""Changing a stopped guest kernel's code and data from the host, by symbol.

The host writes guest-physical memory, found through the guest's own page tables, so the
kernel's write protection of its text does not apply and nothing runs in the guest. With
every vCPU stopped (between :meth:`~vmboot.vmm.machine.Machine.run` calls)::

    text = machine.kernel_text()                    # symbols and the KASLR slide applied
    patch = text.patch("__x64_sys_sethostname", LOAD_NULL)
    ...                                              # run; `hostname x` in the guest oopses
    patch.restore()                                  # the original bytes back

A ``ud2`` is only a ``BUG()`` or a ``WARN()`` when the kernel's ``__bug_table`` has an
entry for its address (``report_bug``); otherwise it is an invalid-opcode oops.
:meth:`KernelText.claim_bug_entry` points an existing entry of the wanted kind at a new
address (x86_64 entries hold relative displacements, ``CONFIG_GENERIC_BUG_RELATIVE_POINTERS``),
so a patched ``ud2`` reports as ``kernel BUG at FILE:LINE!`` or ``WARNING: ... at FILE:LINE``
with the file and line of the entry's own site.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from vmboot.debug.kernel_symbols import runtime_address
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.debug.symtab import SymbolTable
from vmboot.errors import DebugError, PageWalkError

UD2 = b"\x0f\x0b"
"""``ud2``: the instruction ``BUG()`` and ``WARN()`` compile to on x86."""
JMP_SELF = b"\xeb\xfe"
"""``jmp .``: a loop that never yields the CPU."""
LOAD_NULL = b"\x48\x8b\x04\x25\x00\x00\x00\x00"
"""``mov rax, [0]``: a kernel-mode NULL pointer read."""
RETURN_ZERO = b"\x31\xc0\xc3"
"""``xor eax, eax; ret``: return 0 (what a patched function does after a ``WARN()``)."""

BUG_TABLE_START = "__start___bug_table"
BUG_TABLE_STOP = "__stop___bug_table"
IMAGE_START, IMAGE_END = "_text", "_end"
BUGFLAG_WARNING = 1 << 0
BUGFLAG_ONCE = 1 << 1
BUGFLAG_DONE = 1 << 2
BUGFLAG_NO_CUT_HERE = 1 << 3
BUGFLAG_KIND_MASK = 0xFF
"""``include/asm-generic/bug.h``: the low byte holds the flags, the high byte the taint a
``WARN()`` sets (``BUGFLAG_TAINT``)."""
MAX_FILE_NAME = 256
MAX_BUG_TABLE = 1 << 22
"""Bytes of ``__bug_table`` read at most (a kernel has tens of KiB)."""


@dataclass(frozen=True)
class BugLayout:
    """One ``struct bug_entry`` layout with relative pointers: its size, the flags' offset
    and whether it has the file and line (``CONFIG_DEBUG_BUGVERBOSE``)."""

    size: int
    flags_offset: int
    verbose: bool


BUG_LAYOUTS = (BugLayout(12, 10, True), BugLayout(8, 4, False))
"""``{s32 bug_addr_disp; s32 file_disp; u16 line; u16 flags}`` and ``{s32 bug_addr_disp;
u16 flags}`` (padded to 8)."""
_S32 = struct.Struct("<i")
_U16 = struct.Struct("<H")


@dataclass(frozen=True)
class BugEntry:
    """One ``__bug_table`` entry: where it is, the ``ud2`` it describes, its site and flags."""

    address: int
    bug_address: int
    file: str | None
    line: int | None
    flags: int

    @property
    def warning(self) -> bool:
        return bool(self.flags & BUGFLAG_WARNING)


@dataclass
class TextPatch:
    """Bytes written over guest kernel memory, and what was there before."""

    space: GuestAddressSpace
    address: int
    original: bytes
    written: bytes

    def restore(self) -> None:
        """Put the original bytes back."""
        self.space.write(self.address, self.original)


class KernelText:
    """A running kernel's memory by symbol, read and written through ``space``:
    ``addresses`` of every symbol (data too) and the function table ``functions`` (for the
    bounds of a patch) at link-time addresses, moved by ``slide`` (KASLR)."""

    def __init__(self, space: GuestAddressSpace, addresses: Mapping[str, int],
                 functions: SymbolTable, slide: int) -> None:
        self.space = space
        self.addresses = addresses
        self.functions = functions
        self.slide = slide
        self._bug_layout: BugLayout | None = None

    def address_of(self, name: str) -> int:
        """The running kernel's address of symbol ``name``."""
        return runtime_address(self.addresses, name, self.slide)

    def read(self, address: int, size: int) -> bytes:
        return self.space.read(address, size)

    def patch(self, where: str | int, code: bytes, offset: int = 0) -> TextPatch:
        """Write ``code`` at symbol (or address) ``where`` plus ``offset``; checked first
        to lie inside that function when its size is known, and to be mapped."""
        address = (self.address_of(where) if isinstance(where, str) else where) + offset
        if not code:
            raise DebugError(f"patch at {address:#x}: code is empty; give the bytes to write")
        match = self.functions.lookup(address - self.slide)
        if match.known and match.size and match.offset + len(code) > match.size:
            raise DebugError(
                f"patch at {match.name}+{match.offset:#x}: {len(code)} bytes run past the "
                f"function's end ({match.size:#x} bytes); write at most "
                f"{match.size - match.offset} bytes there")
        original = self.space.read(address, len(code))
        self.space.write(address, code)
        return TextPatch(self.space, address, original, code)

    # -- __bug_table ------------------------------------------------------------------------
    def bug_entries(self) -> list[BugEntry]:
        """Every entry of the kernel's own ``__bug_table`` (not modules')."""
        start, stop = self.address_of(BUG_TABLE_START), self.address_of(BUG_TABLE_STOP)
        if not 0 <= stop - start <= MAX_BUG_TABLE:
            raise DebugError(f"{BUG_TABLE_START}..{BUG_TABLE_STOP} spans {stop - start} bytes; "
                             f"expected 0..{MAX_BUG_TABLE}: the symbols do not match the kernel")
        table = self.space.read(start, stop - start)
        image = (self.address_of(IMAGE_START), self.address_of(IMAGE_END))
        layout = self._layout(table, start, image)
        entries = []
        for off in range(0, len(table), layout.size):
            at = start + off
            bug = at + _S32.unpack_from(table, off)[0]
            flags = _U16.unpack_from(table, off + layout.flags_offset)[0]
            file = line = None
            if layout.verbose:
                file = self._c_string(at + 4 + _S32.unpack_from(table, off + 4)[0])
                line = _U16.unpack_from(table, off + 8)[0]
            entries.append(BugEntry(at, bug, file, line, flags))
        return entries

    def _layout(self, table: bytes, start: int, image: tuple[int, int]) -> BugLayout:
        """The entry layout under which every entry points into the kernel image (its text
        and init text)."""
        if self._bug_layout is not None:
            return self._bug_layout
        for layout in BUG_LAYOUTS:
            if not table or len(table) % layout.size:
                continue
            if all(image[0] <= start + off + _S32.unpack_from(table, off)[0] < image[1]
                   for off in range(0, len(table), layout.size)):
                self._bug_layout = layout
                return layout
        raise DebugError(f"__bug_table ({len(table)} bytes at {start:#x}): no entry layout "
                         f"({', '.join(str(b.size) for b in BUG_LAYOUTS)} bytes) points every "
                         f"entry into the kernel image; the kernel's table is not readable here")

    def _c_string(self, address: int) -> str | None:
        try:
            raw = self.space.read(address, MAX_FILE_NAME)
        except PageWalkError:
            return None
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def claim_bug_entry(self, address: int, warning: bool) -> tuple[BugEntry, TextPatch]:
        """Point an existing ``__bug_table`` entry (a ``WARN()`` with ``warning``, else a
        ``BUG()``; never a ``WARN_ONCE()``) at ``address``, where a ``ud2`` then reports as
        that kind. Returns the entry as it was and the patch of its displacement (restore
        it to give the entry back to its own site)."""
        wanted = BUGFLAG_WARNING if warning else 0
        for entry in self.bug_entries():
            kind = entry.flags & BUGFLAG_KIND_MASK & ~BUGFLAG_NO_CUT_HERE
            if kind == wanted and entry.bug_address != address:
                displacement = address - entry.address
                original = self.space.read(entry.address, _S32.size)
                new = _S32.pack(displacement)
                self.space.write(entry.address, new)
                return entry, TextPatch(self.space, entry.address, original, new)
        what = "WARN()" if warning else "BUG()"
        raise DebugError(f"__bug_table has no plain {what} entry to point at {address:#x}; "
                         f"the kernel needs CONFIG_BUG with at least one such site")
