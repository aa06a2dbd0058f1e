"""`vmboot run --snapshot FILE` saves a guest when a console text appears, and
`vmboot run --restore FILE` resumes it there (a small guest program, no Linux)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import requires_kvm
from test_machine import COM1, HLT_LOOP, mov_dx, out_dx_bytes, out_imm
from test_machine_cli import write_kernel
from vmboot.cli.main import main
from vmboot.cli.run import EXIT_OK

pytestmark = [requires_kvm, pytest.mark.kvm]

SPIN = 200_000
PROMPT_THEN_WORK = (
    mov_dx(COM1) + out_dx_bytes(b"go> ")
    + mov_dx(COM1 + 1) + b"\xb0\x02\xee\xb0\x00\xee"  # IER: THRI on, off (a burst's end)
    + b"\xb9" + SPIN.to_bytes(4, "little")  # mov ecx, SPIN
    + b"\xff\xc9\x75\xfc"                   # 1: dec ecx; jnz 1b
    + mov_dx(COM1) + out_dx_bytes(b"after\n") + out_imm(0x64, 0xFE) + HLT_LOOP
)
"""Prints a prompt, works a while, prints "after" and resets: resumed from a snapshot
taken at the prompt, only "after" appears."""


def test_snapshot_at_a_prompt_then_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = write_kernel(tmp_path, PROMPT_THEN_WORK)
    snap = tmp_path / "prompt.snap"
    common = [kernel, "-m", "32M", "--timeout", "60"]
    assert main(["run", *common, "--snapshot", str(snap), "--snapshot-when", "go> ",
                 "--json"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert json.loads(out)["snapshot"] == str(snap)
    assert err == "go> "
    assert main(["run", *common, "--restore", str(snap)]) == EXIT_OK
    out, _ = capsys.readouterr()
    assert out == "after\n"


def test_restore_with_another_command_line_is_refused(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    kernel = write_kernel(tmp_path, PROMPT_THEN_WORK)
    snap = tmp_path / "prompt.snap"
    assert main(["run", kernel, "-m", "32M", "--snapshot", str(snap), "--snapshot-when",
                 "go> "]) == EXIT_OK
    capsys.readouterr()
    assert main(["run", kernel, "-m", "32M", "--append", "console=ttyS0", "--restore",
                 str(snap)]) == 1
    _, err = capsys.readouterr()
    assert "command line 'console=ttyS0' differs" in err


def test_several_vcpus_are_saved_and_a_restore_needs_as_many(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = write_kernel(tmp_path, PROMPT_THEN_WORK)
    snap = tmp_path / "prompt.snap"
    common = [kernel, "-m", "32M", "--timeout", "60", "--cpus", "2"]
    assert main(["run", *common, "--snapshot", str(snap), "--snapshot-when", "go> "]) == EXIT_OK
    capsys.readouterr()
    assert main(["run", kernel, "-m", "32M", "--restore", str(snap)]) == 1
    _, err = capsys.readouterr()
    assert "saved with 2 vCPUs, this machine has cpus=1; restore with cpus=2 (--cpus 2)" in err
    assert main(["run", *common, "--restore", str(snap)]) == EXIT_OK
    out, _ = capsys.readouterr()
    assert out == "after\n"
