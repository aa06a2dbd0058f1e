"""vmboot's pytest plugin: each test gets a fresh Linux guest, restored from a snapshot.

Installed with vmboot (entry point ``pytest11``: ``vmboot.pytest_plugin``; ``-p
no:vmboot.pytest_plugin`` turns it off); it imports nothing heavy and touches nothing until
a test asks for one of its fixtures::

    def test_uname(vm):
        result = vm.exec(["uname", "-r"])           # vmboot.execute.ExecResult
        assert result.ok, result.stderr

    @pytest.mark.vmboot(kernel="bzImage", cpus=1, memory="128M", share=["data:data,ro"])
    def test_sysrq(vm):
        assert vm.exec(["sh", "-c", "echo hi > /root/f; cat /root/f"]).stdout == b"hi\\n"

``vm`` (:class:`vmboot.testing.guest_vm.GuestVM`): the first test of each guest
configuration (the marker's keywords over ``--vmboot-kernel``/``--vmboot-cpus``/
``--vmboot-memory``, the ini settings, ``$VMBOOT_KERNEL`` and the kernel vmboot ships)
boots the guest with the guest agent as init, saves it when the agent answers, in the
vmboot cache (under a file lock: pytest-xdist workers make it once and share it), and
every test restores its own copy in milliseconds. ``--vmboot-cold`` boots each test's
guest instead; so does a configuration snapshots cannot hold (the session's summary says
why). A guest that panics, oopses or hangs fails its test, with the kernel's report,
vmboot's symbolised stack traces and the console's end in the test's report
(:mod:`vmboot.testing.verdicts`); the next test gets a clean guest.

``vmboot_shell`` (older): the kernel of ``--vmboot-kernel`` with the initramfs of
``--vmboot-initrd``, booted once to its shell prompt (``vmboot.shell=1``), restored per
test as a :class:`~vmboot.vmm.guest_shell.GuestShell`::

    def test_arithmetic(vmboot_shell):
        assert vmboot_shell.run("echo $((6*7))") == "42"
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vmboot.testing import names

if TYPE_CHECKING:
    from vmboot.report import Verdict
    from vmboot.testing.guest_spec import GuestSpec
    from vmboot.testing.guest_vm import GuestVM
    from vmboot.testing.snapshot_store import PreparedGuest
    from vmboot.vmm.console_wait import ConsoleWaiter
    from vmboot.vmm.guest_shell import GuestShell
    from vmboot.vmm.machine import Machine

SHELL_BOOT_ARG = "vmboot.shell=1"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vmboot", "Linux guests for tests (the vm fixture)")
    group.addoption("--vmboot-kernel", metavar="FILE",
                    help="the guests' kernel (default: ini vmboot_kernel, else $VMBOOT_KERNEL, "
                         "else the kernel vmboot ships); a test's vmboot marker may name another")
    group.addoption("--vmboot-cold", action="store_true", default=None,
                    help="boot each test's guest instead of restoring it from a snapshot "
                         "(ini vmboot_cold)")
    group.addoption("--vmboot-cpus", metavar="N",
                    help="the guests' vCPUs (default: ini vmboot_cpus, else 1)")
    group.addoption("--vmboot-memory", metavar="SIZE",
                    help="the guests' RAM (default: ini vmboot_memory, else 256M)")
    group.addoption("--vmboot-timeout", metavar="SECONDS", type=float,
                    help=f"time limit of each vm.exec command (default: ini vmboot_timeout, "
                         f"else {names.DEFAULT_EXEC_TIMEOUT:g} s)")
    group.addoption("--vmboot-boot-timeout", metavar="SECONDS", type=float,
                    default=names.DEFAULT_BOOT_TIMEOUT,
                    help=f"time limit of a boot (default: {names.DEFAULT_BOOT_TIMEOUT:g} s)")
    group.addoption("--vmboot-max-age", metavar="SECONDS", type=float,
                    help="make a guest's snapshot again when older than this, also between "
                         "two tests (default: ini vmboot_max_age, else kept however old)")
    group.addoption("--vmboot-fail-on", metavar="VERDICTS",
                    help=f"guest verdicts that fail a test (default: ini vmboot_fail_on, else "
                         f"{names.DEFAULT_FAIL_ON})")
    group.addoption("--vmboot-initrd", metavar="FILE", help="vmboot_shell: the initramfs")
    group.addoption("--vmboot-append", metavar="CMDLINE",
                    help=f"vmboot_shell: the kernel command line (default: vmboot's, plus "
                         f"{SHELL_BOOT_ARG})")
    group.addoption("--vmboot-prompt", metavar="TEXT",
                    help="vmboot_shell: the shell prompt to save at (default: busybox's)")
    parser.addini("vmboot_kernel", "the guests' kernel (as --vmboot-kernel)")
    parser.addini("vmboot_cold", "boot each test's guest (as --vmboot-cold)", type="bool",
                  default=False)
    parser.addini("vmboot_cpus", "the guests' vCPUs (as --vmboot-cpus)")
    parser.addini("vmboot_memory", "the guests' RAM (as --vmboot-memory)")
    parser.addini("vmboot_timeout", "time limit of each vm.exec command (as --vmboot-timeout)")
    parser.addini("vmboot_fail_on", "guest verdicts that fail a test (as --vmboot-fail-on)")
    parser.addini("vmboot_max_age", "make a snapshot again when older than this many seconds "
                  "(as --vmboot-max-age)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", names.MARKER_HELP)


def pytest_unconfigure(config: pytest.Config) -> None:
    guests = config.stash.get(_GUESTS, None)
    if guests is not None:
        guests.release()


# -- settings -------------------------------------------------------------------------------


def setting(config: pytest.Config, option: str) -> str | None:
    """A ``--vmboot-X`` option's value, else the ini ``vmboot_X`` (None: neither is set)."""
    value = config.getoption(f"vmboot_{option}")
    if value is None:
        value = config.getini(f"vmboot_{option}") or None
    return None if value is None else str(value)


def cold(config: pytest.Config) -> bool:
    value = config.getoption("vmboot_cold")
    return bool(config.getini("vmboot_cold") if value is None else value)


def exec_timeout(config: pytest.Config) -> float:
    from vmboot.errors import UsageError

    text = setting(config, "timeout")
    if text is None:
        return names.DEFAULT_EXEC_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise UsageError(f"vmboot_timeout: {text!r} is not a positive number of seconds")
    return value


def max_age(config: pytest.Config) -> float | None:
    """Seconds after which a snapshot is made again (None: never)."""
    from vmboot.errors import UsageError

    text = setting(config, "max_age")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UsageError(f"vmboot_max_age: {text!r} is not a number of seconds (0 or more)")
    return value


def fail_on(config: pytest.Config) -> frozenset[Verdict]:
    from vmboot.report import parse_fail_on

    return parse_fail_on(setting(config, "fail_on") or names.DEFAULT_FAIL_ON)


def spec_for(item: pytest.Item) -> GuestSpec:
    """The guest configuration of ``item``: its vmboot markers over the session's defaults."""
    from vmboot.testing.guest_spec import SpecDefaults, guest_spec, merge_markers

    markers = []
    for mark in item.iter_markers(names.MARKER):
        if mark.args:
            from vmboot.errors import UsageError

            raise UsageError(f"@pytest.mark.{names.MARKER}{mark.args!r}: takes keywords only "
                             f"({', '.join(names.MARKER_KEYS)})")
        markers.append(mark.kwargs)
    config = item.config
    defaults = SpecDefaults(kernel=setting(config, "kernel"),
                            cpus=setting(config, "cpus") or SpecDefaults.cpus,
                            memory=setting(config, "memory") or SpecDefaults.memory)
    return guest_spec(merge_markers(markers), defaults)


# -- the session's guests -------------------------------------------------------------------


class SessionGuests:
    """Each guest configuration's image and snapshot, prepared once per process."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.prepared: dict[GuestSpec, PreparedGuest | BaseException] = {}

    def prepare(self, spec: GuestSpec) -> PreparedGuest:
        """``spec``'s prepared guest; a failure to prepare it is kept and raised again for
        every later test of that configuration instead of booting again."""
        from vmboot.testing.snapshot_store import prepare

        known = self.prepared.get(spec)
        if known is not None and not isinstance(known, BaseException) and known.stale():
            known.release()  # too old to restore quickly: made again, by this or another process
            del self.prepared[spec]
        if spec not in self.prepared:
            try:
                self.prepared[spec] = prepare(
                    spec, cold=cold(self.config), max_age=max_age(self.config),
                    boot_timeout=self.config.getoption("vmboot_boot_timeout"))
            except Exception as e:
                self.prepared[spec] = e
        found = self.prepared[spec]
        if isinstance(found, BaseException):
            raise found
        return found

    def summary(self) -> list[str]:
        lines = []
        for spec, found in self.prepared.items():
            if isinstance(found, BaseException):
                how = f"not prepared: {found}"
            elif found.snapshot is not None:
                how = f"restored per test from {found.snapshot}"
            else:
                how = f"booted per test ({found.cold_reason})"
            lines.append(f"{spec.describe()}: {how}")
        return lines

    def release(self) -> None:
        for found in self.prepared.values():
            if not isinstance(found, BaseException):
                found.release()


_GUESTS = pytest.StashKey[SessionGuests]()
_VM = pytest.StashKey["GuestVM"]()


def session_guests(config: pytest.Config) -> SessionGuests:
    guests = config.stash.get(_GUESTS, None)
    if guests is None:
        guests = config.stash[_GUESTS] = SessionGuests(config)
    return guests


@pytest.fixture
def vm(request: pytest.FixtureRequest) -> Iterator[GuestVM]:
    """A fresh guest for this test, restored from its configuration's snapshot (or booted)."""
    from vmboot.testing.snapshot_store import start_guest

    config = request.config
    item = request.node
    assert isinstance(item, pytest.Item)
    prepared = session_guests(config).prepare(spec_for(item))
    guest = start_guest(prepared, boot_timeout=config.getoption("vmboot_boot_timeout"),
                        exec_timeout=exec_timeout(config))
    request.node.stash[_VM] = guest
    try:
        yield guest
    finally:
        del request.node.stash[_VM]
        guest.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """After the test: a guest that panicked, oopsed or hung fails it, with report sections."""
    guest = item.stash.get(_VM, None)
    if guest is None:
        return (yield)
    try:
        outcome = yield
    except BaseException as exc:
        _check_guest(item, guest, exc)
        raise
    _check_guest(item, guest, None)
    return outcome


def _check_guest(item: pytest.Item, guest: GuestVM, raised: BaseException | None) -> None:
    from vmboot.testing.verdicts import judge

    failure = judge(guest, fail_on(item.config))
    if failure is None:
        return
    for name, text in failure.sections:
        item.add_report_section("call", name, text)
    summary = failure.summary
    if raised is not None and not isinstance(raised, pytest.fail.Exception):
        summary += f"\n(the test raised {type(raised).__name__}: {raised})"
    raise pytest.fail.Exception(summary, pytrace=False) from raised


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    guests = terminalreporter.config.stash.get(_GUESTS, None)
    if guests is None or not guests.prepared:
        return
    terminalreporter.section("vmboot guests")
    for line in guests.summary():
        terminalreporter.write_line(line)


# -- vmboot_shell ---------------------------------------------------------------------------


def _shell_machine(config: pytest.Config, waiter: ConsoleWaiter) -> Machine:
    from vmboot.config import DEFAULT_CMDLINE, DEFAULT_MEMORY
    from vmboot.errors import UsageError
    from vmboot.execute.discovery import KERNEL_ENV
    from vmboot.vmm.machine import Machine

    kernel = setting(config, "kernel")
    if kernel is None:
        kernel = os.environ.get(KERNEL_ENV)
    if not kernel:
        raise UsageError(f"vmboot plugin: no kernel: pass --vmboot-kernel FILE or set ${KERNEL_ENV}")
    return Machine(kernel, initrd=config.getoption("vmboot_initrd"),
                   cmdline=config.getoption("vmboot_append") or f"{DEFAULT_CMDLINE} {SHELL_BOOT_ARG}",
                   memory=setting(config, "memory") or DEFAULT_MEMORY, console=waiter)


def _prompt(config: pytest.Config) -> str:
    from vmboot.vmm.guest_shell import BUSYBOX_PROMPT

    prompt = config.getoption("vmboot_prompt")
    return BUSYBOX_PROMPT if prompt is None else str(prompt)


@pytest.fixture(scope="session")
def vmboot_snapshot(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``vmboot_shell`` guest booted to its shell prompt and saved (once per session)."""
    from vmboot.vmm.console_wait import ConsoleWaiter
    from vmboot.vmm.guest_shell import GuestShell

    path = tmp_path_factory.mktemp("vmboot") / "shell.snap"
    waiter = ConsoleWaiter()
    with _shell_machine(pytestconfig, waiter) as machine:
        shell = GuestShell(machine, waiter, _prompt(pytestconfig))
        shell.wait_for_prompt(pytestconfig.getoption("vmboot_boot_timeout"))
        machine.snapshot(path)
    return path


@pytest.fixture
def vmboot_shell(pytestconfig: pytest.Config, vmboot_snapshot: Path) -> Iterator[GuestShell]:
    """A fresh guest at its shell prompt, restored from :func:`vmboot_snapshot`."""
    from vmboot.vmm.console_wait import ConsoleWaiter
    from vmboot.vmm.guest_shell import GuestShell

    waiter = ConsoleWaiter()
    with _shell_machine(pytestconfig, waiter).restore(vmboot_snapshot) as machine:
        yield GuestShell(machine, waiter, _prompt(pytestconfig))
