"""vmboot.pytest_plugin: one boot per session, a restored guest per test (real Linux)."""

from __future__ import annotations

import pytest

from conftest import requires_kvm, shared_kernel_file

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.slow, requires_kvm]

INNER_TESTS = '''
def test_answer(vmboot_shell):
    assert vmboot_shell.run("echo $((6*7))") == "42"

def test_first_guest_writes_a_file(vmboot_shell):
    assert vmboot_shell.run("echo mine > /marker; cat /marker") == "mine"

def test_next_guest_does_not_see_it(vmboot_shell):
    assert vmboot_shell.run("cat /marker 2>&1") == "cat: can't open '/marker': No such file or directory"
'''


def test_each_test_gets_a_fresh_restored_guest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER_TESTS)
    # in a process of its own: an in-process run drops the modules it imported first
    # (numpy, say) from sys.modules afterwards, and a C extension cannot load twice
    result = pytester.runpytest_subprocess(
        "-p", "vmboot.pytest_plugin", "-p", "no:cacheprovider",
        "--vmboot-kernel", str(shared_kernel_file("tiny-bzImage")),
        "--vmboot-initrd", str(shared_kernel_file("tiny-initramfs.cpio")))
    result.assert_outcomes(passed=3)


def test_no_kernel_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMBOOT_KERNEL", raising=False)
    pytester.makepyfile(test_inner="def test_x(vmboot_shell):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "vmboot.pytest_plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no kernel: pass --vmboot-kernel FILE*"])
