"""The vmboot exec image: its layout, the command file, and the guest scripts run on the host.

The guest's command runner (``vmboot/execute/guest/run.sh``) honours VMBOOT_COMMAND, VMBOOT_STDOUT,
VMBOOT_STDERR, VMBOOT_STATUS and VMBOOT_BUSYBOX, so it runs here under a real static busybox
with the serial ports replaced by files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vmboot.errors import FetchError, GuestError, InitramfsError
from vmboot.execute.guest import INIT_SCRIPT, RUN_SCRIPT, guest_file
from vmboot.execute.image import (
    EXEC_CHANNELS,
    command_file,
    exec_initramfs,
    parse_status,
)
from vmboot.execute.layout import EXEC_KERNEL_ARGS
from vmboot.initramfs import EntryKind, read_cpio

# -- command file ---------------------------------------------------------------------------


def test_command_file_quotes_every_word() -> None:
    text = command_file(["prog", "it's", "a b"], {"A": "1"})
    assert text.endswith(b"set -- 'A=1' 'prog' 'it'\\''s' 'a b'\n")


@pytest.mark.parametrize(("command", "env", "message"), [
    ([], {}, "command is empty"),
    (["a=b"], {}, r"argv\[0\] 'a=b' .*contains '='"),
    (["x", "nul\0"], {}, r"argv\[1\] 'nul\\x00' contains a NUL"),
    (["x"], {"1BAD": "v"}, "name '1BAD' is not usable"),
    (["x"], {"-i": "v"}, "name '-i' is not usable"),
    (["x"], {"OK": "a\0b"}, "variable OK, value 'OK=a\\\\x00b' contains a NUL"),
])
def test_command_file_refuses_what_cannot_travel(command: list[str], env: dict[str, str],
                                                 message: str) -> None:
    with pytest.raises(InitramfsError, match=message):
        command_file(command, env)


# -- the guest scripts ----------------------------------------------------------------------


@pytest.mark.parametrize("script", [INIT_SCRIPT, RUN_SCRIPT])
def test_guest_scripts_parse_under_busybox_sh(busybox: Path, script: str, tmp_path: Path) -> None:
    path = tmp_path / script
    path.write_bytes(guest_file(script))
    done = subprocess.run([str(busybox), "sh", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def run_guest_command(busybox: Path, tmp_path: Path, command: list[str],
                      env: dict[str, str]) -> tuple[bytes, bytes, bytes]:
    (tmp_path / "command").write_bytes(command_file(command, env))
    (tmp_path / "run.sh").write_bytes(guest_file(RUN_SCRIPT))
    settings = {
        "VMBOOT_COMMAND": str(tmp_path / "command"),
        "VMBOOT_STDOUT": str(tmp_path / "out"),
        "VMBOOT_STDERR": str(tmp_path / "err"),
        "VMBOOT_STATUS": str(tmp_path / "status"),
        "VMBOOT_BUSYBOX": str(busybox),
        "LEAK_ME": "this must not reach the command",
    }
    done = subprocess.run([str(busybox), "sh", str(tmp_path / "run.sh")], env=settings, cwd=tmp_path,
                          capture_output=True, timeout=60)
    # (the runner's own stderr is the guest console: the shell may note "Terminated" there)
    assert done.returncode == 0, done.stderr
    return tuple((tmp_path / n).read_bytes() for n in ("out", "err", "status"))  # type: ignore[return-value]


TRICKY = ["plain", "two words", "it's", 'say "hi"', "new\nline", "tab\there", "$HOME", "`id`", "\\",
          "*", "", "-n", os.fsdecode(b"\xff\x81\x82\x88 not utf-8"), "trailing newline\n"]


def test_argv_reaches_the_command_byte_for_byte(busybox: Path, tmp_path: Path) -> None:
    # printf '%s\0' prints each argument NUL-terminated: an exact, unambiguous transcript.
    out, err, status = run_guest_command(busybox, tmp_path, [str(busybox), "printf", "%s\\0", *TRICKY], {})
    assert out == b"".join(os.fsencode(a) + b"\0" for a in TRICKY)
    assert err == b""
    assert status == b"VMBOOT-START\nVMBOOT-EXIT 0\n"
    assert parse_status(status).exit_status == 0


def test_environment_is_exactly_the_given_one(busybox: Path, tmp_path: Path) -> None:
    env = {"PLAIN": "1", "SPACES": "a b  c", "QUOTE": "it's", "NEWLINE": "x\ny\n", "EMPTY": "",
           "BYTES": os.fsdecode(b"\xfe\xff")}
    out, _, _ = run_guest_command(busybox, tmp_path, [str(busybox), "env", "-0"], env)
    got = dict(item.split(b"=", 1) for item in out.split(b"\0") if item)
    assert got == {os.fsencode(k): os.fsencode(v) for k, v in env.items()}


def test_stdout_stderr_and_exit_status_are_kept_apart(busybox: Path, tmp_path: Path) -> None:
    script = "printf 'to out'; printf 'to err\\n' >&2; printf ' again'; exit 42"
    out, err, status = run_guest_command(busybox, tmp_path, [str(busybox), "sh", "-c", script], {})
    assert (out, err) == (b"to out again", b"to err\n")
    assert parse_status(status).exit_status == 42


def test_missing_program_and_signals_give_shell_statuses(busybox: Path, tmp_path: Path) -> None:
    _, err, status = run_guest_command(busybox, tmp_path, ["/no/such/program"], {})
    assert parse_status(status).exit_status == 127
    assert b"/no/such/program" in err
    _, _, status = run_guest_command(busybox, tmp_path, [str(busybox), "sh", "-c", "kill -TERM $$"], {})
    assert parse_status(status).exit_status == 128 + 15


def test_busybox_applets_run_without_path(busybox: Path, tmp_path: Path) -> None:
    out, _, status = run_guest_command(busybox, tmp_path, ["echo", "applet"], {})
    assert (out, parse_status(status).exit_status) == (b"applet\n", 0)


def test_unreadable_command_file_is_reported(busybox: Path, tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_bytes(guest_file(RUN_SCRIPT))
    env = {"VMBOOT_COMMAND": str(tmp_path / "missing"), "VMBOOT_STATUS": str(tmp_path / "status")}
    subprocess.run([str(busybox), "sh", str(tmp_path / "run.sh")], env=env, check=True, timeout=60)
    with pytest.raises(GuestError, match="cannot read the command file"):
        parse_status((tmp_path / "status").read_bytes())


def test_parse_status() -> None:
    assert parse_status(b"") == parse_status(b"\r\n")
    assert parse_status(b"").exit_status is None and not parse_status(b"").started
    assert parse_status(b"VMBOOT-START\r\nVMBOOT-EXIT 255\r\n").exit_status == 255
    with pytest.raises(GuestError, match="not part of the exec protocol"):
        parse_status(b"VMBOOT-EXIT 256\n")
    with pytest.raises(GuestError, match="not part of the exec protocol"):
        parse_status(b"hello\n")


# -- the image ------------------------------------------------------------------------------


def test_exec_image_layout_and_cpio_listing(busybox: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("payload")
    image = exec_initramfs(["cat", "/srv/data.txt"], {"PATH": "/bin"}, [(data, "/srv/data.txt")], busybox)
    entries = {e.path: e for e in read_cpio(image)}
    assert entries["init"].data == guest_file(INIT_SCRIPT) and entries["init"].mode == 0o755
    assert entries["bin/busybox"].data == busybox.read_bytes()
    assert entries["bin/sh"].target == "busybox"
    console = entries["dev/console"]
    assert (console.kind, console.rdev_major, console.rdev_minor) == (EntryKind.CHAR_DEVICE, 5, 1)
    assert entries["vmboot/command"].data == command_file(["cat", "/srv/data.txt"], {"PATH": "/bin"})
    assert entries["srv/data.txt"].data == b"payload"
    assert entries["tmp"].mode == 0o1777
    if shutil.which("cpio"):
        listing = subprocess.run(["cpio", "-t", "--quiet"], input=image, capture_output=True,
                                 check=True).stdout.decode().splitlines()
        assert listing == list(entries)
        assert {"init", "bin/busybox", "vmboot/run.sh", "proc", "sys", "dev"} <= set(listing)
    # the same inputs give the same image
    again = exec_initramfs(["cat", "/srv/data.txt"], {"PATH": "/bin"}, [(data, "srv/data.txt")], busybox)
    assert again == image


def test_exec_image_refuses_to_replace_its_own_files(busybox: Path, tmp_path: Path) -> None:
    (tmp_path / "init").write_text("mine")
    with pytest.raises(InitramfsError, match="guest path 'init' clashes with the image's own file"):
        exec_initramfs(["true"], {}, [(tmp_path / "init", "/init")], busybox)


def test_exec_image_needs_a_static_busybox(tmp_path: Path) -> None:
    dynamic = Path(shutil.which("ls") or "/bin/ls")
    with pytest.raises(FetchError, match="dynamically linked"):
        exec_initramfs(["true"], {}, [], dynamic)


def test_protocol_constants_match_the_kernel_legacy_port_table() -> None:
    ports = [(c.tty, c.io_port, c.irq) for c in (EXEC_CHANNELS.console, EXEC_CHANNELS.stdout,
                                                  EXEC_CHANNELS.stderr, EXEC_CHANNELS.status)]
    assert ports == [("ttyS0", 0x3F8, 4), ("ttyS1", 0x2F8, 3), ("ttyS2", 0x3E8, 4), ("ttyS3", 0x2E8, 3)]
    assert "8250.nr_uarts=4" in EXEC_KERNEL_ARGS
    assert b"/dev/ttyS1" in guest_file(RUN_SCRIPT) and b"8250.nr_uarts=4" in guest_file(INIT_SCRIPT)


def test_tiny_kernel_has_the_nr_uarts_parameter() -> None:
    from conftest import shared_kernel_file

    vmlinux = shared_kernel_file("tiny-vmlinux").read_bytes()
    assert b"8250.nr_uarts\0" in vmlinux
