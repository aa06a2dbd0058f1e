"""When a Machine writes vmcores: trigger parsing, validation, the oops watch, naming."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vmboot.devices.console import ConsoleOutput
from vmboot.errors import UsageError
from vmboot.vmm.dumps import DUMP_TRIGGERS, DumpPolicy, parse_triggers
from vmboot.vmm.machine import Machine, _PanicWatch


def test_triggers_parse_from_text_and_lists() -> None:
    assert parse_triggers("panic, oops,timeout") == frozenset(DUMP_TRIGGERS)
    assert parse_triggers(["panic"]) == frozenset({"panic"})
    assert parse_triggers("") == frozenset()


def test_unknown_trigger_is_a_usage_error_naming_the_choices() -> None:
    with pytest.raises(UsageError, match=r"'crash'.*panic, oops, timeout"):
        parse_triggers("panic,crash")


def test_triggers_need_a_directory() -> None:
    with pytest.raises(UsageError, match="needs dump_dir"):
        DumpPolicy("panic")


def test_machine_validates_dump_options_before_building_anything(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a trigger"):
        Machine(b"not a kernel", dump_on="reboot", dump_dir=tmp_path)
    with pytest.raises(UsageError, match="needs dump_dir"):
        Machine(b"not a kernel", dump_on="timeout")
    assert list(tmp_path.iterdir()) == []


def test_paths_count_up_and_name_the_trigger(tmp_path: Path) -> None:
    policy = DumpPolicy("timeout", tmp_path / "new")
    assert policy.next_path("demand") == tmp_path / "new" / "vmcore.1.demand"
    assert policy.next_path("timeout") == tmp_path / "new" / "vmcore.2.timeout"
    assert (tmp_path / "new").is_dir()


def test_a_directory_that_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot create"):
        DumpPolicy("panic", tmp_path / "file" / "sub").next_path("panic")


class _Machine:
    def request_stop(self, *args: object) -> None:
        pass

    def when_stopped(self, action: Callable[[], object]) -> None:
        action()

    def _oops_traces(self) -> str:
        return ""


def test_each_oops_calls_the_hook_once() -> None:
    seen: list[int] = []
    watch = _PanicWatch(_Machine())  # type: ignore[arg-type]
    watch.on_oops = lambda: seen.append(1)
    console = ConsoleOutput()
    console.line_watcher = watch
    for b in (b"[ 1.0] BUG: kernel NULL pointer dereference, address: 0\n"
              b"[ 1.1] #PF: supervisor write access in kernel mode\n"
              b"[ 1.2] Oops: 0002 [#1] SMP\n[ 1.3] ---[ end trace 0000000000000000 ]---\n"
              b"[ 2.0] an ordinary line\n[ 3.0] general protection fault, probably for\n"):
        console.put(b)
    assert seen == [1, 1]  # the BUG/Oops pair is one oops; the fault after its end another


def test_a_soft_lockup_is_no_oops_and_a_bug_is_one() -> None:
    """A soft-lockup report never prints the end line: it must not hold the watch, or the
    oops after it would get no vmcore. kernel BUG at / invalid opcode is one oops."""
    seen: list[int] = []
    watch = _PanicWatch(_Machine())  # type: ignore[arg-type]
    watch.on_oops = lambda: seen.append(1)
    for line in (b"[ 1.0] watchdog: BUG: soft lockup - CPU#1 stuck for 3s! [hostname:41]",
                 b"[ 1.1]  </TASK>",
                 b"[ 2.0] kernel BUG at init/main.c:463!",
                 b"[ 2.1] invalid opcode: 0000 [#1] SMP",
                 b"[ 2.2] ---[ end trace 0000000000000000 ]---",
                 b"[ 3.0] BUG: kernel NULL pointer dereference, address: 0000000000000000"):
        watch(line)
    assert seen == [1, 1]


# -- the command line ----------------------------------------------------------------------
def test_trace_needs_symbols(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmboot.cli.main import EXIT_ERROR, main

    assert main(["trace", str(tmp_path / "core")]) == EXIT_ERROR
    assert "--kernel IMAGE" in capsys.readouterr().err


def test_trace_refuses_a_file_that_is_not_a_core(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from vmboot.cli.main import EXIT_ERROR, main

    core = tmp_path / "core"
    core.write_bytes(b"\x7fELF" + bytes(200))
    assert main(["trace", str(core), "--system-map", str(core)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "vmboot trace: error:" in err and str(core) in err


def test_run_dump_on_needs_dump_dir(capsys: pytest.CaptureFixture[str]) -> None:
    from vmboot.cli.main import EXIT_ERROR, main

    assert main(["run", "no-such-kernel", "--dump-on", "panic"]) == EXIT_ERROR
    assert "needs dump_dir" in capsys.readouterr().err


def test_trace_of_a_missing_core_is_an_error_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmboot.cli.main import EXIT_ERROR, main

    missing = tmp_path / "no-such-core"
    assert main(["trace", str(missing), "--system-map", str(missing)]) == EXIT_ERROR
    assert f"{missing}: cannot open the core" in capsys.readouterr().err
