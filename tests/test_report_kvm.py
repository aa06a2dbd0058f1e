"""Verdicts of real Linux boots under KVM: a panic, a clean reboot, a timeout.

Three boots of the tiny kernel with the 1.4 KB nolibc init (``vmboot.panic=1`` crashes it
through ``/proc/sysrq-trigger``); each is shared by the checks on it. The other kinds come
from a tiny-smp guest whose kernel the host patches (``test_report_faults.py``) and from
recorded boots of a distribution kernel (``test_report_corpus.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import requires_kvm, shared_kernel_file
from vmboot.cli.main import main
from vmboot.report import ReportType, Verdict
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.machine import Machine, RunResult

pytestmark = [pytest.mark.slow, requires_kvm]
CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet"
BOOT_TIMEOUT_S = 180


def _boot(append: str, timeout: float) -> RunResult:
    kernel = shared_kernel_file("tiny-bzImage")
    initrd = shared_kernel_file("tiny-initramfs-min.cpio")
    with Machine(kernel, initrd=initrd, memory="64M", cmdline=f"{CMDLINE} {append}".strip(),
                 on_panic=None) as machine:
        return machine.run(timeout=timeout)


@pytest.fixture(scope="module")
def panicked() -> RunResult:
    return _boot("vmboot.panic=1", BOOT_TIMEOUT_S)


@pytest.fixture(scope="module")
def rebooted() -> RunResult:
    return _boot("", BOOT_TIMEOUT_S)


def test_panic_verdict_and_report(panicked: RunResult) -> None:
    assert panicked.exit.reason is ExitReason.PANIC
    assert panicked.verdict is Verdict.PANIC
    assert panicked.reading is not None
    (report,) = panicked.reading.reports
    assert report.type is ReportType.PANIC
    assert report.title == "kernel panic: sysrq triggered crash"
    symbols = [f.symbol for f in report.frames]
    assert "sysrq_handle_crash" in symbols and "panic" in symbols
    lines = panicked.console_text.splitlines()
    assert "Kernel panic - not syncing: sysrq triggered crash" in lines[report.first_line - 1]
    summary = json.loads(json.dumps(panicked.as_dict()))
    assert summary["verdict"] == "panic"
    assert summary["reports"][0]["title"] == report.title


def test_clean_reboot_is_ok(rebooted: RunResult) -> None:
    assert rebooted.exit.reason is ExitReason.RESET
    assert "VMBOOT-INIT-OK" in rebooted.console_text
    assert rebooted.verdict is Verdict.OK
    assert rebooted.reading is not None and rebooted.reading.reports == []


def test_timeout_verdict_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = shared_kernel_file("tiny-bzImage")
    initrd = shared_kernel_file("tiny-initramfs-min.cpio")
    status = main(["run", str(kernel), "--initrd", str(initrd), "-m", "64M", "--timeout", "4",
                   "--append", CMDLINE, "--json", "--fail-on", "warning"])
    summary = json.loads(capsys.readouterr().out)
    assert status == 124
    assert (summary["exit"], summary["verdict"], summary["reports"]) == ("timeout", "timeout", [])
