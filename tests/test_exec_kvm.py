"""``vmboot exec`` end to end under KVM with the tiny kernel (3 boots; ~30-60 s each here).

Each test prints what it measured (``pytest -s`` shows it); no assertion involves a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_kvm, shared_kernel_file

pytestmark = [pytest.mark.slow, requires_kvm]

TIMEOUT_STATUS = 124
LIMIT = 600
"""Seconds any one boot may take before the test gives up (a hang, not a slow host)."""


@pytest.fixture
def exec_env(busybox: Path) -> dict[str, str]:
    kernel = shared_kernel_file("tiny-bzImage")
    env = dict(os.environ)
    env["VMBOOT_KERNEL"] = str(kernel)
    return env


def vmboot_exec(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "vmboot", "exec", *argv], env=env,
                          capture_output=True, timeout=LIMIT, check=False)


def test_cli_separates_stdout_stderr_and_returns_the_exit_status(exec_env: dict[str, str]) -> None:
    done = vmboot_exec(exec_env, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    print(f"\nexit 7 run: status {done.returncode}, stdout {done.stdout!r}, stderr {done.stderr!r}")
    assert done.stdout == b"out\n"
    assert done.stderr == b"err\n"
    assert done.returncode == 7


def test_the_shipped_guest_runs_a_command_with_nothing_named(tmp_path: Path) -> None:
    """`vmboot exec -- uname -a` right after pip install: no --kernel, no $VMBOOT_KERNEL, no
    busybox on PATH, an empty cache: the kernel and busybox vmboot ships."""
    from vmboot.execute.default_guest import read_versions

    env = {name: value for name, value in os.environ.items()
           if name not in ("VMBOOT_KERNEL", "VMBOOT_BUSYBOX")}
    env.update(VMBOOT_CACHE=str(tmp_path / "empty-cache"), PATH=str(tmp_path / "no-bin"))
    done = vmboot_exec(env, "--", "uname", "-a")
    print(f"\nuname -a: status {done.returncode}, stdout {done.stdout!r}, stderr {done.stderr[-500:]!r}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == b""  # nothing fetched, nothing to say
    release = read_versions()["kernel-release"]  # "6.1.192 (vmboot@vmboot) #1 SMP ..."
    version, _, rest = release.partition(" ")
    assert done.stdout.startswith(b"Linux ")
    assert f" {version} ".encode() in done.stdout and rest.split(") ", 1)[1].encode() in done.stdout


def test_added_file_reaches_the_guest_byte_for_byte(busybox: Path, tmp_path: Path) -> None:
    from vmboot.execute.api import exec_command
    from vmboot.execute.result import ExecReason

    kernel = shared_kernel_file("tiny-bzImage")
    data = bytes(range(256)) * 64 + os.urandom(4096) + b"\r\n\x00end"
    host = tmp_path / "payload.bin"
    host.write_bytes(data)
    chunks: list[bytes] = []
    # entry="elf64": the bzImage's payload is decompressed on the host (the other tests here
    # boot through the bzImage's own entry)
    result = exec_command(["md5sum", "/in/payload.bin"], kernel=kernel, busybox=busybox,
                          files=[(host, "/in/payload.bin")], on_stdout=chunks.append, timeout=LIMIT,
                          entry="elf64")
    print(f"\nmd5sum run: {result.one_line()}; timings {result.timings.as_dict()}")
    assert result.reason is ExecReason.EXITED, result.detail
    assert result.exit_status == 0
    assert result.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()
    assert b"".join(chunks) == result.stdout            # streamed as well as captured
    assert result.stderr == b""


def test_hanging_command_ends_at_the_timeout(exec_env: dict[str, str]) -> None:
    done = vmboot_exec(exec_env, "--timeout", "100", "--json", "--", "sh", "-c", "echo ready; sleep 1000")
    summary = json.loads(done.stdout)
    print(f"\nsleep 1000 run: status {done.returncode}, {summary['summary']}; timings {summary['timings']}")
    assert done.returncode == TIMEOUT_STATUS
    assert summary["reason"] == "timeout"
    assert summary["exit_status"] is None
    assert summary["vm_exit"] == "timeout"
    if summary["stdout"]:   # the boot finished within the limit: the command was running
        assert summary["stdout"] == "ready\n"
        assert "while the command ran" in summary["detail"]
