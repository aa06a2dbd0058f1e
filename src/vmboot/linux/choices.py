"""What a boot's user chooses that is checked without the boot code: how the vCPU enters
the kernel, and the command line's bytes. :mod:`vmboot.config` validates a machine with
these alone, so a restore (which boots nothing) does not load :mod:`vmboot.linux.options`
and the layout behind it; :class:`~vmboot.linux.options.BootOptions` uses the same."""

from __future__ import annotations

from typing import Literal, get_args

from vmboot.errors import CmdlineError

EntryMode = Literal["bzimage64", "elf64", "pvh"]
"""How the vCPU enters the kernel: the bzImage 64-bit entry (startup_64 at load + 0x200),
an ELF vmlinux's ``e_entry`` in 64-bit mode with a zero page, or the PVH entry (32-bit
protected mode, EBX = ``struct hvm_start_info``)."""
EntryChoice = Literal["auto", "bzimage64", "elf64", "pvh"]
ENTRY_CHOICES: tuple[str, ...] = get_args(EntryChoice)


def cmdline_bytes(cmdline: str | bytes) -> bytes:
    """``cmdline`` as the kernel gets it: a str UTF-8 encoded; no NUL byte either way."""
    if isinstance(cmdline, str):
        try:
            raw = cmdline.encode("utf-8")
        except UnicodeEncodeError as e:
            raise CmdlineError(
                f"cmdline: character {cmdline[e.start]!r} at offset {e.start} cannot be "
                f"encoded as UTF-8 (a non-UTF-8 byte from the shell?); pass bytes instead"
            ) from None
    else:
        raw = bytes(cmdline)
    nul = raw.find(b"\0")
    if nul >= 0:
        raise CmdlineError(
            f"cmdline: contains a NUL byte at offset {nul}; the kernel would stop reading there"
        )
    return raw
