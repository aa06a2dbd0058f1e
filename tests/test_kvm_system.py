"""vmboot.hv.kvm.system.KVM: opening the device and every way that can fail."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import requires_kvm
from vmboot.errors import KvmUnavailableError
from vmboot.hv.kvm import KVM, abi, host_is_emulating


def test_missing_device_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "no-such-kvm"
    with pytest.raises(KvmUnavailableError) as info:
        KVM(path)
    message = str(info.value)
    assert str(path) in message
    assert "does not exist" in message
    assert "modprobe" in message


def test_not_a_kvm_device(tmp_path: Path) -> None:
    path = tmp_path / "plain-file"
    path.write_bytes(b"")
    with pytest.raises(KvmUnavailableError, match="not a KVM device"):
        KVM(path)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KvmUnavailableError, match=str(tmp_path)):
        KVM(tmp_path)


@requires_kvm
def test_permission_denied_names_the_group() -> None:
    """Open /dev/kvm as an unprivileged user in a child process (the test usually runs as root)."""
    if os.geteuid() != 0:
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            pytest.skip("this user can open /dev/kvm and cannot drop privileges to test EACCES")
        with pytest.raises(KvmUnavailableError, match="group"):
            KVM()
        return
    if os.stat("/dev/kvm").st_mode & 0o006 == 0o006:
        pytest.skip("/dev/kvm is world read-writable: an unprivileged user is not refused")
    child = textwrap.dedent("""
        import os, sys
        from vmboot.errors import KvmUnavailableError
        from vmboot.hv.kvm import KVM
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        try:
            KVM()
        except KvmUnavailableError as e:
            print(e)
            sys.exit(0)
        sys.exit("opened /dev/kvm as nobody")
    """)
    src = str(Path(__file__).resolve().parent.parent / "src")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": src}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "permission denied" in proc.stdout
    assert "usermod -aG kvm" in proc.stdout


@requires_kvm
def test_wrong_api_version(monkeypatch: pytest.MonkeyPatch) -> None:
    real_ioctl = fcntl.ioctl  # what vmboot.hv.kvm.system calls

    def fake(fd: int, request: int, arg: object = 0) -> object:
        if request == abi.KVM_GET_API_VERSION:
            return 11
        return real_ioctl(fd, request, arg)  # type: ignore[call-overload]

    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(fcntl, "ioctl", fake)
    with pytest.raises(KvmUnavailableError, match=r"API version 11, vmboot needs version 12"):
        KVM()
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == before, "the fd of a refused device must be closed"


@requires_kvm
def test_missing_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    real_ioctl = fcntl.ioctl  # what vmboot.hv.kvm.system calls

    def fake(fd: int, request: int, arg: object = 0) -> object:
        if request == abi.KVM_CHECK_EXTENSION and arg == abi.KVM_CAP_IMMEDIATE_EXIT:
            return 0
        return real_ioctl(fd, request, arg)  # type: ignore[call-overload]

    monkeypatch.setattr(fcntl, "ioctl", fake)
    with pytest.raises(KvmUnavailableError, match="lacks KVM_CAP_IMMEDIATE_EXIT"):
        KVM()


@requires_kvm
def test_capabilities_and_supported_cpuid() -> None:
    with KVM() as kvm:
        assert kvm.vcpu_mmap_size >= 4096
        assert kvm.vcpu_mmap_size % 4096 == 0
        assert kvm.check_extension(abi.KVM_CAP_IRQCHIP) > 0
        assert kvm.max_vcpus >= 1
        assert kvm.nr_memslots >= 2
        entries = kvm.supported_cpuid()
        leaves = {e.function for e in entries}
        assert {0, 1}.issubset(leaves)
        # The copies are independent of the cache.
        entries[0].eax = 0xDEAD
        assert kvm.supported_cpuid()[0].eax != 0xDEAD or entries[0].function != 0
        from vmboot.x86.msr import MSR_STAR
        assert MSR_STAR in kvm.msr_index_list()
    with pytest.raises(Exception, match="after close"):
        _ = kvm.fd


def test_emulating_host_detection_follows_sysfs() -> None:
    assert host_is_emulating() == Path("/sys/module/kvm_pvm").exists()
