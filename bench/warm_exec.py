"""Warm ``vmboot exec`` against a cold one, each timed from process start, in one run.

``vmboot exec --warm -- echo hi`` restores the cached agent-ready guest (the first warm run,
untimed, boots and saves it) and runs ``echo hi`` through the agent; the peer is the cold
``vmboot exec -- echo hi`` with the same kernel, which boots the guest for the command.
Both run as new ``python -m vmboot`` processes, so interpreter start and imports count.
The cache is a fresh temporary directory.

Run: ``python bench/warm_exec.py [--runs N] [--kernel K]``. Writes bench/results/warm_exec.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, fmt_s, print_table, summary_row, write_results

REPO = Path(__file__).resolve().parent.parent
COMMAND = ["echo", "hi"]
TIMEOUT = 900.0


def run_exec(kernel: str | None, warm: bool, env: dict[str, str]) -> float:
    argv = [sys.executable, "-m", "vmboot", "exec", *(["--kernel", kernel] if kernel else []),
            *(["--warm"] if warm else []), "--", *COMMAND]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=env, timeout=TIMEOUT, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or proc.stdout != b"hi\n":
        raise SystemExit(f"{' '.join(argv)}: status {proc.returncode}, stdout {proc.stdout!r}, "
                         f"stderr {proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    ap.add_argument("--kernel", help="the guest kernel (default: vmboot exec's own choice)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmboot-bench-warm-") as cache:
        env = {**os.environ, "VMBOOT_CACHE": cache,
               "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        first = run_exec(args.kernel, True, env)  # boots and saves the warm guest
        warm, cold = [], []
        for _ in range(args.runs):  # interleaved: both see the same load
            warm.append(run_exec(args.kernel, True, env))
            cold.append(run_exec(args.kernel, False, env))
    w, c = Timing.of(warm), Timing.of(cold)
    kernel = args.kernel or "vmboot exec's default"
    command = f"python bench/warm_exec.py --runs {args.runs}"
    print_table([
        ["first warm run (boot and save)", fmt_s(first), "1 run"],
        ["vmboot exec --warm -- echo hi", fmt_s(w.median), f"min {fmt_s(w.min)} max {fmt_s(w.max)}"],
        ["vmboot exec -- echo hi (peer)", fmt_s(c.median), f"min {fmt_s(c.min)} max {fmt_s(c.max)}"],
    ], ["what (from process start)", "median", "notes"])
    summary = [summary_row("vmboot exec --warm -- echo hi, from process start", w,
                           "cold vmboot exec -- echo hi", c, "", command)]
    out = write_results("warm_exec", {"command": command, "kernel": kernel, "first_warm_s": first,
                                      "warm": w, "cold": c, "summary": summary})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
