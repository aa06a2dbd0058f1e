"""Bits of CR0, CR4, EFER and RFLAGS (Intel SDM vol. 3, 2.5; AMD APM vol. 2, 3.1)."""

from __future__ import annotations

# CR0
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_EM = 1 << 2
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31

# CR3
CR3_PCID_MASK = 0xFFF
CR3_NOFLUSH = 1 << 63
CR3_ADDR_MASK = 0x000F_FFFF_FFFF_F000

# CR4
CR4_VME = 1 << 0
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_PGE = 1 << 7
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
CR4_LA57 = 1 << 12
CR4_FSGSBASE = 1 << 16
CR4_PCIDE = 1 << 17
CR4_OSXSAVE = 1 << 18
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21

# EFER (MSR 0xC0000080)
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

# RFLAGS
RFLAGS_RESERVED_1 = 1 << 1
"""Bit 1 of RFLAGS always reads as 1."""
RFLAGS_IF = 1 << 9
