"""The vm fixture on a real guest: 20 tests each get a fresh guest restored from one
snapshot, a guest that panics fails its test with the trace and the kernel's report, the
next test gets a clean guest; and the same module under pytest-xdist (-n 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import requires_kvm, shared_kernel_file
from vmboot.execute.cache import EntryKind, cache_entries

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.slow, requires_kvm]

FRESH_TESTS = 20
SAMPLE = f'''
import pytest

@pytest.mark.parametrize("n", range({FRESH_TESTS}))
def test_fresh_guest(vm, n):
    # the previous test wrote /root/test-(n-1) in its guest: this guest must not have it
    result = vm.exec(["sh", "-c", f"ls -A /root; test ! -e /root/test-{{n - 1}} && touch /root/test-{{n}}"])
    assert result.ok, result
    assert result.stdout == b"", result.stdout
    assert vm.exec(["ls", "/root"]).stdout == f"test-{{n}}\\n".encode()

def test_panicking_guest(vm):
    vm.exec(["sh", "-c", "echo c > /proc/sysrq-trigger"], timeout=120)

def test_after_the_panic(vm):
    result = vm.exec(["sh", "-c", "ls -A /root; echo alive"])
    assert result.ok and result.stdout == b"alive\\n", result
    assert "Kernel panic" not in vm.console
'''
COUNTING_CONFTEST = '''
import os
import vmboot.testing.snapshot_store as store

_save = store.save_agent_ready

def counted(*args, **kwargs):
    with open(os.environ["VMBOOT_CACHE"] + "-made", "a") as f:
        f.write(f"{os.getpid()}\\n")
    return _save(*args, **kwargs)

store.save_agent_ready = counted
'''
"""Records each process that makes the snapshot (the inner sessions' conftest.py)."""
RUN_TIMEOUT = 3600.0
"""Seconds for one inner session (a boot for the snapshot, 22 restores; a busy host is slow)."""


@pytest.fixture
def sample(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The sample module, with a cache of its own (the first session makes the snapshot)."""
    cache = pytester.path / "cache"
    monkeypatch.setenv("VMBOOT_CACHE", str(cache))
    pytester.makepyfile(test_sample=SAMPLE)
    pytester.makeconftest(COUNTING_CONFTEST)
    return cache


def _run(pytester: pytest.Pytester, *extra: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "vmboot.pytest_plugin", "-p", "no:cacheprovider", "-rA",
        f"--vmboot-kernel={shared_kernel_file('tiny-bzImage')}", *extra,
        timeout=RUN_TIMEOUT)


def _check(result: pytest.RunResult, cache: Path) -> None:
    result.assert_outcomes(passed=FRESH_TESTS + 1, failed=1)
    result.stdout.fnmatch_lines([
        "*_ test_panicking_guest _*",
        "the guest failed the test: panic: kernel panic: sysrq triggered crash",
        "*Captured vmboot kernel report call*",
        "panic: kernel panic: sysrq triggered crash",
        "*Kernel panic - not syncing: sysrq triggered crash*",
        "*Captured vmboot trace call*",
        "at the end of the run (panic: *",
        "*sysrq_handle_crash+0x*",
        "*Captured vmboot console call*",
    ])
    result.stdout.fnmatch_lines(["PASSED test_sample.py::test_after_the_panic"])
    snapshots = [e for e in cache_entries(cache) if e.kind is EntryKind.SNAPSHOT]
    assert len(snapshots) == 1, snapshots
    assert len(Path(f"{cache}-made").read_text().split()) == 1  # one boot made it
    assert not [p for p in (cache / "snapshots").iterdir() if p.name.endswith(".tmp")]


def test_each_test_gets_a_fresh_guest_and_a_panic_fails_only_its_test(
        pytester: pytest.Pytester, sample: Path) -> None:
    result = _run(pytester)
    _check(result, sample)
    result.stdout.fnmatch_lines(["*vmboot guests*", "tiny-bzImage, 1 vCPU, 256 MiB: restored per "
                                 "test from */snapshots/pytest-*.snap"])


def test_the_same_under_xdist_with_one_snapshot_made_under_a_lock(
        pytester: pytest.Pytester, sample: Path) -> None:
    result = _run(pytester, "-n", "2")
    _check(result, sample)
    result.stdout.fnmatch_lines(["*2 workers*"])


CONFIGURATIONS = '''
import pytest

SMP = pytest.mark.vmboot(kernel="{smp}", cpus=2, memory="192M")

def test_default_guest(vm):
    result = vm.exec(["sh", "-c", "grep -c ^processor /proc/cpuinfo"])
    assert result.ok and result.stdout == b"1\\n", result

@SMP
def test_two_vcpus(vm):
    result = vm.exec(["sh", "-c", "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo"])
    assert result.ok and result.stdout.startswith(b"2\\n"), result

@SMP
def test_two_vcpus_again(vm):
    assert vm.restored
    assert vm.exec(["sh", "-c", "grep -c ^processor /proc/cpuinfo"]).stdout == b"2\\n"
'''


def test_one_snapshot_per_guest_configuration(pytester: pytest.Pytester, sample: Path) -> None:
    pytester.makepyfile(test_sample=CONFIGURATIONS.replace(
        "{smp}", str(shared_kernel_file("tiny-smp-bzImage"))))
    result = _run(pytester)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines_random([
        "tiny-bzImage, 1 vCPU, 256 MiB: restored per test from */pytest-*.snap",
        "tiny-smp-bzImage, 2 vCPUs, 192 MiB: restored per test from */pytest-*.snap",
    ])
    snapshots = [e for e in cache_entries(sample) if e.kind is EntryKind.SNAPSHOT]
    assert len(snapshots) == 2
    assert len(Path(f"{sample}-made").read_text().split()) == 2


HANGING = '''
SPIN = {spin!r}

def test_guest_stops_answering(vm):
    with open(SPIN, "rb") as f:
        copied = vm.exec(["sh", "-c", "cat > /root/spin && chmod +x /root/spin"], stdin=f.read())
    assert copied.ok, copied
    vm.exec(["/root/spin"], timeout=5)

def test_after_the_hang(vm):
    assert vm.exec(["sh", "-c", "ls -A /root; echo alive"]).stdout == b"alive\\n"
'''


def test_a_guest_that_stops_answering_fails_its_test_with_traces(
        pytester: pytest.Pytester, sample: Path, tmp_path: Path) -> None:
    from nolibc_tool import build_tool

    spin = build_tool("rt_spin.c", tmp_path)
    pytester.makepyfile(test_sample=HANGING.replace("{spin!r}", repr(str(spin))))
    result = _run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*_ test_guest_stops_answering _*",
        "the guest failed the test: timeout: * (the guest stopped answering and was stopped)",
        "*Captured vmboot trace call*",
        "at the end of the run (timeout: the guest did not answer for 35 s*",
        "CPU 0:*",
        "hang verdict: *",
    ])
    result.stdout.fnmatch_lines(["PASSED test_sample.py::test_after_the_hang"])
