"""vmboot.Machine: construction checks (no KVM), and tiny guest programs run under real KVM.

The KVM tests boot a synthetic bzImage whose 64-bit entry is a few hand-assembled
instructions, so they exercise the whole path (load, vCPU set-up, run loop, port bus,
UART, RTC, i8042) in well under a second of guest time, without Linux.
"""

from __future__ import annotations

import io
import json

import pytest

from bzimage_builder import BzImageSpec, build_bzimage
from conftest import requires_kvm
from vmboot.errors import BootConfigError, UsageError
from vmboot.linux import bootparam as bp
from vmboot.vmm.exits import ExitReason, VmExit
from vmboot.vmm.machine import BootTimings, Machine, RunResult

ENTRY_64_OFFSET = 0x200
"""The 64-bit entry point is this far into the protected-mode part of a bzImage."""
COM1 = 0x3F8


def mov_dx(port: int) -> bytes:
    return b"\x66\xba" + port.to_bytes(2, "little")


def out_dx_bytes(text: bytes) -> bytes:
    """mov al, c; out dx, al -- for each byte."""
    return b"".join(b"\xb0" + bytes([c]) + b"\xee" for c in text)


def out_imm(port: int, value: int) -> bytes:
    return b"\xb0" + bytes([value]) + b"\xe6" + bytes([port])


IN_AL_IMM = b"\xe4"
OUT_DX_AL = b"\xee"
HLT_LOOP = b"\xf4\xeb\xfd"
JMP_SELF = b"\xeb\xfe"
UD2 = b"\x0f\x0b"


def guest_program(code: bytes) -> bytes:
    """A bzImage whose 64-bit entry runs ``code``."""
    spec = BzImageSpec()
    image = bytearray(build_bzimage(spec))
    entry = (spec.setup_sects + 1) * bp.SECTOR_SIZE + ENTRY_64_OFFSET
    image[entry : entry + len(code)] = code
    return bytes(image)


HELLO_AND_RESET = (
    mov_dx(COM1)
    + out_dx_bytes(b"vmboot-ok\n")
    + out_imm(0x70, 0x0D) + IN_AL_IMM + b"\x71" + OUT_DX_AL  # CMOS register D -> console
    + IN_AL_IMM + b"\x64"  # i8042 status, as kb_wait() polls it
    + out_imm(0x64, 0xFE)  # pulse reset
    + HLT_LOOP
)


# -- without KVM ------------------------------------------------------------------------------
def test_bad_memory_size_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="memory: '12Q'"):
        Machine(b"", memory="12Q")


def test_bad_cpuid_policy_is_refused() -> None:
    with pytest.raises(UsageError, match=r"cpuid_policy: 'fast'.*auto, host, conservative"):
        Machine(b"", cpuid_policy="fast")


def test_bad_on_timeout_is_refused() -> None:
    with pytest.raises(UsageError, match="on_timeout"):
        Machine(b"", on_timeout="dump")  # type: ignore[arg-type]


def test_bad_console_is_refused() -> None:
    with pytest.raises(BootConfigError, match="console"):
        Machine(b"", console=42)  # type: ignore[arg-type]


def test_run_before_start_is_refused() -> None:
    with pytest.raises(BootConfigError, match="not started"):
        Machine(b"").run(timeout=1)


def test_run_result_summary_is_json_ready() -> None:
    result = RunResult(
        exit=VmExit(ExitReason.RESET, "i8042 command 0xfe (pulse CPU reset)"),
        console=b"abc",
        timings=BootTimings(0.1, 0.2, 0.3, 0.4),
        console_total=3,
    )
    summary = json.loads(json.dumps(result.as_dict()))
    assert summary["exit"] == "reset"
    assert summary["clean"] is True
    assert summary["console_bytes"] == 3
    assert summary["timings"]["first_console_byte"] == 0.3


def test_lazy_exports_from_the_package() -> None:
    import vmboot

    assert vmboot.Machine is Machine
    assert vmboot.RunResult is RunResult
    with pytest.raises(AttributeError):
        _ = vmboot.NoSuchThing


# -- under KVM --------------------------------------------------------------------------------
@requires_kvm
def test_guest_prints_reads_rtc_and_resets() -> None:
    chunks: list[bytes] = []
    with Machine(guest_program(HELLO_AND_RESET), memory="32M", console=chunks.append) as m:
        result = m.run(timeout=60)
    assert result.exit.reason is ExitReason.RESET, result.exit.one_line()
    assert result.console == b"vmboot-ok\n\x80"  # the text, then CMOS register D (VRT set)
    assert b"".join(chunks) == result.console
    t = result.timings
    assert t.first_console_byte is not None
    assert 0 <= t.load <= t.first_instruction <= t.first_console_byte <= t.exit
    assert m.platform.i8042.resets == 1


@requires_kvm
def test_console_to_a_binary_stream() -> None:
    out = io.BytesIO()
    with Machine(guest_program(HELLO_AND_RESET), memory="32M", console=out) as m:
        result = m.run(timeout=60)
    assert out.getvalue() == result.console


@requires_kvm
def test_triple_fault_ends_the_run() -> None:
    # No IDT (limit 0): #UD cannot be delivered -> #DF -> triple fault.
    with Machine(guest_program(mov_dx(COM1) + out_dx_bytes(b"x") + UD2), memory="32M") as m:
        result = m.run(timeout=60)
    assert result.exit.reason is ExitReason.SHUTDOWN, result.exit.one_line()
    assert not result.clean
    assert result.console == b"x"


@requires_kvm
def test_timeout_then_trace_hook() -> None:
    calls: list[VmExit] = []
    with Machine(guest_program(JMP_SELF), memory="32M",
                 on_timeout=lambda machine, ex: calls.append(ex)) as m:
        result = m.run(timeout=0.5)
    assert result.exit.reason is ExitReason.TIMEOUT, result.exit.one_line()
    assert calls == [result.exit]
    assert result.timings.first_console_byte is None


@requires_kvm
def test_timeout_trace_without_symbols_leaves_a_note() -> None:
    with Machine(guest_program(JMP_SELF), memory="32M", on_timeout="trace") as m:
        result = m.run(timeout=0.5)
    assert result.exit.reason is ExitReason.TIMEOUT
    assert result.stack_trace is None
    assert any(n.startswith("on_timeout='trace': no stack trace") for n in result.notes), result.notes
