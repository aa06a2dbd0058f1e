"""Segment registers and descriptor-table registers as the CPU holds them (Intel SDM vol. 3, 3.4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Segment:
    """A segment register with its hidden descriptor cache (as ``struct kvm_segment``)."""

    base: int = 0
    limit: int = 0
    selector: int = 0
    type: int = 0
    present: bool = False
    dpl: int = 0
    db: bool = False
    s: bool = False
    l: bool = False  # noqa: E741 - the architectural name of the 64-bit code flag
    g: bool = False
    avl: bool = False
    unusable: bool = False


@dataclass(frozen=True, slots=True)
class DescriptorTable:
    """GDTR or IDTR: a linear base and a limit (size - 1)."""

    base: int = 0
    limit: int = 0
