"""The classifier on variations of real logs: timestamps, caller ids, interleaving, 4.x and
6.x formats, several reports, none; the verdict rules; ``--fail-on``; run and exec results."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import requires_kvm, shared_kernel_file
from test_machine import COM1, HLT_LOOP, guest_program, mov_dx, out_dx_bytes, out_imm
from vmboot.cli.main import main
from vmboot.errors import UsageError
from vmboot.report import ReportType, Verdict, decide, find_reports, parse_fail_on, read_console
from vmboot.report.classify import clean_function
from vmboot.report.lines import kernel_text, parse_frame, parse_rip
from vmboot.vmm.exits import ExitReason, VmExit
from vmboot.vmm.machine import BootTimings, RunResult

LOGS = Path(__file__).resolve().parent / "data" / "console-logs"
TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\] ")


def log(name: str) -> str:
    return (LOGS / name).read_text()


def titles(text: str) -> list[tuple[str, str]]:
    return [(r.type.value, r.title) for r in find_reports(text)]


OOPS = log("debian-6.1.0-57-oops.log")
OOPS_TITLES = [("oops", "BUG: unable to handle kernel NULL pointer dereference in provoke_null_write")]


# -- prefixes -------------------------------------------------------------------------------------
def test_prefixes_are_removed() -> None:
    assert kernel_text("[   12.345678] BUG: x\n") == "BUG: x"
    assert kernel_text("[   12.345678][    T1] BUG: x") == "BUG: x"
    assert kernel_text("[   12.345678] [  T123] BUG: x") == "BUG: x"
    assert kernel_text("[    0.000000][    C0]  dump_stack+0x1/0x2") == " dump_stack+0x1/0x2"
    assert kernel_text("<4>[   85.501187] WARNING: foo\r") == "WARNING: foo"
    assert kernel_text("<6>no timestamp") == "no timestamp"
    assert kernel_text("login: [   99.000001] Kernel panic - not syncing: x") == \
        "Kernel panic - not syncing: x"
    assert kernel_text("plain line") == "plain line"


def test_without_timestamps() -> None:
    bare = "\n".join(TIMESTAMP.sub("", line) for line in OOPS.splitlines())
    assert titles(bare) == OOPS_TITLES
    assert find_reports(bare)[0].first_line == find_reports(OOPS)[0].first_line


@pytest.mark.parametrize("caller", ["[    T81]", "[T81]", " [    C0]"])
def test_with_caller_ids(caller: str) -> None:
    tagged = "\n".join(TIMESTAMP.sub(lambda m: m.group(0)[:-1] + caller + " ", line)
                       for line in OOPS.splitlines())
    assert tagged.count(caller + " ") > 300
    assert titles(tagged) == OOPS_TITLES


def test_syslog_levels_and_crlf() -> None:
    assert titles("\r\n".join("<4>" + line for line in OOPS.splitlines())) == OOPS_TITLES


def test_other_output_interleaved_and_glued() -> None:
    lines = OOPS.splitlines()
    (report,) = find_reports(OOPS)
    first, last = report.first_line - 1, report.last_line - 1
    noisy = list(lines)
    for at in range(last, first + 1, -7):  # a line of other output every seven lines
        noisy.insert(at, "executing program 1:")
    noisy[first] = "~ # " + noisy[first]  # a prompt without its newline in front
    (again,) = find_reports("\n".join(noisy))
    assert (again.type.value, again.title) == OOPS_TITLES[0]
    assert again.first_line == report.first_line
    assert [f.symbol for f in again.frames] == [f.symbol for f in report.frames]
    assert "---[ end trace" in noisy[again.last_line - 1]


# -- 4.x and 6.x formats --------------------------------------------------------------------------
def test_rip_formats() -> None:
    new = parse_rip("RIP: 0010:provoke_null_write+0xa/0x20 [vmboot_provoke]")
    old = parse_rip("RIP: 0010:[<ffffffff82d4e304>]  [<ffffffff82d4e304>] __memset+0x24/0x30")
    older = parse_rip("IP: [<ffffffff8184d2c4>] inet_sendmsg+0x44/0x1c0")
    assert new is not None and (new.symbol, new.offset) == ("provoke_null_write", 0xa)
    assert old is not None and (old.symbol, old.offset, old.address) == ("__memset", 0x24, 0xffffffff82d4e304)
    assert older is not None and older.symbol == "inet_sendmsg"
    assert parse_rip("RIP: 0033:0x47fbe9") is None  # user mode
    bare = parse_rip("RIP: 0010:0xffffffff8100abcd")
    assert bare is not None and (bare.symbol, bare.address) == (None, 0xffffffff8100abcd)


def test_frame_formats() -> None:
    cases = {
        " dump_stack_lvl+0x44/0x5c": ("dump_stack_lvl", 0x44, None, False),
        " ? do_filp_open+0xaf/0x160": ("do_filp_open", 0xaf, None, True),
        " provoke_spin+0x22/0xfeb [vmboot_provoke]": ("provoke_spin", 0x22, None, False),
        " [<ffffffff81a2a3b1>] dump_stack+0x4d/0x6c": ("dump_stack", 0x4d, 0xffffffff81a2a3b1, False),
        " [<ffffffff8131a1e7>] ? kasan_kmalloc+0x5/0x1e0": ("kasan_kmalloc", 5, 0xffffffff8131a1e7, True),
        " __dump_stack lib/dump_stack.c:88 [inline]": ("__dump_stack", None, None, False),
        " [<ffffffffa0001234>] 0xffffffffa0001234": (None, None, 0xffffffffa0001234, False),
        " ? 0xffffffffc032e000": (None, None, 0xffffffffc032e000, True),
    }
    for text, want in cases.items():
        frame = parse_frame(text)
        assert frame is not None, text
        assert (frame.symbol, frame.offset, frame.address, frame.unreliable) == want, text
    assert parse_frame("Modules linked in: vmboot_provoke(OE+)") is None
    assert parse_frame("RSP: 0018:ffffd0318059bb58 EFLAGS: 00000283") is None


def test_old_and_new_oops_give_the_same_kind_of_title() -> None:
    old = titles(log("syzkaller/247.log"))  # Linux 4.1: IP: [<...>], [<addr>] frames
    assert old[0] == ("oops", "BUG: unable to handle kernel NULL pointer dereference in inet_sendmsg")
    assert titles(OOPS)[0][1].startswith("BUG: unable to handle kernel NULL pointer dereference in ")


def test_function_names_are_cleaned() -> None:
    assert clean_function("__schedule_bug.cold+0x42/0x4e") == "__schedule_bug"
    assert clean_function("tcp_v4_rcv.isra.0") == "tcp_v4_rcv"
    assert clean_function("__x64_sys_finit_module") == "finit_module"
    assert clean_function("__do_sys_finit_module") == "finit_module"


# -- several reports, none ------------------------------------------------------------------------
def test_several_reports_in_one_log_keep_their_line_numbers() -> None:
    first = log("debian-6.1.0-57-warning.log")
    second = log("debian-6.1.0-57-oops.log")
    joined = first + second
    reports = find_reports(joined)
    assert [(r.type.value, r.title) for r in reports] == titles(first) + titles(second)
    offset = len(first.splitlines())
    assert reports[-1].first_line == find_reports(second)[0].first_line + offset
    assert read_console(joined).verdict is Verdict.OOPS


def test_a_log_without_reports() -> None:
    reading = read_console(log("debian-6.1.0-57-ok.log"))
    assert reading.reports == [] and reading.verdict is Verdict.OK
    assert reading.as_dict() == {"verdict": "ok", "reports": []}
    assert read_console(b"").as_dict() == {"verdict": "ok", "reports": []}


def test_panic_after_a_warning_is_a_second_report() -> None:
    reading = read_console(log("syzkaller/157.log"))  # panic_on_warn
    assert [r.type for r in reading.reports] == [ReportType.REFCOUNT, ReportType.PANIC]
    assert reading.verdict is Verdict.PANIC
    assert reading.reports[0].title == "WARNING: refcount bug in sctp_wfree"


# -- bare addresses -------------------------------------------------------------------------------
def _addresses_for_names(text: str) -> tuple[str, dict[int, str]]:
    """The log with each ``name+0xoff/0xsize`` frame printed as a bare address, as a kernel
    without kallsyms prints it, and the symbol table that maps the addresses back."""
    names: dict[str, int] = {}
    table: dict[int, str] = {}

    def bare(m: re.Match[str]) -> str:
        base = names.setdefault(m["name"], 0xffffffff81000000 + 0x1000 * len(names))
        address = base + int(m["off"], 16)
        table[address] = f"{m['name']}+{m['off']}/{m['size']}"
        return f"{m['lead']}0x{address:x}"

    frame = re.compile(r"(?P<lead>^\[[ .0-9]+\]  (?:\? )?|RIP: 0010:)(?P<name>\w+)\+(?P<off>0x[0-9a-f]+)"
                       r"/(?P<size>0x[0-9a-f]+)(?: \[\w+\])?", re.M)
    return frame.sub(bare, text), table


def test_bare_addresses_are_symbolised() -> None:
    stripped, table = _addresses_for_names(OOPS)
    assert "provoke_null_write+" not in stripped
    (unnamed,) = find_reports(stripped)
    assert unnamed.title == "BUG: unable to handle kernel NULL pointer dereference"
    assert unnamed.frames[0].symbol is None
    (named,) = find_reports(stripped, symbolize=table.get)
    assert (named.type.value, named.title) == OOPS_TITLES[0]
    assert [(f.symbol, f.offset) for f in named.frames] == \
        [(f.symbol, f.offset) for f in find_reports(OOPS)[0].frames]


def test_cli_symbolises_with_a_system_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    system_map = shared_kernel_file("tiny-System.map")
    symbols = {}
    for line in system_map.read_text().splitlines():
        address, kind, name = line.split()[:3]
        if kind in "tT":
            symbols[name] = int(address, 16)
    panic = log("debian-6.1.0-57-panic.log")
    names = [f.symbol for f in find_reports(panic)[0].frames if f.symbol in symbols]
    assert "sysrq_handle_crash" in names
    offset = re.search(r"Kernel Offset: (0x[0-9a-f]+) from", panic)
    assert offset is not None  # KASLR: the addresses printed are the symbols' plus this
    slide = int(offset[1], 16)
    bare = re.sub(r"^(\[[ .0-9]+\]  )(\w+)\+(0x[0-9a-f]+)/0x[0-9a-f]+$",
                  lambda m: m[1] + (f"0x{symbols[m[2]] + slide:x}" if m[2] in symbols
                                    else m[0][len(m[1]):]),
                  panic, flags=re.M)
    path = tmp_path / "bare.log"
    path.write_text(bare)
    assert main(["report", str(path), "--json", "--system-map", str(system_map)]) == 1
    frames = json.loads(capsys.readouterr().out)["reports"][0]["frames"]
    # Each function's start address (the other kernel's offsets do not fit this one's sizes).
    assert [f["symbol"] for f in frames if f["symbol"] in symbols] == names
    assert {f["offset"] for f in frames if f["symbol"] in names} == {0}


# -- verdicts -------------------------------------------------------------------------------------
def test_verdict_precedence() -> None:
    warning = find_reports(log("debian-6.1.0-57-warning.log"))
    oops = find_reports(OOPS)
    assert decide([]) is Verdict.OK
    assert decide([], ExitReason.RESET) is Verdict.OK
    assert decide([], ExitReason.POWEROFF, command_failed=True) is Verdict.COMMAND_FAILED
    assert decide(warning, ExitReason.RESET) is Verdict.WARNING
    assert decide(warning + oops) is Verdict.OOPS
    assert decide(warning, ExitReason.TIMEOUT) is Verdict.WARNING
    assert decide([], ExitReason.TIMEOUT, command_failed=True) is Verdict.TIMEOUT
    assert decide(oops, ExitReason.PANIC) is Verdict.PANIC
    assert decide(oops, ExitReason.SHUTDOWN) is Verdict.TRIPLE_FAULT
    assert decide([], ExitReason.INTERNAL_ERROR) is Verdict.EMULATION_FAILURE
    assert decide([], ExitReason.HLT) is Verdict.COMMAND_FAILED


def test_fail_on_parsing() -> None:
    assert parse_fail_on("warning,oops") == {Verdict.WARNING, Verdict.OOPS}
    assert parse_fail_on(" soft-lockup , ") == {Verdict.SOFT_LOCKUP}
    with pytest.raises(UsageError, match=r"--fail-on: 'oopz' is not a verdict; choose from .*oops"):
        parse_fail_on("warning,oopz")
    with pytest.raises(UsageError, match="names no verdict"):
        parse_fail_on(",")
    with pytest.raises(UsageError):
        parse_fail_on("ok")


def test_fail_on_sees_every_report_not_only_the_verdict() -> None:
    reading = read_console(log("debian-6.1.0-57-atomic-sleep.log"))  # a BUG, then a WARNING
    assert reading.verdict is Verdict.BUG
    assert reading.triggered(frozenset({Verdict.WARNING})) == [Verdict.WARNING]
    assert reading.triggered(frozenset({Verdict.OOPS})) == []


def test_run_result_verdict_and_json() -> None:
    result = RunResult(exit=VmExit(ExitReason.RESET, "i8042"),
                       console=log("debian-6.1.0-57-warning.log").encode(),
                       timings=BootTimings(0.1, 0.2, 0.3, 0.4))
    assert result.verdict is Verdict.WARNING
    summary = json.loads(json.dumps(result.as_dict()))
    assert summary["verdict"] == "warning"
    assert summary["reports"][0]["title"] == "WARNING in vmboot_provoke_init"
    clean = RunResult(exit=VmExit(ExitReason.RESET), console=b"hello\n",
                      timings=BootTimings(0.1, 0.2, 0.3, 0.4))
    assert clean.verdict is Verdict.OK


def test_exec_result_verdict() -> None:
    from vmboot.execute import ExecReason, ExecResult, ExecTimings

    timings = ExecTimings(0.0, 0.1, None, 1.0, 2.0, 2.5)

    def result(status: int, console: str) -> ExecResult:
        return ExecResult(stdout=b"", stderr=b"", exit_status=status, reason=ExecReason.EXITED,
                          timings=timings, console=console.encode(),
                          vm_exit=VmExit(ExitReason.STOPPED))

    assert result(0, "").verdict is Verdict.OK
    assert result(3, "").verdict is Verdict.COMMAND_FAILED
    assert result(0, log("debian-6.1.0-57-hung-task.log")).verdict is Verdict.HUNG_TASK
    assert result(0, OOPS).as_dict()["verdict"] == "oops"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([*OOPS.splitlines()[340:420], "", "x", "BUG:", "WARNING:"]),
                max_size=60))
def test_any_shuffle_of_report_lines_classifies(lines: list[str]) -> None:
    text = "\n".join(lines)
    for report in find_reports(text):
        assert 1 <= report.first_line <= report.last_line <= len(lines)
        assert report.title and "\n" not in report.title


# -- the whole path, from a guest's console to vmboot run's exit status ----------------------------
def _warning_then_reset() -> bytes:
    text = log("debian-6.1.0-57-warning.log")
    (report,) = find_reports(text)
    lines = text.splitlines()[report.first_line - 1:report.last_line]
    printed = "\n".join(TIMESTAMP.sub("", line) for line in lines) + "\n"
    return mov_dx(COM1) + out_dx_bytes(printed.encode()) + out_imm(0x64, 0xFE) + HLT_LOOP


@requires_kvm
def test_run_fail_on_turns_a_clean_reset_into_a_failure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(guest_program(_warning_then_reset()))
    assert main(["run", str(kernel), "-m", "64M", "--timeout", "60", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["exit"], summary["verdict"]) == ("reset", "warning")
    assert summary["reports"][0]["title"] == "WARNING in vmboot_provoke_init"
    assert main(["run", str(kernel), "-m", "64M", "--timeout", "60",
                 "--fail-on", "oops,warning"]) == 1
    assert "vmboot run: --fail-on warning: WARNING in vmboot_provoke_init" in capsys.readouterr().err


def test_exec_fail_on_turns_status_0_into_121(monkeypatch: pytest.MonkeyPatch,
                                               capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    import vmboot.execute.api
    from vmboot.cli.exec import EXIT_FAIL_ON
    from vmboot.execute import ExecReason, ExecResult, ExecTimings

    def fake(command: list[str], **kw: object) -> ExecResult:
        return ExecResult(stdout=b"", stderr=b"", exit_status=0, reason=ExecReason.EXITED,
                          timings=ExecTimings(0.0, 0.1, None, 1.0, 2.0, 2.5),
                          console=log("debian-6.1.0-57-bug.log").encode(),
                          vm_exit=VmExit(ExitReason.STOPPED))

    monkeypatch.setattr(vmboot.execute.api, "exec_command", fake)
    assert main(["exec", "--kernel", "k", "--", "true"]) == 0
    assert main(["exec", "--kernel", "k", "--fail-on", "warning", "--", "true"]) == 0
    capsysbinary.readouterr()
    assert main(["exec", "--kernel", "k", "--fail-on", "warning,bug", "--", "true"]) == EXIT_FAIL_ON
    assert b"--fail-on bug: kernel BUG in vmboot_provoke_init" in capsysbinary.readouterr().err
