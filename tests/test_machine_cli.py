"""`vmboot run`: exit statuses, the streamed console, --json, and argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import requires_kvm
from test_machine import COM1, HLT_LOOP, JMP_SELF, guest_program, mov_dx, out_dx_bytes, out_imm
from vmboot.cli.main import main
from vmboot.cli.run import EXIT_GUEST_FAILED, EXIT_OK, EXIT_TIMEOUT, exit_status
from vmboot.vmm.exits import ExitReason

HELLO_AND_RESET = mov_dx(COM1) + out_dx_bytes(b"vmboot-ok\n") + out_imm(0x64, 0xFE) + HLT_LOOP
"""Text only (captured stdout is decoded as UTF-8), then an i8042 reset."""


def write_kernel(tmp_path: Path, code: bytes) -> str:
    path = tmp_path / "bzImage"
    path.write_bytes(guest_program(code))
    return str(path)


def test_exit_status_per_reason() -> None:
    assert exit_status(ExitReason.RESET) == EXIT_OK
    assert exit_status(ExitReason.POWEROFF) == EXIT_OK
    assert exit_status(ExitReason.TIMEOUT) == EXIT_TIMEOUT
    for reason in (ExitReason.SHUTDOWN, ExitReason.INTERNAL_ERROR, ExitReason.HLT, ExitReason.PANIC):
        assert exit_status(reason) == EXIT_GUEST_FAILED


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--initrd" in out and "exit status:" in out


def test_bad_memory_is_reported_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", write_kernel(tmp_path, HELLO_AND_RESET), "-m", "lots"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmboot run: error: memory: 'lots' is not a size")
    assert "\n" not in err


def test_bad_timeout_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "k", "--timeout", "-1"])
    assert info.value.code == 2
    assert "positive number of seconds" in capsys.readouterr().err


def test_missing_kernel_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope")]) == 1
    assert "nope" in capsys.readouterr().err


@requires_kvm
def test_run_streams_console_and_exits_0_on_reset(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", write_kernel(tmp_path, HELLO_AND_RESET), "-m", "32M", "--timeout", "60"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "vmboot-ok\n"
    assert captured.err == ""


@requires_kvm
def test_run_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", write_kernel(tmp_path, HELLO_AND_RESET), "-m", "32M", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["exit"] == "reset" and summary["exit_status"] == 0
    assert summary["console_bytes"] == len(b"vmboot-ok\n")
    assert set(summary["timings"]) == {"load", "first_instruction", "first_console_byte", "exit"}
    assert captured.err == "vmboot-ok\n"  # the console went to stderr


@requires_kvm
def test_run_timeout_exits_124_with_a_reason(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", write_kernel(tmp_path, JMP_SELF), "-m", "32M", "--timeout", "0.5"]) == 124
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vmboot run: timeout")


@pytest.mark.parametrize("value", ["inf", "nan", "0", "soon"])
def test_non_finite_or_non_positive_timeouts_are_usage_errors(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    for verb in (["run", "k"], ["exec", "--kernel", "k", "--", "true"]):
        with pytest.raises(SystemExit) as info:
            main([*verb[:2], "--timeout", value, *verb[2:]] if verb[0] == "run"
                 else ["exec", "--timeout", value, *verb[1:]])
        assert info.value.code == 2
        assert "seconds" in capsys.readouterr().err


@requires_kvm
def test_run_json_lists_virtio_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4096))
    assert main(["run", write_kernel(tmp_path, HELLO_AND_RESET), "-m", "32M", "--json",
                 "--disk", f"{disk},ro,serial=abc", "--disk", f"{disk},throwaway", "--rng"]) == 0
    virtio = json.loads(capsys.readouterr().out)["virtio"]
    assert virtio["notification_path"] in ("ioeventfd/irqfd", "exits")
    assert [(d["name"], d["base"], d["irq"]) for d in virtio["devices"]] == [
        ("virtio-block0", "0xd0000000", 5), ("virtio-block1", "0xd0001000", 6),
        ("virtio-rng0", "0xd0002000", 7)]
    assert virtio["devices"][0]["read_only"] and virtio["devices"][0]["serial"] == "abc"
    assert virtio["devices"][1]["throwaway"]
    assert all(d["requests"] == 0 for d in virtio["devices"])  # this guest has no driver


def test_bad_disk_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "k", "--disk", "x.img,fast"])
    assert info.value.code == 2
    assert "unknown option 'fast'" in capsys.readouterr().err
