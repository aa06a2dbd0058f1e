"""Shared helpers for vmboot's benchmarks: repeated timing, spread, machine facts, JSON output.

Every figure is a ratio to a peer measured in the same run; each result records its peer,
its command line, the number of runs and the spread (min / median / max).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent


@dataclass
class Timing:
    """Seconds per run over ``runs`` runs."""

    runs: int
    min: float
    median: float
    max: float
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        return cls(len(samples), min(samples), statistics.median(samples), max(samples), samples)


def measure(fn: Callable[[], object], runs: int, warmup: int = 1) -> Timing:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing.of(samples)


def summary_row(figure: str, vmboot: Timing, peer_name: str, peer: Timing, goal: str,
                command: str, lower_is_better: bool = True, unit: str = "s") -> dict[str, Any]:
    """One line of the README's benchmark table: vmboot's median against its peer's.

    ``unit`` is what the Timing holds: "s" (seconds, the default) or "MiB".
    """
    ratio = vmboot.median / peer.median if peer.median else float("inf")
    return {
        "figure": figure, "peer": peer_name, "goal": goal, "command": command, "unit": unit,
        "runs": vmboot.runs, "ratio": ratio, "lower_is_better": lower_is_better,
        "vmboot": {"min": vmboot.min, "median": vmboot.median, "max": vmboot.max},
        "peer_timing": {"min": peer.min, "median": peer.median, "max": peer.max},
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "python_environment": "venv" if sys.prefix != sys.base_prefix else "no venv",
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "kvm": "PVM (software nested, kvm_pvm)" if Path("/sys/module/kvm_pvm").exists()
        else ("KVM" if Path("/dev/kvm").exists() else "none"),
    }
    try:
        model = next(line.split(":", 1)[1].strip()
                     for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        info["cpu"] = model
    except (OSError, StopIteration):
        pass
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["vmboot_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=Path(__file__).parent, check=True).stdout.strip()
    return info


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "machine": machine(),
               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(portable_paths(json.dumps(payload, indent=2, default=_jsonable)) + "\n")
    return path


def portable_paths(text: str) -> str:
    """``text`` with this host's paths made ones a reader can run anywhere: the repository's
    own relative to it (the shared kernels as ``../shared/kernels``), the interpreter as
    ``python3``, the home directory as ``~``, and a scratch directory a script made
    (``tempfile.mkdtemp(prefix="vmboot-...-")``) as ``$TMPDIR/vmboot-...-*``."""
    import re
    import sys
    import tempfile

    for absolute, portable in ((sys.executable, "python3"), (str(REPO.parent / "shared"), "../shared"),
                               (str(REPO) + "/", ""), (str(REPO), "."), (str(Path.home()) + "/", "~/")):
        text = text.replace(absolute, portable)
    # the checkout as a peer may print it: relative to / (virtme-ng's virtme_chdir=)
    text = text.replace(str(REPO).lstrip("/"), ".")
    tmp = re.escape(tempfile.gettempdir())
    text = re.sub(tmp + r"/(vmboot-[a-z-]+-)\w+", r"$TMPDIR/\1*", text)
    text = re.sub(tmp + r"/(virtme)\w+", r"$TMPDIR/\1*", text)  # virtme-ng's scratch directories
    return re.sub(tmp + r"/(vng-venv)\b", r"$TMPDIR/\1", text)  # bench/rootfs.py's virtme-ng


def _jsonable(obj: object) -> object:
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)  # type: ignore[call-overload]
    raise TypeError(f"not JSON-serialisable: {obj!r}")


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_value(value: float, unit: str = "s") -> str:
    if unit == "s":
        return fmt_s(value)
    return f"{value:.1f} {unit}"


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def compile_bytecode() -> str:
    """Write vmboot's .pyc files, as ``pip install`` of a wheel does; say where.

    An editable install under ``PYTHONDONTWRITEBYTECODE=1`` (this machine's environment)
    would otherwise compile every module from source at every start, ~60 ms of a ~200 ms
    ``vmboot run``: a cost no installed copy pays. The import system reads .pyc files even
    when it may not write them.
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("vmboot")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("vmboot is not importable; pip install -e . first")
    where = next(iter(spec.submodule_search_locations))
    if not compileall.compile_dir(where, quiet=1):
        raise SystemExit(f"compileall failed on {where}")
    return f"compiled (compileall {where}), as a pip-installed wheel has it"
