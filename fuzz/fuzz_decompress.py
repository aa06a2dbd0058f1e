"""The bounded decompressor (kernel payloads, initramfs archives) on hostile compressed data.

Input layout: one selector byte, then the compressed data. The selector picks the format
(low 3 bits, modulo the formats), the end-of-stream rule (bit 7: ``strict_end``, as for an
initramfs) and the output limit (bit 6: 4 KiB instead of 1 MiB, so small bombs reach it).
Besides "only VmbootError escapes", the output never exceeds the limit, and the same bytes
go through the two sniffing entry points (``decompress_payload``, the initramfs
``decompress``) under the same limit.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

from collections.abc import Callable
from functools import cache

from fuzz.harness import Target, atheris_main
from fuzz.seeds import PACKERS
from vmboot.compression.decompress import decompress
from vmboot.compression.formats import FORMATS
from vmboot.compression.kernel_payload import decompress_payload
from vmboot.errors import KernelFormatError, VmbootError
from vmboot.initramfs import decompress as decompress_initramfs
from vmboot.units import MiB

STRICT_BIT = 0x80
SMALL_LIMIT_BIT = 0x40
FORMAT_MASK = 0x07
SMALL_LIMIT = 4096
LIMIT = 1 * MiB
PLAIN = b"".join(b"vmboot %d " % i for i in range(600))
"""What the seeds compress: 5 KiB of text, just over the small limit."""


def selector(fmt: str, strict_end: bool = False, small_limit: bool = False) -> int:
    return FORMATS.index(fmt) | (STRICT_BIT if strict_end else 0) | (SMALL_LIMIT_BIT if small_limit else 0)


@cache
def _seeds() -> tuple[bytes, ...]:
    out = []
    for fmt in FORMATS:
        packed = PACKERS[fmt](PLAIN)
        out.append(bytes([selector(fmt)]) + packed + len(PLAIN).to_bytes(4, "little"))
        out.append(bytes([selector(fmt, strict_end=True)]) + packed)
    out.append(bytes([selector("gzip", strict_end=True)]) + PACKERS["gzip"](PLAIN[:100]) * 2)
    return tuple(out)


def _bounded(what: str, call: Callable[[], bytes], most: int) -> None:
    """Run ``call``: a VmbootError is a refusal; output past ``most`` bytes is a bug."""
    try:
        out = call()
    except VmbootError:
        return
    assert len(out) <= most, f"{what}: {len(out)} bytes out, at most {most} allowed"


def one_input(data: bytes) -> None:
    if not data:
        return
    sel, body = data[0], data[1:]
    fmt = FORMATS[(sel & FORMAT_MASK) % len(FORMATS)]
    limit = SMALL_LIMIT if sel & SMALL_LIMIT_BIT else LIMIT
    strict = bool(sel & STRICT_BIT)
    _bounded(fmt, lambda: decompress(body, fmt, limit=limit, name="fuzz", what="payload",
                                     error=KernelFormatError, raise_hint="-", strict_end=strict),
             limit)
    # The entry points that pick the format from the magic (uncompressed data passes as is).
    _bounded("decompress_payload", lambda: decompress_payload(body, "fuzz", limit),
             max(limit, len(body)))
    _bounded("initramfs decompress", lambda: decompress_initramfs(body, "fuzz", limit),
             max(limit, len(body)))


TARGET = Target("decompress", one_input, lambda: list(_seeds()), lambda: (0, 1, 2, 3, 4, 5, 8, 12),
                max_len=1 << 14,
                description="vmboot.compression.decompress in every format and end rule, and the sniffing "
                            "entry points for payloads and initramfs archives")

if __name__ == "__main__":
    atheris_main(TARGET)
