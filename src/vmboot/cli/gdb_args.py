"""``--gdb HOST:PORT|unix:PATH`` and ``--gdb-wait``: the options that attach a gdb stub."""

from __future__ import annotations

import argparse

from vmboot.errors import UsageError
from vmboot.gdbstub.address import LISTEN_FORMS, ListenAddress, parse_listen_address


def _address(text: str) -> ListenAddress:
    try:
        return parse_listen_address(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_gdb_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("debugging with gdb")
    group.add_argument("--gdb", metavar="ADDRESS", type=_address,
                       help=f"serve the GDB remote protocol on {LISTEN_FORMS}: one thread per vCPU, "
                            "registers, memory through the guest's page tables, hardware "
                            "breakpoints, single steps, Ctrl-C; qOffsets answers with the KASLR "
                            "slide, so `file vmlinux` lines up without nokaslr")
    group.add_argument("--gdb-wait", action="store_true",
                       help="do not start the guest until gdb has connected")


def check_gdb_arguments(args: argparse.Namespace) -> None:
    if args.gdb_wait and args.gdb is None:
        raise UsageError("--gdb-wait needs --gdb ADDRESS (where gdb connects)")
