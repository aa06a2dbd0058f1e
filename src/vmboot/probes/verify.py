"""Compare what a probe observed inside the guest with what the host asked for.

EXPECTED values come from the :class:`~vmboot.linux.BootPlan` and the
:class:`~vmboot.linux.BootOptions` (and the boot contract itself); OBSERVED values only
from the probe's report. A value the probe did not send is "not reported" and fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from vmboot.linux import bootparam as bp
from vmboot.linux.configurator.e820 import E820Entry, E820Type, pack_table
from vmboot.linux.configurator.plan import BootPlan
from vmboot.linux.options import BootOptions
from vmboot.probes.checksum import fnv1a64_words
from vmboot.probes.protocol import MAP_SAMPLE_OFFSET, PROBE_MAGIC, PROTOCOL_VERSION, EntryKind, Key
from vmboot.probes.report import ProbeReport
from vmboot.x86 import cr
from vmboot.x86.gdt import decode_descriptor
from vmboot.x86.paging import PAGE_SIZE_1G, PAGE_SIZE_2M

NOT_REPORTED = "not reported"
RETURN_ADDRESS_SIZE = 8
"""Bytes a 64-bit CALL pushes."""
CODE_SEGMENT_TYPE = 1 << 3
"""Descriptor type bit 3: executable (code)."""
DATA_WRITABLE_TYPE = 1 << 1
"""Descriptor type bit 1 for data: writable."""
FLAT_LIMIT = 0xFFFFFFFF
DESCRIPTOR_SIZE = 8
_HELLO = PROBE_MAGIC | PROTOCOL_VERSION << 32


@dataclass(frozen=True)
class Check:
    """One boot-contract check: what the host expected, what the guest saw, and whether they agree."""

    name: str
    expected: str
    observed: str
    ok: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _hex(value: int | None) -> str:
    return NOT_REPORTED if value is None else f"{value:#x}"


def _dec(value: int | None) -> str:
    return NOT_REPORTED if value is None else str(value)


def equal(name: str, expected: int, observed: int | None, *, decimal: bool = False) -> Check:
    """``observed == expected`` (shown in hex, or in decimal for counts and lengths)."""
    fmt = _dec if decimal else _hex
    return Check(name, fmt(expected), fmt(observed), observed == expected)


def _flags(value: int | None, bits: Sequence[tuple[str, int]]) -> str:
    if value is None:
        return NOT_REPORTED
    return f"{value:#x} (" + ", ".join(f"{n}={int(bool(value & b))}" for n, b in bits) + ")"


def bits_set(name: str, value: int | None, required: Sequence[tuple[str, int]],
             cleared: Sequence[tuple[str, int]] = ()) -> Check:
    """``value`` has every bit of ``required`` set and every bit of ``cleared`` clear."""
    expected = ", ".join([f"{n}=1" for n, _ in required] + [f"{n}=0" for n, _ in cleared])
    ok = value is not None and all(value & b for _, b in required) and not any(
        value & b for _, b in cleared)
    return Check(name, expected, _flags(value, [*required, *cleared]), ok)


def describe_descriptor(raw: int | None) -> str:
    if raw is None:
        return NOT_REPORTED
    s = decode_descriptor(raw)
    kind = "code" if s.type & CODE_SEGMENT_TYPE else "data"
    return (f"{raw:#018x}: {kind} L={int(s.l)} D={int(s.db)} P={int(s.present)} DPL={s.dpl} "
            f"S={int(s.s)} type={s.type:#x} base={s.base:#x} limit={s.limit:#x}")


def code64_descriptor(name: str, raw: int | None) -> Check:
    expected = "64-bit code: L=1 D=0 P=1 DPL=0"
    ok = False
    if raw is not None:
        s = decode_descriptor(raw)
        ok = (s.present and s.s and s.dpl == 0 and bool(s.type & CODE_SEGMENT_TYPE) and s.l
              and not s.db)
    return Check(name, expected, describe_descriptor(raw), ok)


def flat_descriptor(name: str, raw: int | None, *, code: bool) -> Check:
    """A flat 4 GiB 32-bit segment: code (execute/read) or data (read/write)."""
    what = "code" if code else "data RW"
    expected = f"flat {what}: 4 GiB D=1 P=1 DPL=0"
    ok = False
    if raw is not None:
        s = decode_descriptor(raw)
        kind_ok = bool(s.type & CODE_SEGMENT_TYPE) if code else (
            not s.type & CODE_SEGMENT_TYPE and bool(s.type & DATA_WRITABLE_TYPE))
        ok = (s.present and s.s and s.dpl == 0 and kind_ok and s.base == 0
              and s.limit == FLAT_LIMIT and s.db and not s.l)
    return Check(name, expected, describe_descriptor(raw), ok)


def report_complete(report: ProbeReport, exit_detail: str) -> Check:
    """The DONE record arrived, counting every record before it, and no protocol error."""
    sent = report.value(Key.DONE)
    received = report.records_before_done
    if sent is None:
        observed = f"no DONE record after {received} records; run ended: {exit_detail}"
    else:
        observed = f"DONE: {sent} sent, {received} received"
    if report.errors:
        observed += "; protocol errors: " + "; ".join(report.errors[:3])
    ok = sent is not None and sent == received and not report.errors
    return Check("probe report complete", "DONE, nothing lost",
                 observed, ok)


def entry_kind(report: ProbeReport, expected: EntryKind) -> list[Check]:
    hello = report.find(Key.HELLO)
    magic = None if hello is None else hello.u64(0)
    kind = None if hello is None else hello.u64(1)
    try:
        kind_text = NOT_REPORTED if kind is None else EntryKind(kind).name
    except ValueError:
        kind_text = f"unknown kind {kind}"
    return [
        Check("probe identity", f"{_HELLO:#x} (VMBP v{PROTOCOL_VERSION})", _hex(magic),
              magic == _HELLO),
        Check("entry point used", expected.name, kind_text, kind == expected),
    ]


def _e820_text(entries: Sequence[E820Entry]) -> str:
    return f"{len(entries)} entries"


def verify(
    report: ProbeReport,
    plan: BootPlan,
    options: BootOptions,
    initrd_bytes: bytes | None = None,
    *,
    header_version: int | None = None,
    kind: EntryKind = EntryKind.BZIMAGE64,
    exit_detail: str = "",
) -> list[Check]:
    """Every check of the 64-bit boot contract, for a bzImage or ELF64 probe run.

    ``initrd_bytes``: the initrd the host loaded (default: read from ``options``).
    ``header_version``: the boot protocol version the zero page must carry (the kernel's);
    None accepts any version from 2.12 (the first with a 64-bit entry) on.
    """
    r = report
    checks: list[Check] = [report_complete(r, exit_detail), *entry_kind(r, kind)]

    # where the kernel runs
    checks.append(equal("entry RIP (RIP-relative LEA)", plan.entry_gpa, r.value(Key.ENTRY_ADDR)))
    checks.append(equal("load address (RIP-relative LEA)", plan.load_addr, r.value(Key.IMAGE_START)))

    # CPU mode
    checks.append(bits_set("EFER (long mode)", r.value(Key.EFER),
                           [("LME", cr.EFER_LME), ("LMA", cr.EFER_LMA)]))
    checks.append(bits_set("CR0", r.value(Key.CR0), [("PE", cr.CR0_PE), ("PG", cr.CR0_PG)]))
    checks.append(bits_set("CR4", r.value(Key.CR4), [("PAE", cr.CR4_PAE)]))
    cr3 = r.value(Key.CR3)
    checks.append(equal("CR3 (page tables)", plan.paging_base,
                        None if cr3 is None else cr3 & cr.CR3_ADDR_MASK))
    checks.append(bits_set("RFLAGS (interrupts off)", r.value(Key.ENTRY_FLAGS), [],
                           [("IF", cr.RFLAGS_IF)]))

    # segments and the GDT
    checks.append(equal("CS selector", bp.BOOT_CS, r.value(Key.SEL_CS)))
    for name, key in (("DS", Key.SEL_DS), ("ES", Key.SEL_ES), ("SS", Key.SEL_SS)):
        checks.append(equal(f"{name} selector", bp.BOOT_DS, r.value(key)))
    checks.append(equal("GDT base (SGDT)", plan.gdt_gpa, r.value(Key.GDT_BASE)))
    limit = r.value(Key.GDT_LIMIT)
    need = bp.BOOT_DS + DESCRIPTOR_SIZE - 1
    checks.append(Check("GDT limit (SGDT)", f">= {need:#x} (covers __BOOT_DS)", _hex(limit),
                        limit is not None and limit >= need))
    checks.append(code64_descriptor(f"GDT[{bp.BOOT_CS:#x}] __BOOT_CS",
                                    r.value(Key.GDT_DESC, bp.BOOT_CS)))
    checks.append(flat_descriptor(f"GDT[{bp.BOOT_DS:#x}] __BOOT_DS",
                                  r.value(Key.GDT_DESC, bp.BOOT_DS), code=False))

    # the zero page
    checks.append(equal("RSI (zero page)", plan.zero_page_gpa, r.value(Key.ENTRY_RSI)))
    magic = r.value(Key.BP_MAGIC)
    want_magic = int.from_bytes(bp.HEADER_MAGIC, "little")
    checks.append(Check("zero page header magic", repr(bp.HEADER_MAGIC.decode()),
                        NOT_REPORTED if magic is None else repr(
                            (magic & 0xFFFFFFFF).to_bytes(4, "little").decode("latin-1")),
                        magic == want_magic))
    version = r.value(Key.BP_VERSION)
    if header_version is None:
        checks.append(Check("zero page protocol version", f">= {bp.MIN_64BIT_PROTOCOL:#06x}",
                            _hex(version),
                            version is not None and version >= bp.MIN_64BIT_PROTOCOL))
    else:
        checks.append(equal("zero page protocol version", header_version, version))

    # command line
    cmdline = options.cmdline_bytes()
    checks.append(equal("cmd_line_ptr", plan.cmdline_gpa, r.value(Key.CMDLINE_PTR)))
    checks.append(equal("cmdline length", len(cmdline), r.value(Key.CMDLINE_LEN), decimal=True))
    checks.append(equal("cmdline checksum", fnv1a64_words(cmdline), r.value(Key.CMDLINE_SUM)))

    # initrd
    initrd = (options.initrd_bytes() if initrd_bytes is None else initrd_bytes) or b""
    checks.append(equal("initrd address (ramdisk_image)",
                        (plan.initrd_gpa or 0) if initrd else 0, r.value(Key.INITRD_ADDR)))
    checks.append(equal("initrd size (ramdisk_size)", len(initrd), r.value(Key.INITRD_SIZE), decimal=True))
    unmapped = r.value(Key.INITRD_UNMAPPED)
    observed_sum = r.value(Key.INITRD_SUM)
    sum_check = equal("initrd checksum", fnv1a64_words(initrd), observed_sum)
    if unmapped is not None:
        sum_check = Check(sum_check.name, sum_check.expected,
                          f"initrd at {unmapped:#x} is outside the identity map", False)
    checks.append(sum_check)

    # E820
    e820 = list(options.e820) if options.e820 is not None else list(plan.e820)
    in_zero_page = e820[: bp.E820_MAX_ENTRIES_ZEROPAGE]
    checks.append(equal("E820 entries", len(in_zero_page), r.value(Key.E820_COUNT), decimal=True))
    checks.append(equal("E820 table checksum", fnv1a64_words(pack_table(in_zero_page)),
                        r.value(Key.E820_SUM)))

    checks.extend(identity_map_checks(r, plan.address_space_gib))
    checks.append(ram_touch_check(r, e820))

    # stack
    checks.append(equal("RSP (stack top)", plan.stack_top_gpa, r.value(Key.ENTRY_SP)))
    call_ok = r.value(Key.STACK_CALL)
    sp_in_call = r.value(Key.STACK_SP_IN_CALL)
    want_sp = plan.stack_top_gpa - RETURN_ADDRESS_SIZE
    checks.append(Check(
        "stack usable (CALL/RET, PUSH/POP)",
        f"ret addr at {want_sp:#x}, push/pop ok",
        NOT_REPORTED if call_ok is None or sp_in_call is None else
        f"ret addr at {sp_in_call:#x}, " + ("push/pop ok" if call_ok == 1 else "mismatch"),
        call_ok == 1 and sp_in_call == want_sp,
    ))
    return checks


def identity_map_checks(r: ProbeReport, address_space_gib: int) -> list[Check]:
    """The page tables at CR3 map exactly the first ``address_space_gib`` GiB to themselves."""
    pages_per_gib = PAGE_SIZE_1G // PAGE_SIZE_2M
    checks = [
        equal("identity map: GiB mapped", address_space_gib, r.value(Key.MAP_GIB), decimal=True),
        equal("identity map: identity 2 MiB pages", address_space_gib * pages_per_gib,
              r.value(Key.MAP_IDENTITY_PAGES), decimal=True),
    ]
    samples = r.indexed(Key.MAP_SAMPLE)
    bad: list[str] = []
    for g in range(address_space_gib):
        rec = samples.get(g)
        va = g * PAGE_SIZE_1G + MAP_SAMPLE_OFFSET
        got_va = None if rec is None else rec.u64(0)
        pa = None if rec is None else rec.u64(1)
        if got_va != va or pa != va:
            bad.append(f"{va:#x} -> {_hex(pa)}")
    extra = sorted(set(samples) - set(range(address_space_gib)))
    observed = f"{len(samples)}" + (
        ", each virtual == physical" if not bad else ", wrong: " + ", ".join(bad[:4]))
    if extra:
        observed += f", unexpected GiB {extra[:4]}"
    checks.append(Check("identity map: samples (1 per GiB)",
                        f"{address_space_gib}, each virtual == physical", observed,
                        not bad and not extra))
    return checks


def ram_touch_check(r: ProbeReport, e820: Sequence[E820Entry]) -> Check:
    """Every RAM word the probe wrote read back, and lay in an E820 RAM entry."""
    touches = r.indexed(Key.TOUCH)
    count = r.value(Key.TOUCH_COUNT)
    ram = [e for e in e820 if e.type == E820Type.RAM]
    failed: list[str] = []
    for rec in touches.values():
        addr, ok = rec.u64(0), rec.u64(1)
        if addr is None or ok != 1:
            failed.append(f"{_hex(addr)} did not read back")
        elif not any(e.addr <= addr and addr + RETURN_ADDRESS_SIZE <= e.end for e in ram):
            failed.append(f"{addr:#x} is not in E820 RAM")
    if count is None:
        observed = NOT_REPORTED
    else:
        observed = f"{count} words read back" if not failed else "; ".join(failed[:4])
    ok = count is not None and count > 0 and count == len(touches) and not failed
    return Check("RAM write/read-back",
                 f"all read back, in E820 RAM ({_e820_text(ram)})",
                 observed, ok)
