"""`--cpus N` / ``Machine(cpus=N)``: refused values, the JSON summary, and the per-vCPU profile."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from conftest import requires_kvm
from test_machine import COM1, JMP_SELF, guest_program, mov_dx, out_dx_bytes, out_imm
from vmboot.cli.main import main
from vmboot.errors import UsageError
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.machine import Machine
from vmboot.vmm.profile import Sample, build_profile
from vmboot.x86.mptable import MAX_CPUS

RESET_AFTER_HELLO = mov_dx(COM1) + out_dx_bytes(b"hi\n") + out_imm(0x64, 0xFE) + JMP_SELF


def write_kernel(tmp_path: Path, code: bytes) -> str:
    path = tmp_path / "bzImage"
    path.write_bytes(guest_program(code))
    return str(path)


@pytest.mark.parametrize("verb", ["run", "exec"])
@pytest.mark.parametrize("text", ["0", str(MAX_CPUS + 1), "x", "-2", "1.5"])
def test_cli_refuses_naming_value_and_range(verb: str, text: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "k", "--cpus", text] if verb == "run" else ["exec", "--cpus", text, "--", "true"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--cpus: {text!r}" in err and f"1..{MAX_CPUS}" in err, err


@pytest.mark.parametrize("cpus", [0, MAX_CPUS + 1, "2", None])
def test_machine_refuses_before_reading_the_kernel(cpus: object) -> None:
    with pytest.raises(UsageError, match=rf"cpus: .* 1\.\.{MAX_CPUS}"):
        Machine("/nonexistent/bzImage", cpus=cpus)  # type: ignore[arg-type]


def test_exec_refuses_before_building_anything() -> None:
    from vmboot.execute import exec_command

    with pytest.raises(UsageError, match="cpus: 0"):
        exec_command(["true"], kernel="/nonexistent/bzImage", busybox="/nonexistent/busybox", cpus=0)


@requires_kvm
def test_run_json_names_cpus_and_vcpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """vCPU 0 runs the program; vCPUs 1-2 wait for a SIPI that never comes and are stopped
    when vCPU 0 resets the machine. No vCPU thread outlives the run."""
    before = threading.active_count()
    assert main(["run", write_kernel(tmp_path, RESET_AFTER_HELLO), "-m", "32M", "--cpus", "3",
                 "--json", "--timeout", "60"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["exit"], summary["cpus"], summary["vcpu"]) == ("reset", 3, 0)
    assert isinstance(summary["cpuid_hidden"], list)
    assert threading.active_count() == before


@requires_kvm
def test_timeout_on_a_three_vcpu_machine_names_vcpu_0_and_resumes(tmp_path: Path) -> None:
    with Machine(write_kernel(tmp_path, JMP_SELF), memory="32M", cpus=3) as m:
        assert len(m.vcpus) == 3 and m.vcpu_set is not None and len(m.vcpu_set) == 3
        first = m.run(timeout=0.3)
        assert first.exit.reason is ExitReason.TIMEOUT and first.exit.vcpu == 0
        assert "vCPU 0" in first.exit.one_line()
        again = m.run(timeout=0.3)
        assert again.exit.reason is ExitReason.TIMEOUT
    assert not m.vcpus and m.vcpu_set is None


def test_profile_splits_samples_per_vcpu() -> None:
    samples = [Sample(0.0, 0x1000, 0, 0), Sample(0.1, 0x1000, 0, 0), Sample(0.1, 0x2000, 0, 1),
               Sample(0.2, 0x7000, 3, 1)]
    profile = build_profile(samples, 10, lambda a: f"f{a:x}+0x0")
    assert [(c.cpu, c.samples, round(c.percent)) for c in profile.per_cpu] == [(0, 2, 50), (1, 2, 50)]
    assert [f.name for f in profile.per_cpu[1].functions] == ["[user mode]", "f2000"]
    text = profile.render()
    assert "vCPU 0" in text and "vCPU 1" in text
    d = json.loads(json.dumps(profile.as_dict()))
    assert [c["cpu"] for c in d["per_cpu"]] == [0, 1]
    single = build_profile(samples[:2], 10, None)
    assert "per vCPU" not in single.render(), "one vCPU: no split to show"
