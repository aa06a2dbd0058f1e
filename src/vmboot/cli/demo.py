"""``vmboot demo``: boot the bundled probe kernel under KVM and show what it checked."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vmboot.errors import KvmUnavailableError

DESCRIPTION = """\
Boot vmboot's bundled probe kernel (a tiny bzImage that ships with vmboot) under KVM,
exactly as a Linux kernel is booted, with a sample command line and initrd. The probe
checks the Linux/x86 64-bit boot contract from inside the guest -- long mode, the
identity-mapped page tables, the boot GDT and segment selectors, interrupts off, the
zero page with its command line, initrd and E820 map, the stack, its own load address --
and reports what it saw; vmboot compares each observation with what it asked for.

Needs /dev/kvm (read and write access); no kernel, binutils or network.
"""

EPILOG = """\
exit status:
  0    every check passed
  1    a check failed, the probe did not finish, or KVM is not usable (the message says why)

examples:
  vmboot demo
  vmboot demo --json | jq '.checks[] | select(.ok | not)'
      the JSON object has: ok, kind, exit {reason, detail}, checks [{name, expected,
      observed, ok}], timings {setup, run, verify} (seconds), exits, plan {...},
      cmdline, initrd_size
"""

SAMPLE_CMDLINE = "console=ttyS0 root=/dev/ram0 rdinit=/init vmboot.demo=1"
SAMPLE_MEMORY = 64 << 20
EXIT_OK = 0
EXIT_FAILED = 1
COLUMN_LIMIT = 40
"""Longer cells are shown in full on a continuation line."""


def sample_initrd() -> bytes:
    """A small uncompressed newc initramfs, the kind of initrd a real boot would get."""
    from vmboot.initramfs import build_initramfs, entries_from_memory

    return build_initramfs(entries_from_memory({
        "init": "#!/bin/sh\necho 'hello from the vmboot demo initramfs'\n",
        "etc/motd": "vmboot demo: this file only checks that the initrd arrives intact\n" * 8,
    }), mtime=0)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="boot the bundled probe kernel under KVM and print every boot-contract check",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object for programs")
    p.add_argument("--kvm-device", default="/dev/kvm", metavar="PATH",
                   help="the KVM device node (default: /dev/kvm)")
    p.set_defaults(func=run)


def _cell(text: str) -> str:
    return text if len(text) <= COLUMN_LIMIT else text[: COLUMN_LIMIT - 3] + "..."


def format_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    header = ("check", "expected", "observed", "ok")
    cells = [header, *[(n, _cell(e), _cell(o), k) for n, e, o, k in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(3)]
    lines = []
    for i, r in enumerate(cells):
        lines.append("  ".join(r[c].ljust(widths[c]) for c in range(3)) + "  " + r[3])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  --")
        else:
            full = rows[i - 1]
            for label, value in (("expected", full[1]), ("observed", full[2])):
                if len(value) > COLUMN_LIMIT:
                    lines.append(f"    {label}: {value}")
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def run(args: argparse.Namespace) -> int:
    from vmboot.linux import BootOptions, BootPlan
    from vmboot.probes import probe_path, run_probe

    initrd = sample_initrd()
    options = BootOptions(cmdline=SAMPLE_CMDLINE, initrd=initrd)
    try:
        result = run_probe("bzimage", options, memory=SAMPLE_MEMORY, kvm_device=args.kvm_device)
    except KvmUnavailableError as e:
        message = (f"vmboot demo needs KVM, and it is not usable here: {e}")
        if args.json:
            print(json.dumps({"ok": False, "error": message}))
        print(f"vmboot demo: error: {message}", file=sys.stderr)
        return EXIT_FAILED

    if args.json:
        data: dict[str, Any] = result.as_dict()
        data["cmdline"] = SAMPLE_CMDLINE
        data["initrd_size"] = len(initrd)
        print(json.dumps(data, indent=2))
        return EXIT_OK if result.ok else EXIT_FAILED

    plan = result.plan
    print(f"vmboot demo: booted {probe_path('bzimage').name} (the bundled probe kernel) under KVM")
    tables = (f"; zero page {plan.zero_page_gpa:#x}; page tables {plan.paging_base:#x} "
              f"({plan.address_space_gib} GiB identity-mapped)" if isinstance(plan, BootPlan) else "")
    print(f"  memory {SAMPLE_MEMORY >> 20} MiB; kernel at {plan.load_addr:#x}, "
          f"entry {plan.entry_gpa:#x}{tables}")
    print(f"  cmdline {SAMPLE_CMDLINE!r} at {plan.cmdline_gpa:#x}; initrd {len(initrd)} bytes "
          f"(newc cpio) at {(plan.initrd_gpa or 0):#x}")
    print()
    rows = [(c.name, c.expected, c.observed, "ok" if c.ok else "FAIL") for c in result.checks]
    for line in format_table(rows):
        print(line)
    print()
    passed = sum(c.ok for c in result.checks)
    print(f"{passed} of {len(result.checks)} checks passed; run ended: {result.exit.one_line()}")
    t = result.timings
    print(f"timings: set-up {_ms(t.setup)}, guest run {_ms(t.run)} ({result.exit_count} exits), "
          f"verify {_ms(t.verify)}")
    if not result.ok:
        print("vmboot demo: the boot contract was NOT met; see the FAIL rows above", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
