"""Real console logs -> the reports and verdict ``vmboot report`` must find.

``tests/data/console-logs/expected.json`` lists every log of the corpus: Debian's 6.1 cloud
kernel recorded under QEMU TCG by ``record.py`` (a report of each core kind), and real
reports of the kernel's debugging tools (KASAN, KMSAN, KCSAN, KFENCE, UBSAN, lockdep,
kmemleak, refcount, might_sleep) and of kernels 4.x to 6.x from syzkaller's report test
data, with the title syzkaller gives each (``syzkaller_title``).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vmboot.cli.main import main
from vmboot.report import ReportType, Verdict, read_console

REPO = Path(__file__).resolve().parent.parent
LOGS = REPO / "tests" / "data" / "console-logs"
EXPECTED: dict[str, dict[str, Any]] = json.loads((LOGS / "expected.json").read_text())
CORE_VERDICTS = {Verdict.OK, Verdict.PANIC, Verdict.OOPS, Verdict.BUG, Verdict.WARNING,
                 Verdict.SOFT_LOCKUP, Verdict.HUNG_TASK, Verdict.RCU_STALL}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_log_gives_the_expected_reports(name: str) -> None:
    want = EXPECTED[name]
    reading = read_console((LOGS / name).read_bytes())
    assert [[r.type.value, r.title] for r in reading.reports] == want["reports"]
    assert reading.verdict.value == want["verdict"]
    if "syzkaller_title" in want:
        assert reading.reports[0].title == want["syzkaller_title"]


def test_corpus_covers_every_report_type_and_log_verdict() -> None:
    types = {t for entry in EXPECTED.values() for t, _ in entry["reports"]}
    assert types == {t.value for t in ReportType}
    verdicts = {entry["verdict"] for entry in EXPECTED.values()}
    assert {v.value for v in CORE_VERDICTS} <= verdicts
    recorded = {entry["verdict"] for name, entry in EXPECTED.items() if name.startswith("debian")}
    assert {v.value for v in CORE_VERDICTS} <= recorded, "each core kind from a recorded boot"


def test_every_log_in_the_directory_is_listed() -> None:
    logs = {str(p.relative_to(LOGS)) for p in LOGS.rglob("*.log")}
    assert logs == set(EXPECTED)


def test_reports_span_their_lines_and_keep_frames() -> None:
    log = (LOGS / "debian-6.1.0-57-oops.log").read_text()
    (report,) = read_console(log).reports
    lines = log.splitlines()
    assert "BUG: kernel NULL pointer dereference" in lines[report.first_line - 1]
    assert "---[ end trace" in lines[report.last_line - 1]
    symbols = [f.symbol for f in report.frames]
    assert symbols[:3] == ["provoke_null_write", "vmboot_provoke_init", "do_one_initcall"]
    assert report.frames[0].offset is not None and report.frames[0].offset > 0


def _cli_json(argv: list[str], stdin: bytes | None = None) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "vmboot", *argv], input=stdin,
                          capture_output=True, check=False, cwd=REPO,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    return proc.returncode, json.loads(proc.stdout)


def test_cli_json_matches_the_library() -> None:
    path = LOGS / "debian-6.1.0-57-warning.log"
    code, out = _cli_json(["report", str(path), "--json"])
    assert code == 1
    assert out == read_console(path.read_bytes()).as_dict()
    assert set(out) == {"verdict", "reports"}
    assert set(out["reports"][0]) == {"type", "title", "first_line", "last_line", "frames"}
    assert set(out["reports"][0]["frames"][0]) == {"symbol", "offset"}


def test_cli_reads_stdin_and_says_ok_without_reports() -> None:
    code, out = _cli_json(["report", "-", "--json"],
                          stdin=(LOGS / "debian-6.1.0-57-ok.log").read_bytes())
    assert (code, out) == (0, {"verdict": "ok", "reports": []})


def test_cli_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(LOGS / "debian-6.1.0-57-panic.log")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["verdict: panic", "panic: kernel panic: sysrq triggered crash"]
    assert "    sysrq_handle_crash+0x16" in out


def test_cli_missing_log_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    assert main(["report", str(tmp_path / "none.log")]) == 1
    err = capsys.readouterr().err
    assert "LOG: cannot read" in err and "none.log" in err and "standard input" in err


def test_cli_stdin_dash(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = (LOGS / "syzkaller" / "51.log").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["report", "-", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "bug"
    assert out["reports"][0]["title"] == "memory leak in do_ipv6_setsockopt"


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["report", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "vmboot report - --json" in out and "exit status:" in out
    assert all(v.value in out for v in CORE_VERDICTS)
    for verb in ("run", "exec"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        assert "--fail-on" in capsys.readouterr().out
