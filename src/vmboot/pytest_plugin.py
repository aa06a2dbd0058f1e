"""A pytest plugin: a Linux guest booted once per session, restored from a snapshot per test.

::

    pytest -p vmboot.pytest_plugin --vmboot-kernel bzImage --vmboot-initrd initramfs.cpio

    def test_arithmetic(vmboot_shell):
        assert vmboot_shell.run("echo $((6*7))") == "42"

The session fixture ``vmboot_snapshot`` boots the kernel with ``vmboot.shell=1`` (the init
of vmboot's test initramfs starts a busybox shell on ttyS0; any init that leaves a shell
prompt on the console will do), waits for the prompt and saves the guest. Each test's
``vmboot_shell`` is a fresh guest restored from that snapshot in milliseconds (a
:class:`~vmboot.vmm.guest_shell.GuestShell`), so tests neither wait for a boot nor see
what another test did to the guest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmboot.config import DEFAULT_CMDLINE, DEFAULT_MEMORY
from vmboot.errors import UsageError
from vmboot.execute.discovery import KERNEL_ENV
from vmboot.vmm.console_wait import ConsoleWaiter
from vmboot.vmm.guest_shell import BUSYBOX_PROMPT, GuestShell
from vmboot.vmm.machine import Machine

SHELL_CMDLINE = f"{DEFAULT_CMDLINE} vmboot.shell=1"
DEFAULT_BOOT_TIMEOUT = 600.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vmboot", "a Linux guest per test, restored from a snapshot")
    group.addoption("--vmboot-kernel", metavar="FILE",
                    help=f"the kernel to boot (default: ${KERNEL_ENV})")
    group.addoption("--vmboot-initrd", metavar="FILE", help="its initramfs")
    group.addoption("--vmboot-append", metavar="CMDLINE", default=SHELL_CMDLINE,
                    help=f"the kernel command line (default: {SHELL_CMDLINE!r})")
    group.addoption("--vmboot-memory", metavar="SIZE", default=DEFAULT_MEMORY,
                    help=f"guest RAM (default: {DEFAULT_MEMORY})")
    group.addoption("--vmboot-prompt", metavar="TEXT", default=BUSYBOX_PROMPT,
                    help=f"the shell prompt to save at and wait for (default: {BUSYBOX_PROMPT!r})")
    group.addoption("--vmboot-boot-timeout", metavar="SECONDS", type=float,
                    default=DEFAULT_BOOT_TIMEOUT,
                    help=f"limit for the one boot (default: {DEFAULT_BOOT_TIMEOUT:g} s)")


def _machine(config: pytest.Config, waiter: ConsoleWaiter) -> Machine:
    kernel = config.getoption("vmboot_kernel") or os.environ.get(KERNEL_ENV)
    if not kernel:
        raise UsageError(f"vmboot plugin: no kernel: pass --vmboot-kernel FILE or set ${KERNEL_ENV}")
    return Machine(kernel, initrd=config.getoption("vmboot_initrd"),
                   cmdline=config.getoption("vmboot_append"),
                   memory=config.getoption("vmboot_memory"), console=waiter)


@pytest.fixture(scope="session")
def vmboot_snapshot(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guest booted to its shell prompt and saved (once per session)."""
    path = tmp_path_factory.mktemp("vmboot") / "shell.snap"
    waiter = ConsoleWaiter()
    with _machine(pytestconfig, waiter) as machine:
        shell = GuestShell(machine, waiter, pytestconfig.getoption("vmboot_prompt"))
        shell.wait_for_prompt(pytestconfig.getoption("vmboot_boot_timeout"))
        machine.snapshot(path)
    return path


@pytest.fixture
def vmboot_shell(pytestconfig: pytest.Config, vmboot_snapshot: Path) -> Iterator[GuestShell]:
    """A fresh guest at its shell prompt, restored from :func:`vmboot_snapshot`."""
    waiter = ConsoleWaiter()
    with _machine(pytestconfig, waiter).restore(vmboot_snapshot) as machine:
        yield GuestShell(machine, waiter, pytestconfig.getoption("vmboot_prompt"))
