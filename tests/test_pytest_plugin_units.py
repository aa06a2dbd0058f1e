"""vmboot.pytest_plugin without a guest: registration, marker and option parsing, the cache
key, and how a guest's verdict fails a test (with a stand-in guest)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from vmboot import pytest_plugin
from vmboot.errors import UsageError
from vmboot.testing.guest_spec import (
    GUEST_CMDLINE,
    GuestSpec,
    SpecDefaults,
    guest_cmdline,
    guest_spec,
    merge_markers,
)
from vmboot.testing.snapshot_store import PreparedGuest
from vmboot.units import MiB
from vmboot.vmm.exits import ExitReason, VmExit
from vmboot.vmm.machine import BootTimings, RunResult

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
LOGS = Path(__file__).resolve().parent / "data" / "console-logs"
PLUGIN = ("-p", "vmboot.pytest_plugin", "-p", "no:cacheprovider",
          "-W", "ignore::pytest.PytestAssertRewriteWarning")
"""In-process runs import the plugin this module has imported already: nothing to rewrite."""


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    path = tmp_path / "bzImage"
    path.write_bytes(b"not really a kernel")
    return path


# -- registration ---------------------------------------------------------------------------


def test_the_entry_point_is_named_after_the_module() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {
        "vmboot.pytest_plugin": "vmboot.pytest_plugin"}


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    code = ("import sys, vmboot.pytest_plugin; "
            "print(sorted(m for m in sys.modules if m.startswith('vmboot')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src")}).stdout
    assert eval(out) == ["vmboot", "vmboot.pytest_plugin", "vmboot.testing", "vmboot.testing.names"]


def test_a_session_that_uses_no_guest_is_untouched(pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMBOOT_CACHE", str(pytester.path / "cache"))
    pytester.makepyfile(test_inner="""
        import os, sys
        def test_nothing_of_the_vmm_was_imported():
            assert [m for m in sys.modules if m.startswith("vmboot.vmm")] == []
        def test_no_cache_was_made():
            assert not os.path.exists(os.environ["VMBOOT_CACHE"])
    """)
    pytester.makeini("[pytest]\naddopts = --strict-markers\n")
    # given twice: as when the entry point has registered it and -p names it again
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", "vmboot.pytest_plugin")
    result.assert_outcomes(passed=2)
    assert "vmboot guests" not in result.stdout.str()


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess(*PLUGIN, "--markers")
    result.stdout.fnmatch_lines(["*@pytest.mark.vmboot(kernel=PATH, cpus=N, memory=SIZE, share=*"])


# -- which guest a test gets ----------------------------------------------------------------


def test_the_closest_marker_wins_keyword_by_keyword() -> None:
    merged = merge_markers([{"cpus": 2}, {"cpus": 1, "memory": "128M"}])
    assert merged == {"cpus": 2, "memory": "128M"}
    with pytest.raises(UsageError, match=r"unknown keyword vcpus; it takes kernel, cpus, memory, share"):
        merge_markers([{"vcpus": 2}])


def test_a_spec_from_marker_and_defaults(kernel: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    spec = guest_spec({"cpus": 2, "share": [f"{data}:d,ro"]},
                      SpecDefaults(kernel=str(kernel), memory="128M"), environ={})
    assert spec == GuestSpec(kernel.resolve(), 2, 128 * MiB, (spec.shares[0],), guest_cmdline())
    assert (spec.shares[0].source, spec.shares[0].tag, spec.shares[0].read_only) == (data, "d", True)
    assert spec.describe() == f"bzImage, 2 vCPUs, 128 MiB, share {data}:d,ro"
    assert guest_spec({"share": str(data)}, SpecDefaults(kernel=str(kernel)), {}).shares[0].tag == "data"


def test_the_kernel_comes_from_the_marker_then_the_option_then_the_environment(
        kernel: Path, tmp_path: Path) -> None:
    other = tmp_path / "vmlinux"
    other.write_bytes(b"x")
    env = {"VMBOOT_KERNEL": str(other)}
    assert guest_spec({"kernel": str(other)}, SpecDefaults(kernel=str(kernel)), env).kernel == other
    assert guest_spec({}, SpecDefaults(kernel=str(kernel)), env).kernel == kernel
    assert guest_spec({}, SpecDefaults(), env).kernel == other


@pytest.mark.parametrize(("marker", "message"), [
    ({"cpus": 0}, r"@pytest.mark.vmboot: cpus=0 is not a whole number in 1..32"),
    ({"cpus": True}, r"cpus=True is not a whole number"),
    ({"cpus": "two"}, r"cpus='two' is not a whole number"),
    ({"memory": "lots"}, r"@pytest.mark.vmboot\(memory=...\): 'lots' is not a size"),
    ({"memory": 0}, r"0 bytes of guest RAM"),
    ({"memory": 1.5}, r"1.5 is not a size"),
    ({"kernel": "/nonexistent/bzImage"}, r"kernel=...\): '/nonexistent/bzImage' is not a file"),
    ({"kernel": 3}, r"kernel=3\): not a path"),
    ({"share": ["/nonexistent/dir"]}, r"share /nonexistent/dir: does not exist"),
    ({"share": 3}, r"share=3\): give a list of DIR\[:TAG\]\[,ro\]"),
])
def test_bad_marker_values_are_refused_naming_the_field(kernel: Path, marker: dict[str, object],
                                                        message: str) -> None:
    with pytest.raises(UsageError, match=message):
        guest_spec(marker, SpecDefaults(kernel=str(kernel)), {})


def test_a_bad_option_names_the_option(kernel: Path) -> None:
    with pytest.raises(UsageError, match=r"--vmboot-cpus: cpus=99"):
        guest_spec({}, SpecDefaults(kernel=str(kernel), cpus="99"), {})
    with pytest.raises(UsageError, match=r"--vmboot-memory: '1x' is not a size"):
        guest_spec({}, SpecDefaults(kernel=str(kernel), memory="1x"), {})
    with pytest.raises(UsageError, match=r"--vmboot-kernel: '/nonexistent' is not a file"):
        guest_spec({}, SpecDefaults(kernel="/nonexistent"), {})


def test_the_cache_key_follows_everything_the_guest_is_made_of(kernel: Path) -> None:
    spec = GuestSpec(kernel)
    key = spec.key(b"image")
    assert key == GuestSpec(kernel).key(b"image")
    others = {replace(spec, cpus=2).key(b"image"), replace(spec, memory=128 * MiB).key(b"image"),
              replace(spec, cmdline="console=ttyS0").key(b"image"), spec.key(b"other image")}
    assert key not in others and len(others) == 4
    kernel.write_bytes(b"another kernel")
    assert spec.key(b"image") != key


SPEC_PROBE = """
    import pytest
    from vmboot.pytest_plugin import spec_for

    pytestmark = pytest.mark.vmboot(memory="64M", cpus=2)

    def test_module_marker(request):
        spec = spec_for(request.node)
        assert (spec.cpus, spec.memory, spec.kernel.name) == (2, 64 << 20, "bzImage")

    @pytest.mark.vmboot(cpus=1)
    def test_function_marker_over_module(request):
        spec = spec_for(request.node)
        assert (spec.cpus, spec.memory) == (1, 64 << 20)

    @pytest.mark.vmboot(kernel="{other}", memory="96M")
    def test_marker_kernel(request):
        spec = spec_for(request.node)
        assert (spec.kernel.name, spec.memory) == ("vmlinux", 96 << 20)

    @pytest.mark.vmboot(2)
    def test_positional_refused(request):
        with pytest.raises(Exception, match="takes keywords only"):
            spec_for(request.node)
"""


def test_markers_over_options_over_ini(pytester: pytest.Pytester, kernel: Path) -> None:
    other = kernel.with_name("vmlinux")
    other.write_bytes(b"x")
    pytester.makepyfile(test_inner=SPEC_PROBE.replace("{other}", str(other)))
    pytester.makeini(f"[pytest]\nvmboot_kernel = {kernel}\nvmboot_cpus = 4\nvmboot_memory = 32M\n")
    result = pytester.runpytest_inprocess(*PLUGIN, "--strict-markers")
    result.assert_outcomes(passed=4)


def test_options_over_ini(pytester: pytest.Pytester, kernel: Path) -> None:
    pytester.makepyfile(test_inner="""
        from vmboot.pytest_plugin import cold, exec_timeout, fail_on, spec_for
        def test_settings(request):
            spec = spec_for(request.node)
            assert (spec.cpus, spec.memory) == (3, 48 << 20)
            assert cold(request.config) and exec_timeout(request.config) == 12.5
            assert {v.value for v in fail_on(request.config)} == {"warning", "panic"}
    """)
    pytester.makeini("[pytest]\nvmboot_cpus = 4\nvmboot_memory = 32M\nvmboot_timeout = 99\n"
                     "vmboot_cold = false\nvmboot_fail_on = panic\n")
    result = pytester.runpytest_inprocess(*PLUGIN, f"--vmboot-kernel={kernel}", "--vmboot-cpus=3",
                                          "--vmboot-memory=48M", "--vmboot-cold",
                                          "--vmboot-timeout=12.5", "--vmboot-fail-on=warning,panic")
    result.assert_outcomes(passed=1)


def test_ini_alone(pytester: pytest.Pytester, kernel: Path) -> None:
    pytester.makepyfile(test_inner="""
        from vmboot.pytest_plugin import cold, exec_timeout, fail_on
        def test_settings(request):
            assert cold(request.config) and exec_timeout(request.config) == 99
            assert {v.value for v in fail_on(request.config)} == {"oops"}
    """)
    pytester.makeini("[pytest]\nvmboot_timeout = 99\nvmboot_cold = true\nvmboot_fail_on = oops\n")
    pytester.runpytest_inprocess(*PLUGIN).assert_outcomes(passed=1)


def test_defaults_without_settings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner="""
        from vmboot.pytest_plugin import cold, exec_timeout, fail_on
        from vmboot.testing import names
        def test_settings(request):
            assert not cold(request.config)
            assert exec_timeout(request.config) == names.DEFAULT_EXEC_TIMEOUT
            assert ",".join(sorted(v.value for v in fail_on(request.config))) == names.DEFAULT_FAIL_ON
    """)
    pytester.runpytest_inprocess(*PLUGIN).assert_outcomes(passed=1)


def test_a_bad_setting_is_an_error_naming_it(pytester: pytest.Pytester, kernel: Path) -> None:
    pytester.makepyfile(test_inner="def test_x(vm):\n    pass\n")
    result = pytester.runpytest_inprocess(*PLUGIN, f"--vmboot-kernel={kernel}", "--vmboot-cpus=0")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--vmboot-cpus: cpus=0 is not a whole number in 1..32*"])


# -- verdicts, with a stand-in guest --------------------------------------------------------


@dataclass
class StandInGuest:
    """What the plugin reads of a guest after a test (``GuestVM``'s ended/console/hung/stop)."""

    console: str = ""
    ended: RunResult | None = None
    hung: bool = False
    stopped_with: RunResult | None = None
    calls: list[str] = field(default_factory=list)

    def stop(self) -> RunResult | None:
        self.calls.append("stop")
        self.ended = self.stopped_with
        return self.ended

    def close(self) -> None:
        self.calls.append("close")


def _run(reason: ExitReason, console: bytes, **extra: object) -> RunResult:
    result = RunResult(exit=VmExit(reason, "detail"), console=console,
                       timings=BootTimings(0.0, 0.0, None, 0.0))
    for name, value in extra.items():
        setattr(result, name, value)
    return result


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, kernel: Path) -> Iterator[list[StandInGuest]]:
    """The vm fixture hands out the guests put in this list (one per test, in order)."""
    import vmboot.testing.snapshot_store as store

    guests: list[StandInGuest] = []
    handed: list[StandInGuest] = []

    def start_guest(prepared: PreparedGuest, **_: object) -> StandInGuest:
        guest = guests[len(handed)]
        handed.append(guest)
        return guest

    def prepare(self: pytest_plugin.SessionGuests, spec: GuestSpec) -> PreparedGuest:
        return PreparedGuest(spec, kernel, b"", cold_reason="stand-in")

    monkeypatch.setattr(store, "start_guest", start_guest)
    monkeypatch.setattr(pytest_plugin.SessionGuests, "prepare", prepare)
    monkeypatch.setenv("VMBOOT_KERNEL", str(kernel))
    yield guests
    assert all("close" in g.calls for g in handed)


INNER_VERDICTS = """
    def test_panics(vm):
        pass

    def test_clean(vm):
        pass

    def test_oops_while_running(vm):
        pass

    def test_hung(vm):
        assert False, "the command did not come back"

    def test_warning_only(vm):
        pass
"""


def test_a_failed_guest_fails_its_test_with_report_sections(
        pytester: pytest.Pytester, stand_in: list[StandInGuest]) -> None:
    panic_log = (LOGS / "debian-6.1.0-57-panic.log").read_bytes()
    oops_log = (LOGS / "debian-6.1.0-57-oops.log").read_text(errors="replace")
    warning_log = (LOGS / "debian-6.1.0-57-warning.log").read_text(errors="replace")
    stand_in.extend([
        StandInGuest(ended=_run(ExitReason.PANIC, panic_log, stack_trace_text=" #0 sysrq_handle_crash",
                                panic_message="Kernel panic - not syncing: sysrq triggered crash")),
        StandInGuest(console="[    1.0] all is well\n"),
        StandInGuest(console=oops_log, stopped_with=_run(
            ExitReason.STOPPED, oops_log.encode(), oopses=[("Oops: 0002", " #0 provoke_null_write")])),
        StandInGuest(hung=True, ended=_run(ExitReason.TIMEOUT, b"[ 9.0] silence\n",
                                           stack_trace_text=" #0 native_safe_halt")),
        StandInGuest(console=warning_log),
    ])
    pytester.makepyfile(test_inner=INNER_VERDICTS)
    result = pytester.runpytest_inprocess(*PLUGIN)
    result.assert_outcomes(passed=2, failed=3)
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*test_panics*", "the guest failed the test: panic: kernel panic: sysrq triggered crash",
        "*Captured vmboot kernel report call*", "panic: *",
        "*Captured vmboot trace call*", "at the end of the run*", " #0 sysrq_handle_crash",
        "*Captured vmboot console call*",
    ])
    result.stdout.fnmatch_lines([
        "*test_oops_while_running*",
        "the guest failed the test: oops: BUG: unable to handle kernel NULL pointer dereference in "
        "provoke_null_write",
        "*Captured vmboot trace call*", "at Oops: 0002:", " #0 provoke_null_write",
    ])
    result.stdout.fnmatch_lines([
        "*test_hung*", "the guest failed the test: timeout: * (the guest stopped answering and "
        "was stopped)", "(the test raised AssertionError: the command did not come back*",
        "*Captured vmboot trace call*", " #0 native_safe_halt",
    ])
    assert stand_in[2].calls == ["stop", "close"]  # stopped so that its traces were complete
    assert stand_in[1].calls == ["close"] and "test_clean" not in out.split("short test summary")[1]


def test_warnings_fail_when_asked(pytester: pytest.Pytester, stand_in: list[StandInGuest]) -> None:
    warning_log = (LOGS / "debian-6.1.0-57-warning.log").read_text(errors="replace")
    stand_in.append(StandInGuest(console=warning_log, stopped_with=_run(
        ExitReason.STOPPED, warning_log.encode())))
    pytester.makepyfile(test_inner="def test_warns(vm):\n    pass\n")
    result = pytester.runpytest_inprocess(*PLUGIN, "--vmboot-fail-on=warning")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["the guest failed the test: warning: WARNING in vmboot_provoke_init"])


# -- the snapshot store, without booting ----------------------------------------------------


@pytest.fixture
def counted_saves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """Snapshots "made" by a stand-in for the boot (it writes a small file)."""
    import vmboot.testing.snapshot_store as store

    made: list[Path] = []

    def save(spec: GuestSpec, image: bytes, path: Path, boot_timeout: float) -> None:
        path.write_bytes(b"snapshot %d" % len(made))
        made.append(path)

    monkeypatch.setattr(store, "save_agent_ready", save)
    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path / "cache"))
    return made


def test_a_snapshot_is_made_once_and_again_when_too_old(counted_saves: list[Path],
                                                        kernel: Path) -> None:
    import os
    import time

    from vmboot.execute.cache import snapshot_locks
    from vmboot.testing.snapshot_store import prepare

    spec = GuestSpec(kernel)
    first = prepare(spec, cold=False, max_age=None)
    assert first.snapshot is not None and first.snapshot.name.startswith("pytest-")
    again = prepare(spec, cold=False, max_age=3600)
    assert again.snapshot == first.snapshot and len(counted_saves) == 1
    assert not again.stale() and not first.stale()
    make_lock = snapshot_locks(first.snapshot)[1]
    old = time.time() - 7200
    os.utime(make_lock, (old, old))
    assert again.stale() and not first.stale()  # first: made with no age limit
    assert prepare(spec, cold=False, max_age=None).snapshot == first.snapshot
    assert len(counted_saves) == 1  # no limit: kept however old
    assert prepare(spec, cold=False, max_age=3600).snapshot == first.snapshot
    assert len(counted_saves) == 2 and first.snapshot.read_bytes() == b"snapshot 1"
    assert time.time() - make_lock.stat().st_mtime < 600
    for prepared in (first, again):
        prepared.release()


def test_cold_guests_boot_per_test_and_guests_with_shares_are_saved(
        counted_saves: list[Path], kernel: Path, tmp_path: Path) -> None:
    from vmboot.testing.guest_spec import ShareSpec
    from vmboot.testing.snapshot_store import prepare

    assert prepare(GuestSpec(kernel), cold=True).cold_reason == "--vmboot-cold"
    assert counted_saves == []
    shared = prepare(GuestSpec(kernel, shares=(ShareSpec(tmp_path, "t"),)), cold=False)
    try:
        assert shared.cold_reason is None and counted_saves == [shared.snapshot]
    finally:
        shared.release()


def test_max_age_setting(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner="""
        import pytest
        from vmboot.pytest_plugin import max_age
        def test_option(request):
            assert max_age(request.config) == 60.0
    """)
    pytester.runpytest_inprocess(*PLUGIN, "--vmboot-max-age=60").assert_outcomes(passed=1)
    pytester.makepyfile(test_inner="""
        from vmboot.pytest_plugin import max_age
        def test_default(request):
            assert max_age(request.config) is None
    """)
    pytester.runpytest_inprocess(*PLUGIN).assert_outcomes(passed=1)
    result = pytester.runpytest_inprocess(*PLUGIN, "--vmboot-max-age=-1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*vmboot_max_age: '-1.0' is not a number of seconds (0 or more)*"])


@pytest.mark.parametrize(("max_age", "saves"), [("3600", 1), ("0", 3)])
def test_a_session_makes_a_stale_snapshot_again_between_tests(
        pytester: pytest.Pytester, counted_saves: list[Path], kernel: Path, max_age: str,
        saves: int) -> None:
    pytester.makepyfile(test_inner="""
        import pytest
        from vmboot.pytest_plugin import session_guests, spec_for

        @pytest.mark.parametrize("n", range(3))
        def test_prepare(request, n):
            prepared = session_guests(request.config).prepare(spec_for(request.node))
            assert prepared.snapshot is not None and prepared.snapshot.exists()
    """)
    result = pytester.runpytest_inprocess(*PLUGIN, f"--vmboot-kernel={kernel}",
                                          f"--vmboot-max-age={max_age}")
    result.assert_outcomes(passed=3)
    assert len(counted_saves) == saves


def test_guests_on_pvm_hosts_use_the_snapshot_clocksource(monkeypatch: pytest.MonkeyPatch) -> None:
    import vmboot.hv.kvm.host as host
    from vmboot.vmm.snapshots import SNAPSHOT_CLOCKSOURCE

    monkeypatch.setattr(host, "host_is_emulating", lambda: True)
    assert guest_cmdline() == f"{GUEST_CMDLINE} {SNAPSHOT_CLOCKSOURCE}"
    monkeypatch.setattr(host, "host_is_emulating", lambda: False)
    assert guest_cmdline() == GUEST_CMDLINE
