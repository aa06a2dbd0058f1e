"""The guest sampling profiler (vmboot.vmm.profile) and ``vmboot run --profile``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from conftest import requires_kvm
from test_machine import COM1, JMP_SELF, guest_program, mov_dx, out_imm
from vmboot.cli.arguments import sample_rate
from vmboot.cli.main import main
from vmboot.errors import UsageError
from vmboot.linux import BootPlan
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.machine import Machine
from vmboot.vmm.profile import (
    MAX_HZ,
    UNKNOWN_GRANULE,
    USER_MODE,
    GuestProfiler,
    Sample,
    build_profile,
    function_of,
)

LOAD = 0x1000000
ENTRY = LOAD + 0x200
"""Where guest_program's code runs: the default load address + the 64-bit entry offset."""


def fake_symbols(address: int) -> str | None:
    table = {0x1000: "alpha+0x0/0x10", 0x1008: "alpha+0x8/0x10", 0x2000: "beta+0x0/0x4"}
    return table.get(address)


# -- without KVM ------------------------------------------------------------------------------
def test_samples_sum_per_function_most_sampled_first() -> None:
    samples = [Sample(0.0, 0x1000, 0), Sample(0.1, 0x1008, 0), Sample(0.2, 0x2000, 0),
               Sample(1.5, 0x4000_1234, 0), Sample(1.6, 0x7FFF_0000, 3), Sample(1.7, 0x1000, 0)]
    p = build_profile(samples, 10.0, fake_symbols)
    assert [(f.name, f.samples) for f in p.functions] == [
        ("alpha", 3), ("[no symbol: 0x40000000-0x4000ffff]", 1), (USER_MODE, 1), ("beta", 1)]
    assert p.samples == 6 and p.duration == pytest.approx(1.7)
    assert sum(f.percent for f in p.functions) == pytest.approx(100.0)
    # window 0: alpha 2 of 3; window 1: three different buckets, one each -> the first by name
    timeline: list[tuple[float, str, object]] = [
        (0.0, "alpha", pytest.approx(200 / 3)),
        (1.0, "[no symbol: 0x40000000-0x4000ffff]", pytest.approx(100 / 3))]
    assert p.timeline == timeline


def test_render_and_json_agree() -> None:
    samples = [Sample(i / 10, 0x1000 if i % 4 else 0x2000, 0) for i in range(40)]
    p = build_profile(samples, 10.0, fake_symbols)
    text = p.render(top=1)
    assert "40 samples at 10 Hz" in text
    assert "30   75.0%  alpha" in text
    assert "(1 other functions)" in text
    d = json.loads(json.dumps(p.as_dict()))
    assert d["functions"][0] == {"name": "alpha", "samples": 30, "percent": 75.0}
    assert len(d["timeline"]) == 4


def test_user_mode_is_one_bucket_and_unknown_addresses_are_blocks() -> None:
    assert function_of(Sample(0, 0x1000, 3), fake_symbols) == USER_MODE
    block = function_of(Sample(0, 5 * UNKNOWN_GRANULE + 7, 0), None)
    assert block == f"[no symbol: {5 * UNKNOWN_GRANULE:#x}-{6 * UNKNOWN_GRANULE - 1:#x}]"


def test_locate_names_addresses_without_symbols() -> None:
    samples = [Sample(0, 0x1000, 0), Sample(0, 0x9000, 0), Sample(0, 0x20_0000, 0)]
    p = build_profile(samples, 1.0, fake_symbols,
                      locate=lambda a: "decompressor" if a < 0x10_0000 else None)
    assert {f.name for f in p.functions} == {"alpha", "[decompressor]",
                                             "[no symbol: 0x200000-0x20ffff]"}


@requires_kvm
def test_machine_locates_boot_regions() -> None:
    with Machine(guest_program(JMP_SELF), memory="32M") as m:
        assert m.locate(ENTRY) == "bzImage decompressor"
        assert isinstance(m.plan, BootPlan)
        assert m.locate(m.plan.zero_page_gpa) == "zero page"
        assert m.locate(0xFFFF_FFFF_8100_0000) is None


def test_render_shows_why_there_are_no_symbols() -> None:
    p = build_profile([Sample(0.0, 0x5000, 0)], 100, None)
    assert "note:" not in p.render()
    p.note = "no kernel symbols: lz4 is not installed"
    assert "note: no kernel symbols: lz4 is not installed\n" in p.render()
    assert p.as_dict()["note"] == p.note


def test_empty_profile_and_bad_window() -> None:
    p = build_profile([], 100.0, None)
    assert (p.samples, p.functions, p.timeline, p.duration) == (0, [], [], 0.0)
    with pytest.raises(UsageError, match="window"):
        build_profile([], 100.0, None, window=0)


@pytest.mark.parametrize("hz", [0, -1, MAX_HZ + 1])
def test_profiler_rate_is_checked(hz: float) -> None:
    with pytest.raises(UsageError, match="Hz"):
        GuestProfiler(Machine(b"x", memory="32M"), hz=hz)


def test_profiler_needs_a_started_machine() -> None:
    with pytest.raises(UsageError, match="not started"):
        GuestProfiler(Machine(b"x", memory="32M")).start()


@pytest.mark.parametrize("text", ["0", "-5", "nan", "fast", str(MAX_HZ * 2)])
def test_profile_hz_argument_is_checked(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        sample_rate(text)
    assert sample_rate("250") == 250.0


# -- under KVM --------------------------------------------------------------------------------
@requires_kvm
def test_samples_land_on_the_spinning_instruction() -> None:
    with Machine(guest_program(JMP_SELF), memory="32M") as m, \
            GuestProfiler(m, hz=500) as prof:
        result = m.run(timeout=0.5)
    assert result.exit.reason is ExitReason.TIMEOUT, result.exit.one_line()
    assert prof.samples, "no sample in 0.5 s at 500 Hz"
    assert {(s.rip, s.cpl) for s in prof.samples} == {(ENTRY, 0)}
    p = prof.profile(lambda a: "spin+0x0/0x2" if a == ENTRY else None)
    assert [(f.name, f.percent) for f in p.functions] == [("spin", 100.0)]


ROUNDS = 20_000
PRINT_LOOP = (
    mov_dx(COM1)
    + b"\xb9" + ROUNDS.to_bytes(4, "little")  # mov ecx, ROUNDS
    + b"\xb0\x61"                             # 1: mov al, 'a'
    + b"\xee"                                 #    out dx, al
    + b"\xe2\xfb"                             #    loop 1b
    + out_imm(0x64, 0xFE)                     # pulse reset
    + b"\xf4\xeb\xfd"
)


@requires_kvm
def test_sampling_does_not_lose_or_repeat_port_io() -> None:
    """Kicks land while OUT exits are in flight; every byte still arrives exactly once."""
    with Machine(guest_program(PRINT_LOOP), memory="32M") as m, \
            GuestProfiler(m, hz=2000) as prof:
        result = m.run(timeout=120)
    assert result.exit.reason is ExitReason.RESET, result.exit.one_line()
    assert result.console == b"a" * ROUNDS
    assert all(s.cpl == 0 for s in prof.samples)


@requires_kvm
def test_cli_profile_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = tmp_path / "spin"
    kernel.write_bytes(guest_program(JMP_SELF))
    status = main(["run", str(kernel), "-m", "32M", "--timeout", "0.5", "--profile",
                   "--profile-hz", "400", "--json"])
    assert status == 124
    profile = json.loads(capsys.readouterr().out)["profile"]
    assert profile["hz"] == 400 and profile["samples"] >= 1
    # no kallsyms in this image: the samples count as the kernel's load area, where a
    # bzImage's decompressor runs
    assert profile["functions"] == [{"name": "[bzImage decompressor]",
                                     "samples": profile["samples"], "percent": 100.0}]
    # and the profile says why it has no function names
    assert profile["note"].startswith("no kernel symbols, so kernel samples are counted per address block: ")


@requires_kvm
def test_cli_profile_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = tmp_path / "spin"
    kernel.write_bytes(guest_program(JMP_SELF))
    assert main(["run", str(kernel), "-m", "32M", "--timeout", "0.5", "--profile"]) == 124
    err = capsys.readouterr().err
    assert "guest profile:" in err and "samples at 100 Hz" in err
    assert "timeline (the most sampled function in each 1 s):" in err
