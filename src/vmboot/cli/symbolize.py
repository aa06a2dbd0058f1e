"""``vmboot symbolize``: turn kernel addresses (from a log) into ``symbol+0xoff/0xsize``."""

from __future__ import annotations

import argparse
import json
import re
import sys

from vmboot.errors import UsageError

DESCRIPTION = """\
Look up kernel addresses in a symbol table: the .symtab of a vmlinux, a System.map, or
the kallsyms tables inside a kernel image (bzImage or vmlinux; no debug package needed).
Addresses may be written as in a kernel log: ffffffff8100abcd, 0xffffffff8100abcd or
[<ffffffff8100abcd>]. With no ADDR, every such address found on standard input is used.
"""

EPILOG = """\
examples:
  vmboot symbolize --vmlinux vmlinux ffffffff81a17010 0xffffffff81000000
  vmboot symbolize --kernel /boot/vmlinuz-$(uname -r) '[<ffffffff81a17010>]'
  dmesg | vmboot symbolize --system-map System.map --json

Output: one line per address, "ADDRESS symbol+0xoffset/0xsize" ("??" when no function
contains it). With --json: a list of {"address": "0x...", "symbol", "offset", "size"}.
"""

ADDRESS_TOKEN = re.compile(r"^\[?<?(?:0[xX])?([0-9a-fA-F]{1,16})>?\]?$")
LOG_ADDRESS = re.compile(r"\[<([0-9a-fA-F]{8,16})>\]|\b(?:0x)?([0-9a-fA-F]{16})\b")
ADDRESS_WIDTH = 16


def parse_address(text: str) -> int:
    """One address as written in a kernel log; :class:`UsageError` otherwise."""
    m = ADDRESS_TOKEN.match(text.strip())
    if not m:
        raise UsageError(f"address {text!r} is not hexadecimal (expected e.g. ffffffff8100abcd, "
                         f"0xffffffff8100abcd or [<ffffffff8100abcd>])")
    return int(m.group(1), 16)


def addresses_in_log(text: str) -> list[int]:
    """Every ``[<hex>]`` or 16-digit hex word in ``text``, in order."""
    return [int(a or b, 16) for a, b in LOG_ADDRESS.findall(text)]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "symbolize",
        help="look up kernel addresses (symbol+offset/size)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--vmlinux", metavar="FILE", help="a vmlinux with .symtab")
    p.add_argument("--system-map", metavar="FILE", help="a System.map")
    p.add_argument("--kernel", metavar="IMAGE", help="a bzImage or vmlinux: use its kallsyms")
    p.add_argument("--slide", metavar="HEX", default="0",
                   help="KASLR slide to add to every symbol (runtime minus link-time address)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("addresses", nargs="*", metavar="ADDR", help="addresses; none: read standard input")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    if not (args.vmlinux or args.system_map or args.kernel):
        raise UsageError("symbolize: give a symbol source: --vmlinux FILE, --system-map FILE "
                         "or --kernel IMAGE")
    slide_text = str(args.slide)
    negative = slide_text.startswith("-")
    slide = parse_address(slide_text.lstrip("-+")) * (-1 if negative else 1)
    if args.addresses:
        addresses = [parse_address(a) for a in args.addresses]
    else:
        addresses = addresses_in_log(sys.stdin.read())
    from vmboot.debug.symbol_sources import load_symbols  # NumPy: only when this verb runs

    table = load_symbols(vmlinux=args.vmlinux, system_map=args.system_map,
                         kernel=args.kernel).slid(slide)
    matches = table.lookup_many(addresses)
    if args.json:
        out = [{"address": f"{m.address:#0{ADDRESS_WIDTH + 2}x}", "symbol": m.name,
                "offset": m.offset, "size": m.size} for m in matches]
        print(json.dumps(out, indent=2))
    else:
        for m in matches:
            print(f"{m.address:0{ADDRESS_WIDTH}x} {m}")
    return 0
