"""The checksum probes compute in the guest, and the host computes the same way.

FNV-1a 64 over little-endian 64-bit words, then the 0-7 tail bytes one at a time:
``h = (h ^ unit) * FNV_PRIME mod 2**64`` starting from ``FNV_OFFSET``. Eight bytes per
step keeps the guest loop short (the probe runs under an emulating KVM), and the
prime's shape (2**40 + 0x1b3) keeps the 32-bit PVH probe's multiply simple.
"""

from __future__ import annotations

import struct

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1
_WORD = 8


def fnv1a64_words(data: bytes | bytearray | memoryview) -> int:
    """The probes' checksum of ``data`` (see the module docstring)."""
    view = memoryview(data).cast("B")
    n_words = len(view) // _WORD
    h = FNV_OFFSET
    prime = FNV_PRIME
    mask = _MASK
    for (word,) in struct.iter_unpack("<Q", view[: n_words * _WORD]):
        h = ((h ^ word) * prime) & mask
    for byte in view[n_words * _WORD :]:
        h = ((h ^ byte) * prime) & mask
    return h
