"""``vmboot exec`` through the guest agent, and its UART fallback, on real guests (slow).

Four boots, the first three serving several checks each:

1. ``vmboot exec`` (the CLI, agent on virtio-console) on tiny-smp-bzImage with an ext4 data
   disk (``--disk``, built with ``mkfs.ext4 -d``) and stdin piped: 2,000,000 bytes on stdout,
   stderr separate, the disk's file, the stdin's checksum, exit status 7;
2. a ``Machine`` booted once with the agent image on vsock (``agent="vsock"``) running
   several commands: statuses 0 and 7, death by a signal, Ctrl-C forwarded, 2 MB out;
3. ``vmboot exec`` on a kernel whose own symbols lack the virtio-console driver: a copy of
   tiny-vmlinux whose kallsyms entry for ``virtcons_probe`` is renamed, so that the
   decision made before the boot really takes the UARTs;
4. ``vmboot exec`` given SIGINT (Ctrl-C) while the command runs: the command dies of it.

Each test prints what it measured (``pytest -s``); no assertion involves a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_tool, requires_kvm, shared_kernel_file

pytestmark = [pytest.mark.slow, requires_kvm]

LIMIT = 900
"""Seconds any one boot and command may take before the test gives up (a hang)."""
BULK = 2_000_000
DISK_TEXT = b"hello from the data disk\n"
STDIN = os.urandom(300_000)
EXIT_SEVEN = ("head -c {n} /dev/zero; "
              "mount -t ext4 -o ro /dev/vda /mnt && cat /mnt/hello.txt >&2; md5sum >&2; exit 7")


def vmboot_exec(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "vmboot", "exec", *argv], input=stdin,
                          capture_output=True, timeout=LIMIT + 60, check=False)


# -- 1. the CLI through the agent on virtio-console, with a data disk -----------------------


@pytest.fixture(scope="module")
def disk_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[bytes]:
    require_tool("mkfs.ext4", "e2fsprogs")
    kernel = shared_kernel_file("tiny-smp-bzImage")
    work = tmp_path_factory.mktemp("disk")
    tree = work / "tree"
    tree.mkdir()
    (tree / "hello.txt").write_bytes(DISK_TEXT)
    image = work / "data.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(image), "4M"], check=True)
    done = vmboot_exec("-v", "--kernel", str(kernel), "--disk", f"{image},ro",
                       "--timeout", str(LIMIT), "--", "sh", "-c", EXIT_SEVEN.format(n=BULK),
                       stdin=STDIN)
    print(f"\nexec with a disk: status {done.returncode}, {len(done.stdout)} bytes out, "
          f"stderr {done.stderr[-600:]!r}")
    return done


def test_two_million_bytes_arrive_exactly_on_stdout(disk_run: subprocess.CompletedProcess[bytes]) -> None:
    assert len(disk_run.stdout) == BULK
    assert disk_run.stdout == bytes(BULK)


def test_exit_status_and_stderr_apart_from_stdout(disk_run: subprocess.CompletedProcess[bytes]) -> None:
    assert disk_run.returncode == 7, disk_run.stderr[-2000:]
    assert DISK_TEXT in disk_run.stderr            # the file on --disk, read back in the guest
    assert b"\0" not in disk_run.stderr            # none of stdout's bytes went astray


def test_stdin_is_piped_in(disk_run: subprocess.CompletedProcess[bytes]) -> None:
    assert hashlib.md5(STDIN).hexdigest().encode() in disk_run.stderr


def test_verbose_names_the_agent_channel(disk_run: subprocess.CompletedProcess[bytes]) -> None:
    assert b"vmboot exec: channel: console (the kernel has " in disk_run.stderr


# -- 2. one machine, the agent on vsock, many commands ---------------------------------------


@pytest.fixture(scope="module")
def vsock_machine(busybox: Path) -> Iterator[object]:
    from vmboot.devices.virtio.vsock_host import VsockConfig
    from vmboot.execute.image import agent_initramfs
    from vmboot.execute.layout import AGENT_CMDLINE
    from vmboot.vmm.machine import Machine

    kernel = shared_kernel_file("tiny-bzImage")
    console = bytearray()
    with Machine(kernel, initrd=agent_initramfs([], busybox), cmdline=AGENT_CMDLINE,
                 agent="vsock", vsock=VsockConfig(), console=console.extend) as machine:
        version = machine.wait_agent(LIMIT)
        print(f"\nagent over vsock: {version}")
        yield machine


def test_vsock_agent_statuses(vsock_machine: object) -> None:
    from vmboot.vmm.machine import Machine

    assert isinstance(vsock_machine, Machine)
    true = vsock_machine.exec(["/bin/busybox", "true"], {}, timeout=LIMIT)
    seven = vsock_machine.exec(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"], {},
                               timeout=LIMIT)
    killed = vsock_machine.exec(["/bin/sh", "-c", "kill -9 $$"], {}, timeout=LIMIT)
    assert (true.exit_status, true.signal) == (0, None)
    assert (seven.exit_status, seven.stdout, seven.stderr) == (7, b"out\n", b"err\n")
    assert (killed.exit_status, killed.signal) == (None, signal.SIGKILL)


def test_vsock_agent_forwards_ctrl_c(vsock_machine: object) -> None:
    from vmboot.vmm.machine import Machine

    assert isinstance(vsock_machine, Machine)
    started = threading.Event()

    def on_stdout(data: bytes) -> None:
        if b"sleeping" in data:
            started.set()
            vsock_machine.exec_signal(signal.SIGINT)

    result = vsock_machine.exec(["/bin/sh", "-c", "echo sleeping; exec sleep 1000"], {},
                                timeout=LIMIT, on_stdout=on_stdout)
    assert started.is_set()
    assert (result.signal, result.timed_out) == (signal.SIGINT, False)


def test_vsock_agent_moves_two_million_bytes(vsock_machine: object) -> None:
    from vmboot.vmm.machine import Machine

    assert isinstance(vsock_machine, Machine)
    result = vsock_machine.exec(["/bin/busybox", "head", "-c", str(BULK), "/dev/zero"], {},
                                timeout=LIMIT)
    assert (result.exit_status, len(result.stdout)) == (0, BULK)
    assert result.stdout == bytes(BULK)


# -- 3. a kernel without (visible) virtio-console: the UARTs ---------------------------------


def rename_kallsyms_symbol(vmlinux: bytes, name: str) -> bytes:
    """``vmlinux`` with the kallsyms entry of ``name`` spelt differently (same length): its
    last token becomes another token of lower-case letters. The code is untouched."""
    from vmboot.debug.kallsyms import _token_table_candidates, decode_kallsyms
    from vmboot.elf import ElfFile

    elf = ElfFile(vmlinux, "vmlinux")
    rodata = elf.section(".rodata")
    assert rodata is not None
    start = rodata.offset
    data = bytes(elf.section_data(rodata))
    syms = decode_kallsyms(data, "vmlinux")
    index = next(i for i in range(len(syms)) if syms.name(i) == name)
    tokens = next(t for table, _, t in _token_table_candidates(data)
                  if table == syms.tables.token_table)
    at = syms.tables.names
    for _ in range(index):  # entries: a length (one byte, or two with the top bit set), tokens
        at += (2 + ((data[at] & 0x7F) | (data[at + 1] << 7))) if data[at] & 0x80 else 1 + data[at]
    assert not data[at] & 0x80
    last = at + data[at]
    other = next(i for i, t in enumerate(tokens)
                 if t.isalpha() and t.islower() and t != tokens[data[last]])
    patched = bytearray(vmlinux)
    patched[start + last] = other
    return bytes(patched)


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[bytes]:
    from vmboot.debug.symbol_sources import load_kernel_symbols

    original = shared_kernel_file("tiny-vmlinux")
    kernel = tmp_path_factory.mktemp("kernel") / "tiny-vmlinux-no-virtcons"
    kernel.write_bytes(rename_kallsyms_symbol(original.read_bytes(), "virtcons_probe"))
    names = set(load_kernel_symbols(kernel).names())
    assert "virtcons_probe" not in names and "vm_cmdline_set" in names
    done = vmboot_exec("--kernel", str(kernel), "--json", "--timeout", str(LIMIT), "--", "sh",
                       "-c", "echo out; echo err >&2; exit 7")
    print(f"\nexec on the renamed kernel: status {done.returncode}, {done.stdout[-600:]!r}")
    return done


def test_a_kernel_without_virtio_console_runs_over_the_uarts(
        serial_run: subprocess.CompletedProcess[bytes]) -> None:
    summary = json.loads(serial_run.stdout)
    assert summary["channel"] == "serial"
    assert "virtcons_probe" in summary["channel_reason"]
    assert (summary["stdout"], summary["stderr"], summary["exit_status"]) == ("out\n", "err\n", 7)
    assert serial_run.returncode == 7
    assert summary["verdict"] == "command-failed"


# -- 4. Ctrl-C at vmboot exec reaches the command ---------------------------------------------


def test_ctrl_c_at_vmboot_exec_reaches_the_command() -> None:
    kernel = shared_kernel_file("tiny-bzImage")
    proc = subprocess.Popen([sys.executable, "-m", "vmboot", "exec", "--kernel", str(kernel),
                             "--timeout", str(LIMIT), "--", "sh", "-c",
                             "echo ready; exec sleep 1000"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()  # the command runs: Ctrl-C is now the command's
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"\nCtrl-C: status {proc.returncode}, stdout {first + rest!r}, stderr {err[-300:]!r}")
    assert first == b"ready\n" and rest == b""
    assert proc.returncode == 128 + signal.SIGINT  # the command's death, not vmboot's
    assert b"interrupted" not in err
