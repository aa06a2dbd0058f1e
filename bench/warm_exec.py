"""Warm ``vmboot exec`` against a cold one, each timed from process start, in one run.

``vmboot exec --warm --json -- echo hi`` restores the cached agent-ready guest (the first
warm run, untimed, boots and saves it) and runs ``echo hi`` through the agent; the peer is
the cold ``vmboot exec --json -- echo hi`` with the same kernel, which boots the guest for
the command. Both run as new ``python -m vmboot`` processes, so interpreter start and
imports count; vmboot's .pyc files are written first, as an installed wheel has them. The
cache is a fresh temporary directory.

Besides the whole run, each warm run's phases are placed on this script's clock (the
child's ``timings.origin`` is its ``time.monotonic()``, the same system-wide clock): from
process start to the command written to the agent's channel (``command_sent``; the resume
message goes in the same write, and the host puts both in the guest's receive queue within
a tenth of a millisecond; the guest's vCPU starts then), to the agent holding the command
(``command_held``: the agent's answer to the resume message says how many TSC cycles
passed since the read that brought the message and how many bytes that read brought
behind it, the whole command; the answer's arrival less that time, so the way back still
counts), to the answer itself (``agent_ready``), and to its STARTED answer (sent once the
command's ``execve`` succeeded) — the goal is 100 ms to the agent holding the command. The peer of
those rows is the cold run's process start to its agent's greeting (the moment it can take
a command). Python's own start (``python -c pass``) is timed in the same run, as the floor
under every figure (with ``-S`` vmboot starts no sooner: what ``site`` loads here, vmboot
would load itself).

Run: ``python bench/warm_exec.py [--runs N] [--kernel K]``, with the ``python`` vmboot is
installed for (the README's figures: a venv made from the distribution's ``python3``, as its
set-up does; an interpreter whose site-packages run ``.pth`` files at start adds their cost
to every figure, and ``python -c pass`` shows it). Writes bench/results/warm_exec.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, compile_bytecode, fmt_s, print_table, summary_row, write_results

REPO = Path(__file__).resolve().parent.parent
COMMAND = ["echo", "hi"]
TIMEOUT = 900.0
GOAL = "100 ms from process start to the agent holding the command"
PHASES = ("restored", "command_sent", "command_held", "agent_ready", "command_start",
          "first_output", "command_exit", "vm_exit")
"""The warm run's ``timings`` reported, each from process start."""


def run_exec(options: list[str], warm: bool, env: dict[str, str]) -> dict[str, float]:
    """One run of ``vmboot exec OPTIONS [--warm] --json -- echo hi``: its whole time, and
    its phases from process start (seconds)."""
    argv = [sys.executable, "-m", "vmboot", "exec", *options, *(["--warm"] if warm else []),
            "--json", "--", *COMMAND]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, env=env, timeout=TIMEOUT, check=False)
    elapsed = time.monotonic() - started
    try:
        out: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        out = {}
    if proc.returncode != 0 or out.get("stdout") != "hi\n":
        raise SystemExit(f"{' '.join(argv)}: status {proc.returncode}, stdout {proc.stdout!r}, "
                         f"stderr {proc.stderr.decode(errors='replace')[-2000:]}")
    timings = out["timings"]
    origin = timings["origin"] - started if timings.get("origin") is not None else None
    phases = {"total": elapsed}
    if origin is not None:
        phases["origin"] = origin
        for name in PHASES:
            if timings.get(name) is not None:
                phases[name] = origin + timings[name]
    elif timings.get("command_start") is not None:
        phases["command_start"] = timings["command_start"]  # from the run's own start
    return phases


def interpreter_start(flags: list[str], env: dict[str, str]) -> float:
    """Seconds for ``python [FLAGS] -c pass`` from spawn to exit."""
    started = time.monotonic()
    subprocess.run([sys.executable, *flags, "-c", "pass"], env=env, check=True)
    return time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    ap.add_argument("--kernel", help="the guest kernel (default: vmboot exec's own choice)")
    args = ap.parse_args()
    bytecode = compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="vmboot-bench-warm-") as cache:
        env = {**os.environ, "VMBOOT_CACHE": cache,
               "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        options = ["--kernel", args.kernel] if args.kernel else []
        first = run_exec(options, True, env)["total"]  # boots and saves the warm guest
        warm: list[dict[str, float]] = []
        cold: list[dict[str, float]] = []
        python: list[float] = []
        for _ in range(args.runs):  # interleaved: both see the same load
            warm.append(run_exec(options, True, env))
            cold.append(run_exec(options, False, env))
            python.extend(interpreter_start([], env) for _ in range(3))
    w = Timing.of([r["total"] for r in warm])
    c = Timing.of([r["total"] for r in cold])
    sent = Timing.of([r["command_sent"] for r in warm])
    holds = Timing.of([r["command_held"] for r in warm])
    py = Timing.of(python)
    started = Timing.of([r["command_start"] for r in warm])
    cold_ready = Timing.of([r["command_start"] for r in cold])
    phases = {name: statistics.median(r[name] for r in warm)
              for name in ("origin", *PHASES) if all(name in r for r in warm)}
    kernel = args.kernel or "vmboot exec's default"
    command = f"python bench/warm_exec.py --runs {args.runs}"
    print_table([
        ["python -c pass", fmt_s(py.median), f"min {fmt_s(py.min)} max {fmt_s(py.max)}"],
        ["first warm run (boot and save)", fmt_s(first), "1 run"],
        *([f"warm: {name}", fmt_s(value), "median, from process start"]
          for name, value in phases.items()),
        ["vmboot exec --warm -- echo hi", fmt_s(w.median), f"min {fmt_s(w.min)} max {fmt_s(w.max)}"],
        ["cold: agent greeted (peer)", fmt_s(cold_ready.median), "median, from process start"],
        ["vmboot exec -- echo hi (peer)", fmt_s(c.median), f"min {fmt_s(c.min)} max {fmt_s(c.max)}"],
    ], ["what (from process start)", "median", "notes"])
    summary = [
        summary_row("warm exec: process start to the command written to the agent's channel",
                    sent, "cold exec: process start to the agent's greeting", cold_ready, GOAL,
                    command),
        summary_row("warm exec: process start to the agent holding the command (read with "
                    "the resume message; the agent's own account)", holds,
                    "cold exec: process start to the agent's greeting", cold_ready, GOAL, command),
        summary_row("warm exec: process start to the agent's STARTED (command exec'd)", started,
                    "cold exec: process start to the agent's greeting", cold_ready, GOAL, command),
        summary_row("vmboot exec --warm -- echo hi, from process start", w,
                    "cold vmboot exec -- echo hi", c, "", command),
    ]
    out = write_results("warm_exec", {"command": command, "kernel": kernel, "bytecode": bytecode,
                                      "first_warm_s": first, "warm": w, "cold": c,
                                      "warm_phases_median_s": phases, "warm_runs": warm,
                                      "python_start": py,
                                      "cold_runs": cold, "summary": summary})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
