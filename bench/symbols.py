"""Symbol loading and lookup speed on Debian's -dbg vmlinux (~590 MB, ~117,000 symbols).

* load: ``load_vmlinux_symbols()`` with a cold memo cache, against ``nm -n vmlinux``
  (output discarded) measured in the same run. Goal: at most 0.25x nm's time.
* lookups: the batch API (``SymbolTable.lookup_indices``) on 1,000,000 random text
  addresses, and ``SymbolTable.lookup`` called once per address. Goal: > 1,000,000/s.
* kallsyms from the matching vmlinuz (decompression + decoding, cold), against the format's
  own command-line decompressor (``lz4 -dc``, ``xz -dc``, ...) on the same payload with its
  output discarded: the first step of ``scripts/extract-vmlinux``, and the floor of any tool
  that reads symbols from a compressed kernel. No goal; the ratio is the cost of the decode.

Run: ``python bench/symbols.py [--runs N] [--vmlinux PATH] [--kernel PATH]``.
Writes bench/results/symbols.json and prints min / median / max.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import Timing, fmt_s, measure, print_table, summary_row, write_results

from vmboot.debug import clear_symbol_cache, load_kernel_symbols, load_vmlinux_symbols

DECOMPRESSORS = {
    "lz4": ["lz4", "-dc"],
    "gzip": ["gzip", "-dc"],
    "xz": ["xz", "-dc"],
    "lzma": ["xz", "--format=lzma", "-dc"],
    "zstd": ["zstd", "-dc"],
    "bzip2": ["bzip2", "-dc"],
}
"""Payload format (as :func:`vmboot.compression.kernel_payload.detect_compression` names it) -> the
command-line tool that decompresses it (the kallsyms peer)."""
SIZE_TRAILER = 4

BATCH = 1_000_000
SINGLE = 200_000
LOAD_GOAL = 0.25
LOOKUP_GOAL = 1_000_000


def find(explicit: str | None, what: str) -> Path | None:
    if explicit:
        return Path(explicit)
    from debian_kernel import debian_kernel, debian_vmlinux_dbg, skip_reason

    path = debian_vmlinux_dbg() if what == "vmlinux" else debian_kernel()
    if path is None and what == "vmlinux":
        sys.exit(f"no Debian -dbg vmlinux: {skip_reason()} (pass --vmlinux PATH)")
    return path


def decompress_command(kernel: Path, scratch: Path) -> list[str] | None:
    """The CLI that decompresses ``kernel``'s payload (written to ``scratch``), if installed."""
    from vmboot.compression.kernel_payload import detect_compression
    from vmboot.linux import load_bzimage

    view = load_bzimage(kernel).compressed_payload()
    if view is None:
        return None
    command = DECOMPRESSORS.get(detect_compression(view))
    if command is None or shutil.which(command[0]) is None:
        return None
    # The kernel build appends the uncompressed size (u32) to every payload; the tools call
    # it trailing garbage and fail, the kernel's own decompressors stop before it.
    scratch.write_bytes(view[:-SIZE_TRAILER])
    return [*command, str(scratch)]


def rate(count: int, t: Timing) -> dict[str, float]:
    """Lookups per second at the best, median and worst run."""
    return {"best": count / t.min, "median": count / t.median, "worst": count / t.max}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--vmlinux")
    ap.add_argument("--kernel")
    args = ap.parse_args()
    vmlinux = find(args.vmlinux, "vmlinux")
    assert vmlinux is not None
    size_mb = vmlinux.stat().st_size / 1e6
    nm_lines = subprocess.run(["nm", "-n", str(vmlinux)], capture_output=True, check=True).stdout.count(b"\n")

    def load() -> None:
        clear_symbol_cache()
        load_vmlinux_symbols(vmlinux)

    def nm() -> None:
        subprocess.run(["nm", "-n", str(vmlinux)], stdout=subprocess.DEVNULL, check=True)

    t_load = measure(load, args.runs)
    t_nm = measure(nm, args.runs)
    table = load_vmlinux_symbols(vmlinux)
    rng = np.random.default_rng(1)
    lo, hi = int(table.addresses[0]), int(table.ends.max())
    batch = rng.integers(lo, hi, BATCH, dtype=np.uint64)
    singles = batch[:SINGLE].tolist()
    t_batch = measure(lambda: table.lookup_indices(batch), args.runs)

    def single_loop() -> None:
        lookup = table.lookup
        for a in singles:
            lookup(a)

    t_single = measure(single_loop, args.runs)
    kernel = find(args.kernel, "kernel")
    t_kallsyms: Timing | None = None
    t_unpack: Timing | None = None
    unpack: list[str] | None = None
    if kernel is not None:
        def kallsyms() -> None:
            clear_symbol_cache()
            load_kernel_symbols(kernel)
        t_kallsyms = measure(kallsyms, max(3, args.runs // 2))
        with tempfile.TemporaryDirectory(prefix="vmboot-bench-") as tmp:
            unpack = decompress_command(kernel, Path(tmp) / "payload")
            if unpack is not None:
                command_line = unpack

                def decompress_only() -> None:
                    subprocess.run(command_line, stdout=subprocess.DEVNULL, check=True)
                t_unpack = measure(decompress_only, max(3, args.runs // 2))

    ratio = t_load.median / t_nm.median
    batch_rate, single_rate = rate(BATCH, t_batch), rate(SINGLE, t_single)
    print(f"{vmlinux} ({size_mb:.0f} MB, nm -n lists {nm_lines} symbols; {len(table)} function "
          f"symbols loaded); {args.runs} runs")
    rows = [
        ["load_vmlinux_symbols (cold)", fmt_s(t_load.min), fmt_s(t_load.median), fmt_s(t_load.max),
         f"{ratio:.3f}x nm"],
        ["nm -n (peer)", fmt_s(t_nm.min), fmt_s(t_nm.median), fmt_s(t_nm.max), "1.000x"],
        [f"lookup_indices, {BATCH:,} addrs", fmt_s(t_batch.min), fmt_s(t_batch.median),
         fmt_s(t_batch.max), f"{batch_rate['median'] / 1e6:.2f} M/s"],
        [f"lookup() x {SINGLE:,}", fmt_s(t_single.min), fmt_s(t_single.median), fmt_s(t_single.max),
         f"{single_rate['median'] / 1e6:.2f} M/s"],
    ]
    if t_kallsyms is not None:
        figure = "(no decompressor CLI)" if t_unpack is None else \
            f"{t_kallsyms.median / t_unpack.median:.2f}x decompress"
        rows.append(["kallsyms from vmlinuz (cold)", fmt_s(t_kallsyms.min), fmt_s(t_kallsyms.median),
                     fmt_s(t_kallsyms.max), figure])
    if t_unpack is not None and unpack is not None:
        rows.append([f"{unpack[0]} -dc payload (peer)", fmt_s(t_unpack.min), fmt_s(t_unpack.median),
                     fmt_s(t_unpack.max), "1.000x"])
    print_table(rows, ["what", "min", "median", "max", "figure"])
    print(f"goal: load <= {LOAD_GOAL}x nm -> {'met' if ratio <= LOAD_GOAL else 'NOT met'}; "
          f"batch lookups > {LOOKUP_GOAL:,}/s -> "
          f"{'met' if batch_rate['median'] > LOOKUP_GOAL else 'NOT met'}; single lookups "
          f"{single_rate['median']:,.0f}/s -> "
          f"{'met' if single_rate['median'] > LOOKUP_GOAL else 'NOT met'}")
    command = f"python bench/symbols.py --runs {args.runs}"
    summary = [summary_row(f"symbols: load {vmlinux.name} ({size_mb:.0f} MB)", t_load,
                           "nm -n", t_nm, f"<= {LOAD_GOAL}x", command)]
    if kernel is not None and t_kallsyms is not None and t_unpack is not None and unpack is not None:
        summary.append(summary_row(
            f"symbols: kallsyms from {kernel.name} (decompress + decode)", t_kallsyms,
            f"{unpack[0]} -dc of the same payload, output discarded", t_unpack, "-", command))
    out = write_results("symbols", {
        "vmlinux": str(vmlinux), "vmlinux_bytes": vmlinux.stat().st_size, "nm_symbols": nm_lines,
        "function_symbols": len(table), "load": t_load, "peer": "nm -n (stdout to /dev/null)",
        "nm": t_nm, "load_ratio_median": ratio, "load_goal_ratio": LOAD_GOAL,
        "batch_lookups": BATCH, "batch": t_batch, "batch_rate": batch_rate,
        "single_lookups": SINGLE, "single": t_single, "single_rate": single_rate,
        "lookup_goal_per_s": LOOKUP_GOAL,
        "kernel": None if kernel is None else str(kernel), "kallsyms": t_kallsyms,
        "command": command,
        "kallsyms_peer": None if unpack is None else f"{unpack[0]} -dc <payload> >/dev/null",
        "kallsyms_peer_timing": t_unpack,
        "summary": summary,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
