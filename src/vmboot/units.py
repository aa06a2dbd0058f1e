"""Human-readable sizes: ``parse_size("256M")`` and ``format_size(268435456)``.

Accepted forms: a number of bytes (``"4096"``, ``"0x1000"``), or a number with a binary
unit: ``K``, ``M``, ``G``, ``T`` optionally followed by ``iB`` or ``B`` (``"64MiB"``,
``"1G"``, ``"512kb"``; case-insensitive). Units are powers of 1024, as for ``qemu -m``.
A decimal fraction is accepted when it gives a whole number of bytes (``"1.5G"``).
"""

from __future__ import annotations

import re

from vmboot.errors import UsageError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
"""Binary size units: every size vmboot writes down is a multiple of these."""
UNITS: dict[str, int] = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}
ACCEPTED_FORMS = "a byte count (4096, 0x1000) or a number with K, M, G or T (256M, 1G, 64MiB, 1.5G)"

_SIZE_RE = re.compile(
    r"^\s*(?:(?P<hex>0[xX][0-9a-fA-F]+)|(?P<dec>[0-9]+(?:\.[0-9]+)?))\s*(?P<unit>[kmgtKMGT]?)(?P<suffix>(?:i?[bB])?)\s*$",
    re.ASCII,
)
MAX_DIGITS = 40
"""More digits than this is no size anyone means (and would reach Python's int() limits)."""


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes in ``text``; raises :class:`~vmboot.errors.UsageError` naming ``what``."""
    if isinstance(text, bool):
        raise UsageError(f"{what}: {text!r} is not a size; expected {ACCEPTED_FORMS}")
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"{what}: {text} is negative; expected {ACCEPTED_FORMS}")
        return text
    if not isinstance(text, str):
        raise UsageError(f"{what}: {text!r} is not a size; expected {ACCEPTED_FORMS}")
    m = _SIZE_RE.match(text)
    if m is None or (m["suffix"] and not m["unit"] and m["suffix"].lower() != "b"):
        raise UsageError(f"{what}: {text!r} is not a size; expected {ACCEPTED_FORMS}")
    digits = m["hex"] or m["dec"]
    if len(digits) > MAX_DIGITS:
        raise UsageError(f"{what}: {text[:20]!r}... has {len(digits)} digits, more than the "
                         f"{MAX_DIGITS} any size needs; expected {ACCEPTED_FORMS}")
    if m["hex"] is not None and m["unit"]:
        raise UsageError(
            f"{what}: {text!r} mixes a hexadecimal number with a unit; expected {ACCEPTED_FORMS}"
        )
    unit = UNITS[m["unit"].lower()]
    if m["hex"] is not None or "." not in m["dec"]:
        return (int(m["hex"], 16) if m["hex"] is not None else int(m["dec"])) * unit
    from fractions import Fraction  # (and decimal): only for a decimal fraction, "1.5G"

    value = Fraction(m["dec"]) * unit
    if value.denominator != 1:
        raise UsageError(
            f"{what}: {text!r} is not a whole number of bytes ({float(value):.2f}); "
            f"expected {ACCEPTED_FORMS}"
        )
    return int(value)


def format_size(n: int) -> str:
    """The largest binary unit that divides ``n`` exactly: 268435456 -> "256 MiB"."""
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} bytes"
