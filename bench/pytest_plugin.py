"""20 pytest tests each in a fresh VM (the plugin's ``vm`` fixture) against 20 cold
``vmboot exec`` runs of the same command, in one run.

The tests: a module of 20 tests, each ``vm.exec(["sh", "-c", COMMAND])`` in its own guest
(tiny-bzImage, the agent image, 256 MiB), run by ``python -m pytest -p vmboot.pytest_plugin``
in a process of its own and timed from its start to its end (interpreter, collection, the
restores, the commands, teardown). Two figures:

- ``--runs`` sessions with the snapshot already in the cache (every session after the
  first one of a guest configuration);
- one session with an empty cache (it boots once and saves the snapshot first).

The peer: ``python -m vmboot exec --kernel tiny-bzImage -- sh -c COMMAND`` (its own
initramfs, a full boot each time), timed per process, ``--cold-runs`` times; its time for
20 is 20 times its median, so with fewer than 20 cold runs the peer's figure is an
extrapolation (the table says so).

Run: ``python bench/pytest_plugin.py [--runs N] [--cold-runs N]``. Writes
bench/results/pytest_plugin.json.
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

from common import REPO, Timing, fmt_s, print_table, summary_row, write_results

KERNELS = Path(os.environ.get("VMBOOT_SHARED_KERNELS", REPO.parent / "shared" / "kernels"))
KERNEL = KERNELS / "tiny-bzImage"
TESTS = 20
COMMAND = "touch /tmp/mine; ls /tmp"
SAMPLE = f'''
import pytest

@pytest.mark.parametrize("n", range({TESTS}))
def test_in_a_fresh_vm(vm, n):
    result = vm.exec(["sh", "-c", {COMMAND!r}])
    assert result.ok and result.stdout == b"mine\\n", result
'''
TIMEOUT = 7200.0


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "VMBOOT_CACHE": str(cache), "PYTHONPATH": str(REPO / "src")}


def pytest_session(workdir: Path, cache: Path) -> float:
    """Seconds for one pytest process running the 20 tests (all must pass)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "vmboot.pytest_plugin",
                           "-p", "no:cacheprovider", "--vmboot-kernel", str(KERNEL),
                           "test_sample.py"], cwd=workdir, env=_env(cache), capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    took = time.perf_counter() - t0
    if done.returncode != 0 or f"{TESTS} passed" not in done.stdout:
        raise SystemExit(f"the pytest session failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}")
    return took


def cold_exec(cache: Path) -> float:
    """Seconds for one ``vmboot exec`` process (the command must succeed)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vmboot", "exec", "--kernel", str(KERNEL), "--",
                           "sh", "-c", COMMAND], env=_env(cache), capture_output=True,
                          timeout=TIMEOUT, check=False)
    took = time.perf_counter() - t0
    if done.returncode != 0 or done.stdout != b"mine\n":
        raise SystemExit(f"vmboot exec failed ({done.returncode}): {done.stderr[-2000:]!r}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1,
                        help="sessions with the snapshot in the cache (default 1)")
    parser.add_argument("--cold-runs", type=int, default=3,
                        help="cold vmboot exec runs; 20x their median is the peer (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmboot-bench-plugin-") as tmp:
        workdir, cache = Path(tmp), Path(tmp) / "cache"
        (workdir / "test_sample.py").write_text(SAMPLE)
        first = Timing.of([pytest_session(workdir, cache)])
        warm = Timing.of([pytest_session(workdir, cache) for _ in range(args.runs)])
        cold = [cold_exec(cache) for _ in range(args.cold_runs)]
    one = Timing.of(cold)
    twenty = Timing.of([t * TESTS for t in cold])
    extrapolated = "" if args.cold_runs >= TESTS else f", 20x the median of {args.cold_runs} runs"
    command = f"python bench/pytest_plugin.py --runs {args.runs} --cold-runs {args.cold_runs}"
    peer = f"{TESTS} cold `vmboot exec` runs of the same command{extrapolated}"
    rows = [
        summary_row(f"{TESTS} pytest tests, each in a fresh VM (vm fixture; tiny-bzImage, 256 MiB; "
                    "snapshot in the cache)", warm, peer, twenty, "-", command),
        summary_row(f"{TESTS} pytest tests, each in a fresh VM, first session (boots once and "
                    "saves the snapshot)", first, peer, twenty, "-", command),
    ]
    print_table([[r["figure"][:60], fmt_s(r["vmboot"]["median"]), fmt_s(r["peer_timing"]["median"]),
                  f"{r['ratio']:.2f}x"] for r in rows], ["what", "vmboot", "peer", "ratio"])
    print(f"one cold vmboot exec: {fmt_s(one.median)} (median of {one.runs})")
    path = write_results("pytest_plugin", {
        "tests": TESTS, "guest_command": COMMAND, "kernel": str(KERNEL),
        "sessions_cached": warm, "session_first": first, "cold_exec": one,
        "summary": rows,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
