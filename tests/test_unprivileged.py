"""vmboot needs no privilege beyond access to /dev/kvm, and says so when it lacks that access.

The suite runs as root here, so the test drops to uid/gid 65534 (nobody) in a child process.
The child runs the system interpreter (/usr/bin/python3: the suite's own interpreter may sit
under /root, which nobody cannot enter) on a copy of ``src/vmboot`` in a world-readable
temporary directory, so nothing on the machine changes permissions.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import requires_kvm
from test_machine import HELLO_AND_RESET, guest_program

NOBODY = 65534
SYSTEM_PYTHON = Path("/usr/bin/python3")
KVM = Path("/dev/kvm")
SRC = Path(__file__).resolve().parent.parent / "src" / "vmboot"
EXIT_GUEST_FAILED = 1
"""`vmboot run`'s status when vmboot could not run the guest (see `vmboot run --help`)."""


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to drop to another user (it runs as root in CI)"
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is missing (an interpreter uid {NOBODY} can run)"
    if not KVM.exists():
        return f"{KVM} is missing"
    mode = KVM.stat().st_mode
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        return f"{KVM} is usable by every user here (mode {stat.filemode(mode)}): no refusal to see"
    return None


pytestmark = [requires_kvm, pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")]


@pytest.fixture(scope="module")
def world_readable_tree() -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="vmboot-nobody-"))
    try:
        shutil.copytree(SRC, top / "vmboot", ignore=shutil.ignore_patterns("__pycache__"))
        (top / "kernel").write_bytes(guest_program(HELLO_AND_RESET))
        for path in [top, *top.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield top
    finally:
        shutil.rmtree(top)


def as_nobody(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HOME": str(tree),
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    return subprocess.run([str(SYSTEM_PYTHON), *args], cwd=tree, env=env, user=NOBODY,
                          group=NOBODY, extra_groups=[], capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_kvm_object_says_what_access_is_missing(world_readable_tree: Path) -> None:
    done = as_nobody(world_readable_tree, "-c",
                     "from vmboot.errors import KvmUnavailableError\n"
                     "from vmboot.hv.kvm.system import KVM\n"
                     "try:\n    KVM()\nexcept KvmUnavailableError as e:\n    print(e)\n"
                     "else:\n    print('opened')\n")
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert message.startswith("/dev/kvm: permission denied"), message
    assert "group that owns it" in message and "usermod -aG kvm" in message


def test_vmboot_run_without_kvm_access_fails_in_one_line(world_readable_tree: Path) -> None:
    done = as_nobody(world_readable_tree, "-m", "vmboot", "run", "kernel", "-m", "32M")
    assert done.returncode == EXIT_GUEST_FAILED, (done.returncode, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert "/dev/kvm: permission denied" in lines[0] and "kvm" in lines[0]


def test_the_same_run_works_with_access(world_readable_tree: Path) -> None:
    """Control: as root the same copy boots the same kernel, so the refusal above is about
    /dev/kvm and nothing else (not the copy, the interpreter or the kernel file)."""
    env = {"PYTHONPATH": str(world_readable_tree), "PATH": "/usr/bin:/bin",
           "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([str(SYSTEM_PYTHON), "-m", "vmboot", "run", "kernel", "-m", "32M"],
                          cwd=world_readable_tree, env=env, capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"vmboot-ok\n")  # then the CMOS register byte it echoes
