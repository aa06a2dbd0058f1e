"""Run every fuzz target (or some) for a bounded time each and summarise.

    python fuzz/run.py --seconds-per-target 30
    python fuzz/run.py --targets bzimage elf --runs 2000 --seed 1
    python fuzz/run.py --engine atheris --seconds-per-target 300

Each target runs in its own subprocess (so a crash, a hang the alarm cannot interrupt or an
exhausted address space stays contained), under RLIMIT_AS (``--address-space``). Prints
executions per target and in total, every distinct finding, and writes a JSON summary
(``fuzz/results.json`` by default). Exit status: 0 when every finding is a known bug
(fuzz/known_bugs.py), 1 when there is a new one, 2 on bad arguments.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fuzz.harness import DEFAULT_ADDRESS_SPACE_LIMIT, FUZZ_DIR, REPO, known_bug
from fuzz.targets import TARGET_NAMES

DEFAULT_RESULTS = FUZZ_DIR / "results.json"
CORPUS_DIR = FUZZ_DIR / "corpus"
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"^#(\d+)\s", re.M)


def run_one_builtin(name: str, seconds: float | None, runs: int | None, seed: int,
                    address_space: int, input_timeout: float) -> dict[str, Any]:
    """Run one target with the built-in engine in a child process; its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        out_path = Path(out.name)
    cmd = [sys.executable, str(FUZZ_DIR / "run.py"), "--child", name, "--seed", str(seed),
           "--address-space", str(address_space), "--input-timeout", str(input_timeout),
           "--json", str(out_path)]
    if seconds is not None:
        cmd += ["--seconds-per-target", str(seconds)]
    if runs is not None:
        cmd += ["--runs", str(runs)]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    try:
        result: dict[str, Any] = json.loads(out_path.read_text())
    except (OSError, ValueError):
        result = {"target": name, "engine": "builtin", "executions": 0,
                  "seconds": round(time.monotonic() - start, 3), "seeds": 0,
                  "findings": [{"signature": f"child process died (status {proc.returncode})",
                                "exc_type": "ChildDied", "location": "?", "known": None,
                                "message": proc.stderr[-2000:], "input_hex": "", "traceback": ""}]}
    finally:
        out_path.unlink(missing_ok=True)
    return result


def run_one_atheris(name: str, seconds: float | None, runs: int | None, address_space: int,
                    input_timeout: float) -> dict[str, Any]:
    """Run one target under atheris/libFuzzer; executions parsed from libFuzzer's output."""
    corpus = CORPUS_DIR / name
    if not corpus.is_dir():
        subprocess.run([sys.executable, str(CORPUS_DIR / "make_corpus.py"), "--targets", name],
                       cwd=REPO, check=True, capture_output=True)
    artifacts = FUZZ_DIR / "findings" / name
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(FUZZ_DIR / f"fuzz_{name}.py"), str(corpus),
           f"-artifact_prefix={artifacts.relative_to(REPO)}/", f"-timeout={max(1, int(input_timeout))}",
           f"-rss_limit_mb={address_space >> 20}", "-print_final_stats=1"]
    if seconds is not None:
        cmd.append(f"-max_total_time={max(1, int(seconds))}")
    if runs is not None:
        cmd.append(f"-runs={runs}")
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    log = proc.stdout + proc.stderr
    done = _DONE.search(log)
    stats = _STAT.findall(log)
    executions = int(done.group(1)) if done else (int(stats[-1]) if stats else 0)
    findings = []
    if proc.returncode != 0:
        tail = log[-3000:]
        findings.append({"signature": f"libFuzzer crash (status {proc.returncode})", "exc_type": "Crash",
                         "location": "?", "known": None, "message": tail, "input_hex": "",
                         "traceback": tail})
    return {"target": name, "engine": "atheris", "executions": executions,
            "seconds": round(time.monotonic() - start, 3), "seeds": len(list(corpus.iterdir())),
            "findings": findings}


def child_main(args: argparse.Namespace) -> int:
    from fuzz.harness import limit_address_space, run_builtin
    from fuzz.targets import load_target

    limit_address_space(args.address_space)
    target = load_target(args.child)
    result = run_builtin(target, seconds=args.seconds_per_target, runs=args.runs, seed=args.seed,
                         input_timeout=args.input_timeout)
    Path(args.json).write_text(json.dumps(result.as_dict()))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds-per-target", type=float, default=None, metavar="N",
                   help="wall-clock seconds per target (default 10 when --runs is not given)")
    p.add_argument("--runs", type=int, default=None, help="inputs per target (first limit reached wins)")
    p.add_argument("--targets", nargs="+", choices=TARGET_NAMES, default=list(TARGET_NAMES), metavar="T",
                   help=f"targets to run (default: all: {' '.join(TARGET_NAMES)})")
    p.add_argument("--engine", choices=("builtin", "atheris"), default="builtin")
    p.add_argument("--seed", type=int, default=0, help="built-in engine's random seed (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="targets to run in parallel (default 1)")
    p.add_argument("--address-space", type=int, default=DEFAULT_ADDRESS_SPACE_LIMIT,
                   help="RLIMIT_AS of each fuzzing process, bytes")
    p.add_argument("--input-timeout", type=float, default=10.0, help="seconds per input before a hang")
    p.add_argument("--json", default=str(DEFAULT_RESULTS), help="where to write the JSON summary")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.seconds_per_target is None and args.runs is None:
        args.seconds_per_target = 10.0

    def one(name: str) -> dict[str, Any]:
        if args.engine == "atheris":
            return run_one_atheris(name, args.seconds_per_target, args.runs, args.address_space,
                                   args.input_timeout)
        return run_one_builtin(name, args.seconds_per_target, args.runs, args.seed, args.address_space,
                               args.input_timeout)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, args.targets))
    new = 0
    print(f"{'target':<14} {'executions':>11} {'seconds':>8} {'exec/s':>8}  findings")
    for r in results:
        rate = r["executions"] / r["seconds"] if r["seconds"] else 0.0
        kinds = []
        for f in r["findings"]:
            if f.get("known") is None and f["exc_type"] not in ("Crash", "ChildDied"):
                from fuzz.harness import Finding

                f["known"] = known_bug(Finding(r["target"], f["exc_type"], f["message"], f["location"],
                                               "", ""))
            kinds.append("known" if f["known"] else "NEW")
            new += f["known"] is None
        summary = ", ".join(f"{kinds.count(k)} {k}" for k in ("NEW", "known") if kinds.count(k)) or "none"
        print(f"{r['target']:<14} {r['executions']:>11} {r['seconds']:>8.1f} {rate:>8.0f}  {summary}")
    total = sum(r["executions"] for r in results)
    print(f"{'total':<14} {total:>11} {sum(r['seconds'] for r in results):>8.1f}")
    for r in results:
        for f in r["findings"]:
            tag = f"known: {f['known']}" if f["known"] else "NEW"
            print(f"\n[{r['target']}] {f['signature']}  ({tag})\n  {f['message'][:300]}")
            if not f["known"] and f.get("input_hex"):
                print(f"  input: {f['input_hex'][:400]}")
    summary_obj = {"engine": args.engine, "seed": args.seed, "seconds_per_target": args.seconds_per_target,
                   "runs": args.runs, "total_executions": total, "new_findings": new, "targets": results,
                   "python": sys.version.split()[0], "cpus": os.cpu_count()}
    Path(args.json).write_text(json.dumps(summary_obj, indent=1))
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
