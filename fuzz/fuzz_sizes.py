"""Command-line numbers: parse_size ("256M"), addresses ("ffffffff81000000", "[<...>]"),
log scraping, and the argument handling of ``vmboot symbolize`` and ``vmboot run -m``.

Only UsageError/VmbootError (or argparse's usage exit, status 2) may come out.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import contextlib
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

from fuzz.harness import Target, atheris_main
from vmboot.cli.main import main
from vmboot.cli.symbolize import addresses_in_log, parse_address
from vmboot.errors import VmbootError
from vmboot.units import format_size, parse_size
from vmboot.vmm.machine import Machine

SEEDS = [b"256M", b"0x1000", b"1.5G", b"64MiB", b"512kb", b" 4096 ", b"1T", b"0.5K", b"-1", b"1e3",
         b"ffffffff81000000", b"0xffffffff81000000", b"[<ffffffff8100abcd>]", b"-0x1000",
         b"\xd9\xa1\xd9\xa2M", b"1" * 40, b"9" * 20 + b"T", b"1" * 4000 + b"K"]
_map: Path | None = None


def _system_map() -> str:
    global _map
    if _map is None:
        fd, name = tempfile.mkstemp(prefix="vmboot-fuzz-", suffix=".map")
        with open(fd, "wb") as f:
            f.write(b"ffffffff81000000 T _text\nffffffff81000100 t do_thing\n")
        _map = Path(name)
    return str(_map)


def _cli(argv: list[str]) -> None:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            status = main(argv)
    except SystemExit as exc:  # argparse: a usage error exits with status 2
        assert exc.code == 2, f"argparse exited with {exc.code!r}"
        return
    assert status in (0, 1, 2), status


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    head, _, tail = text.partition("\n")
    parsers: tuple[Callable[[], int], ...] = (lambda: parse_size(head, "memory"), lambda: parse_address(head))
    for fn in parsers:
        try:
            value = fn()
        except VmbootError:
            continue
        assert isinstance(value, int) and value >= 0
    try:
        n = parse_size(head)
    except VmbootError:
        n = None
    if n is not None:
        shown = format_size(n)
        if not shown.endswith("bytes"):
            assert parse_size(shown) == n, (head, shown)
    addresses_in_log(text)
    with contextlib.suppress(VmbootError):
        Machine(b"", memory=head)
    # "--slide=X" and "--" as a careful user writes them: the text is never taken for an
    # option (e.g. "-h", which prints help and exits 0)
    _cli(["symbolize", "--system-map", _system_map(), f"--slide={head or '0'}", "--",
          tail or "ffffffff81000000"])


TARGET = Target("sizes", one_input, lambda: list(SEEDS), max_len=8192,
                description="parse_size, parse_address, log addresses, symbolize --slide, Machine(memory=)")

if __name__ == "__main__":
    atheris_main(TARGET)
