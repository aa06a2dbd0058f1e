"""The fuzzing harness shared by every ``fuzz/fuzz_*.py`` target.

A target is a function ``one_input(data: bytes) -> None`` that parses ``data`` with one
vmboot parser and exercises everything derived from the result. The contract under test
(issue 8, "hostile input"): whatever the bytes, only :class:`vmboot.errors.VmbootError`
may escape; anything else (IndexError, struct.error, ValueError, OverflowError,
MemoryError, RecursionError, an assertion) or a hang is a bug.

Two engines drive the targets:

* the built-in engine (:func:`run_builtin`): seeded, deterministic mutation of the
  target's seeds (bit flips, boundary values written at the format's field offsets,
  truncation at every structural boundary, splices), with a per-input alarm that turns
  a hang into a finding; it records every distinct finding and keeps going;
* atheris (coverage-guided libFuzzer), when installed: ``python fuzz/fuzz_X.py CORPUS
  -max_total_time=N`` (see :func:`atheris_main`).
"""

from __future__ import annotations

import dataclasses
import os
import random
import resource
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from vmboot.errors import VmbootError  # noqa: E402

SHARED_KERNELS = Path(os.environ.get("VMBOOT_SHARED_KERNELS", REPO.parent / "shared" / "kernels"))

BOUNDARY_VALUES: tuple[int, ...] = (
    0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
    0xFFFFFFFF, 1 << 32, 1 << 63, (1 << 64) - 1,
)
"""Values written over header fields: 0, 1, sign and width boundaries up to 2**64 - 1."""

DEFAULT_INPUT_TIMEOUT = 10.0
"""Seconds one input may take before the built-in engine calls it a hang."""
DEFAULT_ADDRESS_SPACE_LIMIT = 8 << 30
"""RLIMIT_AS for fuzzing processes: a header-driven giant allocation fails as MemoryError
(a finding) instead of exhausting the machine. Guest RAM is mmap'ed MAP_NORESERVE but
still counts, so this leaves room for a 3.5 GiB guest (the MMIO-hole targets)."""

Callback = Callable[[bytes], None]


# -- targets -----------------------------------------------------------------------------------
@dataclass
class Target:
    """One fuzz target: a name, the function under test, seeds and field offsets to mutate."""

    name: str
    one_input: Callback
    seeds: Callable[[], list[bytes]]
    offsets: Callable[[], Sequence[int]] = lambda: ()
    """Offsets of structural fields (header fields, table entries) that the mutator overwrites
    with :data:`BOUNDARY_VALUES` and truncates at."""
    max_len: int = 1 << 16
    """Longest input atheris may generate (the built-in engine also caps inserts at this)."""
    description: str = ""


class Hang(BaseException):
    """Raised by the built-in engine's alarm when one input runs too long.

    A BaseException so that no ``except Exception`` in vmboot swallows it.
    """


@dataclass(frozen=True)
class Finding:
    """A distinct bug: what escaped and where; ``signature`` deduplicates findings."""

    target: str
    exc_type: str
    message: str
    location: str
    """``file:line`` of the innermost frame inside vmboot (or the innermost frame)."""
    input_hex: str
    """The (first) input that triggered it, hex-encoded (at most 64 KiB)."""
    traceback: str

    @property
    def signature(self) -> str:
        return f"{self.exc_type} at {self.location}"

    def as_dict(self) -> dict[str, str]:
        d = dataclasses.asdict(self)
        d["signature"] = self.signature
        return d


def _location(tb: TracebackType | None) -> str:
    frames = traceback.extract_tb(tb)
    inside = [f for f in frames if f"{os.sep}vmboot{os.sep}" in f.filename and "fuzz" not in f.filename]
    candidates = inside or frames
    if not candidates:
        return "?"
    frame = candidates[-1]
    path = Path(frame.filename)
    try:
        shown = str(path.relative_to(REPO))
    except ValueError:
        shown = path.name
    return f"{shown}:{frame.lineno}"


def classify(target: str, data: bytes, exc: BaseException) -> Finding:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Finding(
        target=target,
        exc_type=f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
        message=str(exc)[:300],
        location=_location(exc.__traceback__),
        input_hex=data[: 1 << 16].hex(),
        traceback=tb[-4000:],
    )


def call_checked(target: Target, data: bytes) -> BaseException | None:
    """Run the target on ``data``: None if it returned or raised a VmbootError, else the
    exception that escaped (a bug)."""
    try:
        target.one_input(data)
    except VmbootError:
        return None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        return exc
    return None


# -- known bugs -------------------------------------------------------------------------------
def known_bug(finding: Finding) -> str | None:
    """The regression test covering ``finding`` if it is a known, reported bug, else None."""
    from fuzz.known_bugs import KNOWN_BUGS

    for bug in KNOWN_BUGS:
        if bug.matches(finding):
            return bug.test
    return None


# -- structured input -------------------------------------------------------------------------
class Bytes:
    """Consume fuzz bytes as structured values (like atheris' FuzzedDataProvider, but
    available without atheris); running out of bytes yields zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return max(0, len(self.data) - self.pos)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "little")

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.uint(1) % len(options)]

    def boolean(self) -> bool:
        return bool(self.uint(1) & 1)

    def interesting_int(self, around: Sequence[int] = ()) -> int:
        """A value biased towards edges: boundary values, values near ``around``, negatives."""
        mode = self.uint(1) % 6
        if mode == 0:
            return int(self.choice(BOUNDARY_VALUES))
        if mode == 1 and around:
            return int(self.choice(around)) + (self.uint(1) - 128)
        if mode == 2:
            return -self.uint(8)
        if mode == 3:
            return self.uint(8) << self.uint(1) % 70
        return self.uint(self.uint(1) % 9)

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


# -- mutation ---------------------------------------------------------------------------------
def mutate(rng: random.Random, data: bytes, offsets: Sequence[int], seeds: Sequence[bytes],
           max_len: int) -> bytes:
    """One mutant of ``data``: 1 to 4 stacked mutations (see the module docstring)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(10)
        if kind <= 1 and offsets:  # a boundary value over a structural field
            off = rng.choice(offsets) + rng.choice((0, 0, 0, -1, 1))
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(BOUNDARY_VALUES) & ((1 << (8 * width)) - 1)
            if rng.random() < 0.3:
                value = (value + rng.choice((-1, 1))) & ((1 << (8 * width)) - 1)
            if off >= 0 and off + width <= len(buf):
                buf[off : off + width] = value.to_bytes(width, "little")
        elif kind == 2 and offsets:  # truncate at a structural boundary
            cut = rng.choice(offsets) + rng.choice((0, 1, 2, 4, 8, -1))
            if 0 <= cut < len(buf):
                del buf[cut:]
        elif kind == 3 and buf:  # truncate anywhere
            del buf[rng.randrange(len(buf)) :]
        elif kind == 4 and buf:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(buf))
                buf[i] ^= 1 << rng.randrange(8)
        elif kind == 5 and buf:  # random bytes
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif kind == 6 and buf:  # boundary value anywhere
            width = rng.choice((1, 2, 4, 8))
            off = rng.randrange(len(buf))
            value = rng.choice(BOUNDARY_VALUES) & ((1 << (8 * width)) - 1)
            chunk = value.to_bytes(width, "little")
            buf[off : off + width] = chunk[: max(0, len(buf) - off)]
        elif kind == 7 and buf:  # delete or duplicate a chunk
            a = rng.randrange(len(buf))
            b = min(len(buf), a + rng.randint(1, 64))
            if rng.random() < 0.5:
                del buf[a:b]
            elif len(buf) + (b - a) <= max_len:
                buf[a:a] = buf[a:b]
        elif kind == 8 and seeds:  # splice with another seed
            other = rng.choice(seeds)
            if other:
                a = rng.randrange(len(other))
                chunk = other[a : a + rng.randint(1, 256)]
                at = rng.randrange(len(buf) + 1)
                buf[at : at + len(chunk)] = chunk
        else:  # insert random bytes
            at = rng.randrange(len(buf) + 1)
            n = rng.randint(1, 16)
            if len(buf) + n <= max_len:
                buf[at:at] = rng.randbytes(n)
    return bytes(buf)


# -- the built-in engine ----------------------------------------------------------------------
@dataclass
class RunResult:
    target: str
    executions: int = 0
    seconds: float = 0.0
    seeds: int = 0
    findings: list[Finding] = field(default_factory=list)
    engine: str = "builtin"

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "engine": self.engine,
            "executions": self.executions,
            "seconds": round(self.seconds, 3),
            "seeds": self.seeds,
            "findings": [dict(f.as_dict(), known=known_bug(f)) for f in self.findings],
        }


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang("input ran longer than the per-input timeout")


def limit_address_space(limit: int = DEFAULT_ADDRESS_SPACE_LIMIT) -> None:
    """Cap this process's address space so a giant allocation raises MemoryError."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def inputs(target: Target, seed: int) -> Iterator[bytes]:
    """The seeds unchanged, then mutants forever (deterministic for a given ``seed``)."""
    rng = random.Random(seed)
    seeds = target.seeds()
    offsets = list(target.offsets())
    yield from seeds
    if not seeds:
        seeds = [b""]
    while True:
        parent = rng.choice(seeds)
        yield mutate(rng, parent, offsets, seeds, target.max_len)


def run_builtin(target: Target, *, seconds: float | None = None, runs: int | None = None,
                seed: int = 0, input_timeout: float = DEFAULT_INPUT_TIMEOUT,
                on_finding: Callable[[Finding], None] | None = None) -> RunResult:
    """Run ``target`` for ``seconds`` of wall time or ``runs`` inputs, whichever ends first."""
    if seconds is None and runs is None:
        raise ValueError("give seconds= or runs=")
    result = RunResult(target.name, seeds=len(target.seeds()))
    seen: set[str] = set()
    use_alarm = input_timeout > 0 and hasattr(signal, "setitimer")
    old = signal.signal(signal.SIGALRM, _alarm) if use_alarm else None
    start = time.monotonic()
    deadline = None if seconds is None else start + seconds
    try:
        for data in inputs(target, seed):
            if runs is not None and result.executions >= runs:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, input_timeout)
            try:
                exc = call_checked(target, data)
            except Hang as hang:  # the alarm fired outside the target's own frames
                exc = hang
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            result.executions += 1
            if exc is not None:
                finding = classify(target.name, data, exc)
                if finding.signature not in seen:
                    seen.add(finding.signature)
                    result.findings.append(finding)
                    if on_finding is not None:
                        on_finding(finding)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        result.seconds = time.monotonic() - start
    return result


# -- atheris ----------------------------------------------------------------------------------
def atheris_main(target: Target, argv: list[str] | None = None) -> None:
    """libFuzzer entry point: ``python fuzz/fuzz_X.py [CORPUS_DIR] [-max_total_time=N] ...``.

    Known bugs (see :mod:`fuzz.known_bugs`) are skipped so the campaign can go past them;
    set ``VMBOOT_FUZZ_STOP_ON_KNOWN=1`` to crash on them too. New findings crash as usual
    (libFuzzer saves the input as ``crash-*``).
    """
    import atheris

    stop_on_known = os.environ.get("VMBOOT_FUZZ_STOP_ON_KNOWN") == "1"

    def test_one(data: bytes) -> None:
        exc = call_checked(target, data)
        if exc is None:
            return
        finding = classify(target.name, data, exc)
        if not stop_on_known and known_bug(finding) is not None:
            return
        raise exc

    argv = list(sys.argv if argv is None else argv)
    if not any(a.startswith("-max_len=") for a in argv):
        argv.append(f"-max_len={target.max_len}")
    atheris.instrument_all()
    atheris.Setup(argv, test_one)
    atheris.Fuzz()


def u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)
