"""``vmboot report LOG``: the kernel reports in a saved console log, and one verdict."""

from __future__ import annotations

import argparse
import json
import sys

from vmboot.errors import UsageError

DESCRIPTION = """\
Read a console log (from vmboot, QEMU, a CI system or a bug tracker; timestamps and
caller ids or none; kernels 4.x to 6.x) and print its verdict and every kernel report in
it: the oopses, BUG:s, WARNINGs, panics, soft lockups, hung tasks, RCU stalls, and the
reports of KASAN, KMSAN, KCSAN, KFENCE, UBSAN, lockdep, kmemleak, refcount and
might_sleep. Each report gets a type, its line range in the log, its frames, and a stable
one-line title naming the bug and the function it happened in, as kernel CI systems
group crashes (e.g. "WARNING in dev_watchdog", "KASAN: use-after-free Read in
tcp_close"). Frames the kernel printed as bare addresses are symbolised from --kernel,
--vmlinux or --system-map, moved by the log's "Kernel Offset:" (KASLR) unless --slide
is given.
"""

EPILOG = """\
examples:
  vmboot report console.log
  vmboot run bzImage --initrd initramfs.cpio 2>&1 | tee run.log; vmboot report run.log --json
  vmboot report - --json < saved-console.log
  vmboot report --kernel bzImage old-4.19.log      # names for frames printed as [<addr>]

output: the verdict, then one block per report:
  verdict: oops
  oops: BUG: unable to handle kernel NULL pointer dereference in sysrq_handle_crash
    lines 412-448
    sysrq_handle_crash+0x16
    __handle_sysrq+0x9b
    ...
--json prints one object:
  {"verdict": "oops", "reports": [{"type": "oops", "title": "...", "first_line": 412,
   "last_line": 448, "frames": [{"symbol": "sysrq_handle_crash", "offset": 22}, ...]}]}
  ("reports": [] for a log without a kernel report).

verdicts: ok, panic, oops, bug, warning, soft-lockup, hung-task, rcu-stall (from a log;
  a run can also end in command-failed, timeout, triple-fault or emulation-failure).

exit status: 0 no kernel report, 1 at least one report, 2 bad arguments or unreadable log.
"""

EXIT_NO_REPORT = 0
EXIT_REPORTS = 1
FRAME_INDENT = "    "


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="the kernel reports in a console log, and one verdict",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("log", metavar="LOG", help="a console log file, or - for standard input")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--kernel", metavar="IMAGE",
                   help="a bzImage or vmlinux whose kallsyms name bare-address frames")
    p.add_argument("--vmlinux", metavar="FILE", help="a vmlinux with .symtab, for the same")
    p.add_argument("--system-map", metavar="FILE", help="a System.map, for the same")
    p.add_argument("--slide", metavar="HEX", default=None,
                   help="KASLR slide (default: the log's 'Kernel Offset:', else 0)")
    p.set_defaults(func=handler)


def read_log(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"LOG: cannot read {path!r}: {e.strerror}; give a console log file "
                         f"or - for standard input") from None


def _slide(args: argparse.Namespace, log: str) -> int:
    if args.slide is not None:
        from vmboot.cli.symbolize import parse_address

        text = str(args.slide)
        return parse_address(text.lstrip("-+")) * (-1 if text.startswith("-") else 1)
    from vmboot.report.lines import kernel_offset

    return kernel_offset(log) or 0


def handler(args: argparse.Namespace) -> int:
    from vmboot.report import read_console

    log = read_log(args.log).decode("utf-8", "replace")
    symbolize = None
    if args.kernel or args.vmlinux or args.system_map:
        from vmboot.debug.symbol_sources import load_symbols

        table = load_symbols(vmlinux=args.vmlinux, system_map=args.system_map,
                             kernel=args.kernel).slid(_slide(args, log))

        def symbolize(address: int) -> str | None:
            match = table.lookup(address)
            return str(match) if match.known else None

    reading = read_console(log, symbolize=symbolize)
    if args.json:
        print(json.dumps(reading.as_dict(), sort_keys=True))
    else:
        print(f"verdict: {reading.verdict.value}")
        for report in reading.reports:
            print(f"{report.type.value}: {report.title}")
            print(f"{FRAME_INDENT}lines {report.first_line}-{report.last_line}")
            for frame in report.frames:
                where = frame.symbol or "??"
                if frame.offset is not None:
                    where += f"+{frame.offset:#x}"
                if frame.symbol is None and frame.address is not None:
                    where = f"{frame.address:#x}"
                print(f"{FRAME_INDENT}{where}")
    return EXIT_REPORTS if reading.reports else EXIT_NO_REPORT
