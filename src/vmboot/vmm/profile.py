"""A sampling profiler for the guest: where does a running guest spend its time?

A thread asks each vCPU's run loop for a sample ``hz`` times a second (:meth:`Runner.request_sample`:
the vCPU is kicked out of KVM_RUN the same way a stop request does it, its RIP and CS are
read, and the loop enters the guest again). After the run the samples are symbolised,
once per distinct address, and summed per function. This is ``perf kvm record`` for a
guest with no perf support: it needs nothing from the guest but its symbols (kallsyms in
the image, a vmlinux or a System.map), and it sees code a host ``perf`` would not name
(the decompressor, early boot).

With several vCPUs every one is sampled at ``hz`` (so a second of an N-vCPU guest gives
N x ``hz`` samples), and :attr:`Profile.per_cpu` splits the samples by vCPU.

Typical use::

    with Machine(kernel, initrd=...) as m, GuestProfiler(m, hz=100) as prof:
        m.run()
    print(prof.profile(m.symbolize).render())

A sample costs one round trip out of the guest, two register reads and a hand-over of
the GIL between the sampling thread and the run loop. When the symbols cannot be read,
:attr:`Profile.note` says why.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from vmboot.errors import UsageError

if TYPE_CHECKING:
    from vmboot.vmm.machine import Machine
    from vmboot.vmm.runner import Runner
    from vmboot.vmm.vcpus import VcpuSet

DEFAULT_HZ = 100
MAX_HZ = 10_000
"""Above this the sampler's own round trips would dominate the guest."""
USER_MODE = "[user mode]"
"""Where a sample taken at CPL 3 is counted: guest user space has no kernel symbol."""
WAITING_FOR_SIPI = "[waiting for INIT/SIPI]"
"""Where a sample of a vCPU the guest has not started yet is counted (its RIP means nothing)."""
UNKNOWN_GRANULE = 1 << 16
"""Samples at addresses without a symbol are counted per 64 KiB block of addresses."""


@dataclass(frozen=True)
class Sample:
    """One look at a vCPU: seconds since sampling started, RIP, privilege level, vCPU index."""

    t: float
    rip: int
    cpl: int
    cpu: int = 0
    waiting: bool = False
    """The vCPU had not been started yet (an application processor before its STARTUP IPI)."""


Symbolizer = Callable[[int], "str | None"]


@dataclass
class FunctionShare:
    name: str
    samples: int
    percent: float


@dataclass
class CpuShare:
    """One vCPU's part of the samples, and where that vCPU spent them."""

    cpu: int
    samples: int
    percent: float
    """Share of all samples."""
    functions: list[FunctionShare]
    """This vCPU's most sampled functions (shares of its own samples)."""


PER_CPU_TOP = 3
"""Functions listed per vCPU in :attr:`Profile.per_cpu`."""


@dataclass
class Profile:
    """Samples summed per function (see :func:`build_profile`)."""

    hz: float
    duration: float
    samples: int
    functions: list[FunctionShare]
    timeline: list[tuple[float, str, float]] = field(default_factory=list)
    """(start of each window in seconds, its most sampled function, that function's share %)."""
    window: float = 1.0
    per_cpu: list[CpuShare] = field(default_factory=list)
    """Samples per vCPU (in vCPU order)."""
    note: str = ""
    """Why samples have no function names (e.g. the kernel's symbols could not be read)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "hz": self.hz, "duration": round(self.duration, 3), "samples": self.samples,
            "functions": [{"name": f.name, "samples": f.samples, "percent": round(f.percent, 2)}
                          for f in self.functions],
            "timeline": [{"start": round(t, 3), "top": name, "percent": round(p, 1)}
                         for t, name, p in self.timeline],
            "window": self.window,
            "per_cpu": [{"cpu": c.cpu, "samples": c.samples, "percent": round(c.percent, 2),
                         "functions": [{"name": f.name, "samples": f.samples,
                                        "percent": round(f.percent, 2)} for f in c.functions]}
                        for c in self.per_cpu],
            "note": self.note,
        }

    def render(self, top: int = 25) -> str:
        """A text table: the ``top`` functions by samples, then the top function per window."""
        lines = [f"guest profile: {self.samples} samples at {self.hz:g} Hz over "
                 f"{self.duration:.2f} s"]
        if self.note:
            lines.append(f"note: {self.note}")
        lines.append(f"{'samples':>8} {'share':>7}  function")
        for f in self.functions[:top]:
            lines.append(f"{f.samples:>8} {f.percent:>6.1f}%  {f.name}")
        if len(self.functions) > top:
            rest = sum(f.samples for f in self.functions[top:])
            lines.append(f"{rest:>8} {100 * rest / max(self.samples, 1):>6.1f}%  "
                         f"({len(self.functions) - top} other functions)")
        if len(self.per_cpu) > 1:
            lines.append("per vCPU (share of all samples; its busiest functions):")
            for c in self.per_cpu:
                busiest = ", ".join(f"{f.name} {f.percent:.0f}%" for f in c.functions)
                lines.append(f"  vCPU {c.cpu:<3} {c.samples:>8} {c.percent:>6.1f}%  {busiest}")
        if self.timeline:
            lines.append(f"timeline (the most sampled function in each {self.window:g} s):")
            for start, name, pct in self.timeline:
                lines.append(f"  {start:7.1f} s  {pct:5.1f}%  {name}")
        return "\n".join(lines) + "\n"


def function_of(sample: Sample, symbolize: Symbolizer | None,
                cache: dict[int, str] | None = None, locate: Symbolizer | None = None) -> str:
    """The bucket a sample counts in: the function's name, user mode, or an address block.

    ``locate(address)`` may name what lies at an address without a symbol (e.g. Machine's
    "bzImage decompressor" for the kernel's load area before the kernel proper runs).
    """
    if sample.waiting:
        return WAITING_FOR_SIPI
    if sample.cpl == 3:
        return USER_MODE
    if cache is not None and sample.rip in cache:
        return cache[sample.rip]
    text = symbolize(sample.rip) if symbolize is not None else None
    if text:
        name = text.split("+", 1)[0]
    else:
        block = sample.rip - sample.rip % UNKNOWN_GRANULE
        name = f"[no symbol: {block:#x}-{block + UNKNOWN_GRANULE - 1:#x}]"
        where = locate(sample.rip) if locate is not None else None
        if where:
            name = f"[{where}]"
    if cache is not None:
        cache[sample.rip] = name
    return name


def build_profile(samples: list[Sample], hz: float, symbolize: Symbolizer | None,
                  window: float = 1.0, locate: Symbolizer | None = None) -> Profile:
    """Sum ``samples`` per function (most sampled first) and per ``window`` seconds."""
    if window <= 0:
        raise UsageError(f"profile window: {window!r} s is not positive")
    cache: dict[int, str] = {}
    names = [function_of(s, symbolize, cache, locate) for s in samples]
    counts = Counter(names)
    total = len(samples)
    functions = [FunctionShare(name, n, 100.0 * n / total)
                 for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    per_window: dict[int, Counter[str]] = {}
    for s, name in zip(samples, names, strict=True):
        per_window.setdefault(int(s.t // window), Counter())[name] += 1
    timeline = []
    for index in sorted(per_window):
        counter = per_window[index]
        name, n = min(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        timeline.append((index * window, name, 100.0 * n / sum(counter.values())))
    duration = samples[-1].t if samples else 0.0
    return Profile(hz=hz, duration=duration, samples=total, functions=functions,
                   timeline=timeline, window=window, per_cpu=_per_cpu(samples, names))


def _per_cpu(samples: list[Sample], names: list[str]) -> list[CpuShare]:
    by_cpu: dict[int, Counter[str]] = {}
    for s, name in zip(samples, names, strict=True):
        by_cpu.setdefault(s.cpu, Counter())[name] += 1
    out = []
    for cpu in sorted(by_cpu):
        counter = by_cpu[cpu]
        n = sum(counter.values())
        top = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:PER_CPU_TOP]
        out.append(CpuShare(cpu, n, 100.0 * n / len(samples),
                            [FunctionShare(name, k, 100.0 * k / n) for name, k in top]))
    return out


class GuestProfiler:
    """Samples each vCPU of a machine or a :class:`VcpuSet` (or a runner's one vCPU) ``hz``
    times a second while it runs.

    Use as a context manager around :meth:`Machine.run` (it may span several runs); the
    samples are in :attr:`samples`, :meth:`profile` sums them.
    """

    def __init__(self, target: Machine | Runner | VcpuSet, hz: float = DEFAULT_HZ) -> None:
        if not 0 < hz <= MAX_HZ:
            raise UsageError(f"profile rate: {hz!r} Hz is outside 0 < hz <= {MAX_HZ}")
        self.hz = float(hz)
        self._target = target
        self.samples: list[Sample] = []
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._runners: tuple[Runner, ...] = ()

    def _resolve_runners(self) -> tuple[Runner, ...]:
        from vmboot.vmm.runner import Runner
        from vmboot.vmm.vcpus import VcpuSet

        if isinstance(self._target, Runner):
            return (self._target,)
        if isinstance(self._target, VcpuSet):
            return self._target.runners
        vcpus = self._target.vcpu_set
        if vcpus is None:
            raise UsageError("GuestProfiler: the machine is not started; start it (with) first")
        return vcpus.runners

    def _record(self, rip: int, cpl: int, cpu: int, waiting: bool) -> None:
        self.samples.append(Sample(time.monotonic() - self._t0, rip, cpl, cpu, waiting))

    def start(self) -> None:
        if self._thread is not None:
            raise UsageError("GuestProfiler: already started")
        runners = self._resolve_runners()
        self._runners = runners
        for runner in runners:
            runner.sampler = self._record
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._tick, name="vmboot-profiler", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        period = 1.0 / self.hz
        runners = self._runners
        next_at = time.monotonic() + period
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            for runner in runners:
                runner.request_sample()
            next_at += period
            now = time.monotonic()
            if next_at < now:  # fell behind (a slow host): skip, do not burst
                next_at = now + period

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for runner in self._runners:
            runner.sampler = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def profile(self, symbolize: Symbolizer | None = None, window: float = 1.0) -> Profile:
        """The samples so far, summed per function; ``symbolize`` defaults to the machine's."""
        if symbolize is None:
            symbolize = getattr(self._target, "symbolize", None) or getattr(
                self._target, "symbolizer", None)
        locate = getattr(self._target, "locate", None)
        profile = build_profile(list(self.samples), self.hz, symbolize, window, locate)
        problem = getattr(self._target, "symbols_problem", None)
        if problem:
            profile.note = f"no kernel symbols, so kernel samples are counted per address block: {problem}"
        return profile
