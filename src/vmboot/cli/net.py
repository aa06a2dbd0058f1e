"""``vmboot net tap-create NAME``: print (or, with --run, run) the ``ip`` commands that make
a TAP interface for ``--net tap=NAME``."""

from __future__ import annotations

import argparse
import sys

from vmboot.net.tap_create import DEFAULT_ADDRESS, render, run_commands, tap_create_commands

EPILOG = """\
examples:
  vmboot net tap-create tap0 --user $USER
      print the ip commands that make tap0 (vnet header, owned by you, 172.30.0.1/24 on it)
  sudo vmboot net tap-create tap0 --user $USER --run
      run them instead (needs CAP_NET_ADMIN); then: vmboot run bzImage --net tap=tap0
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("net", help="host-side network set-up for --net tap=NAME", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="net_verb", metavar="ACTION", required=True)
    c = verbs.add_parser("tap-create", help="print (or run) the ip commands that make a TAP "
                         "interface with the vnet header")
    c.add_argument("name", metavar="NAME", help="the interface name (up to 15 bytes)")
    c.add_argument("--user", metavar="USER", default=None,
                   help="the user who may open it (so vmboot needs no privileges)")
    c.add_argument("--address", metavar="ADDR/PREFIX", default=DEFAULT_ADDRESS,
                   help=f"the host's address on the link (default: {DEFAULT_ADDRESS}; "
                        "'' for none)")
    c.add_argument("--run", action="store_true",
                   help="run the commands (needs CAP_NET_ADMIN) instead of printing them")
    c.set_defaults(func=tap_create)


def tap_create(args: argparse.Namespace) -> int:
    commands = tap_create_commands(args.name, args.user, args.address or None)
    if args.run:
        run_commands(commands)
    else:
        sys.stdout.write(render(commands))
    return 0
