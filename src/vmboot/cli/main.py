"""The ``vmboot`` command: one verb per module in this package.

Each verb module exposes ``add_parser(subparsers)``, which adds its sub-parser and
sets ``func`` (a handler taking the parsed arguments and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from vmboot import __version__
from vmboot.errors import VmbootError

VERB_MODULES: tuple[str, ...] = (
    "vmboot.cli.demo",
    "vmboot.cli.run",
    "vmboot.cli.exec",
    "vmboot.cli.inspect",
    "vmboot.cli.symbolize",
    "vmboot.cli.report",
    "vmboot.cli.trace",
    "vmboot.cli.fetch",
    "vmboot.cli.cache",
    "vmboot.cli.net",
)
"""Verb modules, in the order ``--help`` lists them."""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, as a shell reports a command whose reader went away (``vmboot ... | head``)."""

EPILOG = """\
examples:
  vmboot exec -- uname -a                      boot the kernel vmboot ships, run one command in it
  vmboot run bzImage --initrd initramfs.cpio --append "console=ttyS0 reboot=k panic=-1"
  vmboot demo                                  boot the bundled probe kernel and show what it checked
  vmboot inspect /boot/vmlinuz-$(uname -r)     decode a kernel's boot protocol header
  dmesg | vmboot symbolize --kernel bzImage    name the kernel addresses in a log
  vmboot report console.log                    the kernel's reports in a saved log, and one verdict
  vmboot trace vmcore.1.panic --kernel bzImage every CPU's kernel stack in a vmcore
  vmboot fetch kernel                          download a Debian cloud kernel into the vmboot cache
  vmboot cache ls                              what the cache holds (downloads, saved guests)
  vmboot net tap-create tap0 --user $USER      the ip commands for a TAP device (--net tap=tap0)

Run `vmboot VERB --help` for each verb's options.
"""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every verb; with ``argv`` (the command's words) naming a verb, of that
    verb alone: one verb module imported, not all ten."""
    parser = argparse.ArgumentParser(
        prog="vmboot",
        description="Boot Linux x86_64 kernels straight into 64-bit mode under KVM, "
        "and inspect them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vmboot {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: info, -vv: debug) to stderr")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in verb_modules(argv):
        importlib.import_module(name).add_parser(sub)
    return parser


def verb_modules(argv: Sequence[str] | None) -> tuple[str, ...]:
    """The verb module ``argv`` names (its first word not starting with ``-``; a verb's
    module is ``vmboot.cli.<verb>``), else all of them (no ``argv``, help, a wrong verb, no
    verb)."""
    words = [w for w in argv or () if not w.startswith("-")]
    named = f"{__package__}.{words[0]}" if words else ""
    return (named,) if named in VERB_MODULES else VERB_MODULES


def main(argv: Sequence[str] | None = None) -> int:
    """The ``vmboot`` command. A reader that goes away early (``| head``) ends it quietly."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, so that a closed pipe is seen now, not at interpreter exit
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    return code


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
    if args.verb is None:
        parser.print_help()
        return EXIT_USAGE
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="vmboot: %(levelname)s: %(message)s")
    try:
        code: int = args.func(args)
    except VmbootError as e:
        print(f"vmboot {args.verb}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"vmboot {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
