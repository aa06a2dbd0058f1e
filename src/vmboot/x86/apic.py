"""Local APIC registers and LVT delivery modes (Intel SDM vol. 3, 11.5.1)."""

from __future__ import annotations

import enum

APIC_REG_LVT_LINT0 = 0x350
APIC_REG_LVT_LINT1 = 0x360
APIC_LVT_DELIVERY_MODE_SHIFT = 8
APIC_LVT_DELIVERY_MODE_MASK = 0x7 << APIC_LVT_DELIVERY_MODE_SHIFT


class LvtDelivery(enum.IntEnum):
    """The delivery mode field of a local vector table entry."""

    FIXED = 0x0
    SMI = 0x2
    NMI = 0x4
    INIT = 0x5
    EXTINT = 0x7
