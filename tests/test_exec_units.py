"""``vmboot exec`` without KVM: result classification, the status watch, kernel lookup, CLI parsing."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from vmboot.cli import exec as cli_exec
from vmboot.cli.main import build_parser
from vmboot.errors import KernelFormatError, KernelImageError, UsageError, VmbootError
from vmboot.execute.api import _StatusWatch, classify
from vmboot.execute.discovery import cached_kernels, find_kernel
from vmboot.execute.layout import EXEC_CMDLINE
from vmboot.execute.result import ExecReason
from vmboot.vmm.exits import ExitReason

# -- classification -------------------------------------------------------------------------


def test_cmdline_has_the_exec_protocol_options() -> None:
    words = EXEC_CMDLINE.split()
    assert words[0] == "console=ttyS0"
    assert {"8250.nr_uarts=4", "reboot=k", "panic=-1", "quiet"} <= set(words)
    assert words.count("console=ttyS0") == 1


def test_exit_status_wins_even_if_the_run_was_stopped_or_timed_out() -> None:
    for vm_exit in (ExitReason.STOPPED, ExitReason.RESET, ExitReason.TIMEOUT):
        out = classify(vm_exit, "", b"VMBOOT-START\nVMBOOT-EXIT 7\n", b"")
        assert (out.reason, out.exit_status) == (ExecReason.EXITED, 7)


def test_panic_from_console_or_exit_reason() -> None:
    console = b"[ 1.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x100\n[ 1.1] more\n"
    out = classify(ExitReason.RESET, "", b"VMBOOT-START\n", console)
    assert out.reason is ExecReason.PANIC and out.exit_status is None
    assert "Attempted to kill init" in out.detail and "more" not in out.detail
    out = classify(ExitReason.PANIC, "Kernel panic - not syncing: boom", b"", b"")
    assert out.reason is ExecReason.PANIC and "boom" in out.detail


def test_timeout_says_at_which_stage() -> None:
    before = classify(ExitReason.TIMEOUT, "", b"", b"booting\n", timeout=5)
    during = classify(ExitReason.TIMEOUT, "", b"VMBOOT-START\n", b"", timeout=5)
    assert before.reason is during.reason is ExecReason.TIMEOUT
    assert "before the command started" in before.detail and "5 s" in before.detail
    assert "while the command ran" in during.detail


def test_boot_failure_without_start_and_lost_with_it() -> None:
    boot = classify(ExitReason.SHUTDOWN, "triple fault", b"",
                    b"vmboot-init: /dev/ttyS3 is missing: boot with 8250.nr_uarts=4\n")
    assert boot.reason is ExecReason.BOOT_FAILURE
    assert "triple fault" in boot.detail and "ttyS3 is missing" in boot.detail
    lost = classify(ExitReason.RESET, "", b"VMBOOT-START\n", b"")
    assert lost.reason is ExecReason.LOST and lost.exit_status is None


def test_guest_error_and_garbage_on_the_status_channel() -> None:
    err = classify(ExitReason.STOPPED, "", b"VMBOOT-ERROR cannot read the command file\n", b"")
    assert err.reason is ExecReason.GUEST_ERROR and "cannot read the command file" in err.detail
    junk = classify(ExitReason.RESET, "", b"hello\n", b"")
    assert junk.reason is ExecReason.GUEST_ERROR and "hello" in junk.detail


def test_reasons_are_distinct() -> None:
    outcomes = [
        classify(ExitReason.STOPPED, "", b"VMBOOT-START\nVMBOOT-EXIT 0\n", b""),
        classify(ExitReason.RESET, "", b"", b"Kernel panic - not syncing: x\n"),
        classify(ExitReason.TIMEOUT, "", b"VMBOOT-START\n", b""),
        classify(ExitReason.RESET, "", b"", b""),
        classify(ExitReason.STOPPED, "", b"VMBOOT-ERROR x\n", b""),
        classify(ExitReason.POWEROFF, "", b"VMBOOT-START\n", b""),
    ]
    assert len({o.reason for o in outcomes}) == len(outcomes) == len(ExecReason)


# -- the status channel watch ---------------------------------------------------------------


def test_status_watch_stops_the_run_at_the_exit_line_only() -> None:
    stops: list[tuple[ExitReason, str]] = []
    watch = _StatusWatch(t0=0.0)
    watch.stop = lambda reason, detail: stops.append((reason, detail))
    watch(b"VMBOOT-START\n")
    assert watch.started_at is not None and watch.exited_at is None and stops == []
    watch(b"VMBOOT-EX")                # a partial line is not an exit yet
    assert stops == []
    watch(b"IT 3\n")
    assert [r for r, _ in stops] == [ExitReason.STOPPED]
    assert watch.exited_at is not None
    watch(b"VMBOOT-EXIT 3\n")          # stopping once is enough
    assert len(stops) == 1
    assert bytes(watch.data) == b"VMBOOT-START\nVMBOOT-EXIT 3\nVMBOOT-EXIT 3\n"


# -- kernel lookup --------------------------------------------------------------------------


def _touch(path: Path, data: bytes = b"k") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_kernel_from_env_first(tmp_path: Path) -> None:
    mine = _touch(tmp_path / "mine")
    cache = tmp_path / "cache"
    _touch(cache / "debian-kernels/6.1.0-9/boot/vmlinuz-6.1.0-9-cloud-amd64")
    boot = tmp_path / "boot"
    _touch(boot / "vmlinuz-1.2.3")
    found = find_kernel({"VMBOOT_KERNEL": str(mine)}, cache=cache, boot_dir=boot, release="1.2.3")
    assert found == mine


def test_env_kernel_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KernelImageError, match=r"VMBOOT_KERNEL.*no such file"):
        find_kernel({"VMBOOT_KERNEL": str(tmp_path / "nope")}, cache=tmp_path, boot_dir=tmp_path)


def test_kernel_from_cache_newest_version(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _touch(cache / "debian-kernels/6.1.0-9/boot/vmlinuz-6.1.0-9-cloud-amd64")
    newest = _touch(cache / "debian-kernels/6.1.0-10/boot/vmlinuz-6.1.0-10-cloud-amd64")
    _touch(cache / "debian-kernels/6.1.0-10/boot/config-6.1.0-10-cloud-amd64")
    boot = tmp_path / "boot"
    _touch(boot / "vmlinuz-1.2.3")
    assert cached_kernels(cache)[0] == newest
    assert find_kernel({}, cache=cache, boot_dir=boot, release="1.2.3",
                       guest_image=tmp_path / "no-guest") == newest


def test_cache_dir_follows_the_environment(tmp_path: Path) -> None:
    newest = _touch(tmp_path / "c/debian-kernels/6.1.0-2/boot/vmlinuz-6.1.0-2-cloud-amd64")
    assert find_kernel({"VMBOOT_CACHE": str(tmp_path / "c")}, boot_dir=tmp_path / "boot",
                       guest_image=tmp_path / "no-guest") == newest


def test_kernel_from_boot_for_the_running_release(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    _touch(boot / "vmlinuz-0.0.1")
    host = _touch(boot / "vmlinuz-1.2.3")
    assert find_kernel({}, cache=tmp_path / "empty", boot_dir=boot, release="1.2.3",
                       guest_image=tmp_path / "no-guest") == host


def test_shipped_kernel_right_after_the_explicit_choices(tmp_path: Path) -> None:
    """A Debian kernel in the cache (tests and `vmboot fetch kernel` put one there) does not
    boot where /dev/kvm is PVM; the shipped one does everywhere, so it comes first."""
    boot = tmp_path / "boot"
    _touch(boot / "vmlinuz-1.2.3")
    _touch(tmp_path / "cache/debian-kernels/6.1.0-9/boot/vmlinuz-6.1.0-9-cloud-amd64")
    shipped = _touch(tmp_path / "guest" / "bzImage")
    assert find_kernel({}, cache=tmp_path / "cache", boot_dir=boot, release="1.2.3",
                       guest_image=tmp_path / "guest") == shipped
    mine = _touch(tmp_path / "mine")
    assert find_kernel({"VMBOOT_KERNEL": str(mine)}, cache=tmp_path / "cache", boot_dir=boot,
                       release="1.2.3", guest_image=tmp_path / "guest") == mine


def test_the_installed_package_ships_a_kernel(tmp_path: Path) -> None:
    from vmboot.execute.default_guest import GUEST_IMAGE_DIR

    found = find_kernel({}, cache=tmp_path / "empty", boot_dir=tmp_path / "boot", release="1.2.3")
    assert found == GUEST_IMAGE_DIR / "bzImage"


def test_no_kernel_says_where_it_looked_and_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(KernelImageError) as e:
        find_kernel({}, cache=tmp_path / "cache", boot_dir=tmp_path / "boot", release="1.2.3",
                    guest_image=tmp_path / "no-guest")
    msg = str(e.value)
    assert "vmlinuz-1.2.3 (missing)" in msg and "the kernel vmboot ships (not in this installation)" in msg
    assert "vmboot fetch kernel" in msg and "VMBOOT_KERNEL" in msg and "reinstall vmboot" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file, so 'not readable' cannot happen")
def test_unreadable_boot_kernel_is_skipped(tmp_path: Path) -> None:
    host = _touch(tmp_path / "vmlinuz-1.2.3")
    host.chmod(0)
    with pytest.raises(KernelImageError, match="not readable"):
        find_kernel({}, cache=tmp_path / "cache", boot_dir=tmp_path, release="1.2.3",
                    guest_image=tmp_path / "no-guest")


# -- CLI parsing ----------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["exec", *argv])


def test_add_splits_host_and_guest(tmp_path: Path) -> None:
    assert cli_exec.add_spec("data.bin:/x/y.bin") == ("data.bin", "/x/y.bin")
    assert cli_exec.add_spec("dir/data.bin") == ("dir/data.bin", "/data.bin")
    assert cli_exec.add_spec("a:b:/guest") == ("a:b", "/guest")
    odd = _touch(tmp_path / "with:colon")
    assert cli_exec.add_spec(str(odd)) == (str(odd), "/with:colon")   # an existing path is not split
    assert cli_exec.add_spec("some/dir/") == ("some/dir/", "/dir")


@pytest.mark.parametrize("bad", ["", ":/guest", "host:", "/", ".."])
def test_add_rejects(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli_exec.add_spec(bad)


def test_env_validation() -> None:
    assert cli_exec.env_spec("PATH=/bin:/usr/bin") == ("PATH", "/bin:/usr/bin")
    assert cli_exec.env_spec("EMPTY=") == ("EMPTY", "")
    assert cli_exec.env_spec("A=b=c") == ("A", "b=c")
    for bad in ("NOEQUALS", "1X=y", "A-B=c", "=v"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli_exec.env_spec(bad)


def test_parser_collects_options_and_the_command() -> None:
    args = parse("--kernel", "k", "-m", "64M", "--add", "a:/a", "--add", "b", "--env", "X=1",
                 "--timeout", "9", "--console", "--json", "--", "sh", "-c", "exit 3", "--json")
    assert (args.kernel, args.memory, args.timeout, args.console, args.json) == ("k", "64M", 9.0, True, True)
    assert args.add == [("a", "/a"), ("b", "/b")]
    assert args.env == [("X", "1")]
    assert cli_exec.command_words(args) == ["sh", "-c", "exit 3", "--json"]
    assert args.func is cli_exec.run


def test_parser_rejects_bad_env_and_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (("--env", "1X=y", "--", "true"), ("--timeout", "0", "--", "true"),
                 ("--add", "host:", "--", "true")):
        with pytest.raises(SystemExit) as e:
            parse(*argv)
        assert e.value.code == 2
    assert "not a variable name" in capsys.readouterr().err


def test_no_command_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no command"):
        cli_exec.command_words(parse())
    with pytest.raises(UsageError, match="no command"):
        cli_exec.command_words(parse("--"))


def test_exit_statuses_are_distinct_per_reason() -> None:
    assert cli_exec.exit_status_for("exited", 7) == 7
    assert cli_exec.exit_status_for("exited", 0) == 0
    specials = {r.value: cli_exec.exit_status_for(r.value, None)
                for r in ExecReason if r is not ExecReason.EXITED}
    assert specials["timeout"] == 124
    assert specials["panic"] != specials["timeout"] != specials["boot-failure"]
    assert len({specials["panic"], specials["timeout"], specials["boot-failure"], specials["lost"]}) == 4


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    out = capsys.readouterr().out
    assert "examples:" in out and "--add" in out and "VMBOOT_KERNEL" in out


# -- the CLI handler, with exec_command replaced (no KVM) -----------------------------------


def fake_result(reason: ExecReason, status: int | None, detail: str = "") -> object:
    from vmboot.execute.result import ExecResult, ExecTimings

    timings = ExecTimings(0.0, 0.1, None, 1.0, 2.0, 2.5)
    return ExecResult(stdout=b"o\n", stderr=b"e\n", exit_status=status, reason=reason,
                      timings=timings, console=b"", detail=detail)


def test_cli_passes_options_through_and_returns_the_status(
        monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    import vmboot.execute.api
    from vmboot.cli.main import main

    seen: dict[str, object] = {}

    def fake(command: list[str], **kw: object) -> object:
        seen.update(kw, command=command)
        for name in ("on_stdout", "on_stderr"):
            callback = kw[name]
            assert callable(callback)
            callback(b"streamed " + name.encode() + b"\n")
        return fake_result(ExecReason.EXITED, 7)

    monkeypatch.setattr(vmboot.execute.api, "exec_command", fake)
    status = main(["exec", "--kernel", "k", "-m", "64M", "--add", "h:/g", "--env", "A=1",
                   "--timeout", "30", "--", "sh", "-c", "exit 7"])
    out = capsysbinary.readouterr()
    assert status == 7
    assert out.out == b"streamed on_stdout\n"
    assert out.err == b"streamed on_stderr\n"
    assert seen["command"] == ["sh", "-c", "exit 7"]
    assert (seen["kernel"], seen["memory"], seen["timeout"]) == ("k", "64M", 30.0)
    assert seen["files"] == [("h", "/g")] and seen["env"] == {"A": "1"} and seen["console"] is False


@pytest.mark.parametrize(("reason", "code"), [(ExecReason.PANIC, cli_exec.EXIT_PANIC),
                                              (ExecReason.TIMEOUT, 124),
                                              (ExecReason.BOOT_FAILURE, cli_exec.EXIT_NOT_STARTED)])
def test_cli_reports_non_exits_in_one_line_and_json(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str],
                                                    reason: ExecReason, code: int) -> None:
    import json

    import vmboot.execute.api
    from vmboot.cli.main import main

    monkeypatch.setattr(vmboot.execute.api, "exec_command",
                        lambda command, **kw: fake_result(reason, None, "why it ended"))
    assert main(["exec", "--", "true"]) == code
    err = capsys.readouterr().err
    assert err.splitlines() == [f"vmboot exec: {reason.value}: why it ended"]
    assert main(["exec", "--json", "--", "true"]) == code
    summary = json.loads(capsys.readouterr().out)
    assert summary["reason"] == reason.value and summary["exit_status"] is None
    assert summary["vmboot_exit_status"] == code and summary["stdout"] == "o\n"


def test_vmboot_exec_is_the_callable_exec_command() -> None:
    import subprocess
    import sys

    import vmboot
    from vmboot.execute.api import exec_command

    assert vmboot.exec is exec_command
    # `import vmboot` stays cheap: nothing of the VMM is imported until a name is used
    out = subprocess.run([sys.executable, "-c", "import sys, vmboot; "
                          "print(sorted(m for m in sys.modules if m.startswith('vmboot.')))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- validation before anything is built ------------------------------------------------------


@pytest.fixture
def no_initramfs_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the exec initramfs fails the test: what is checked first must refuse first."""
    from vmboot.execute import image

    def must_not_build(*args: object, **kwargs: object) -> bytes:
        pytest.fail("the initramfs was built before the configuration was validated")

    monkeypatch.setattr(image, "exec_initramfs", must_not_build)


@pytest.fixture
def small_kernel(tmp_path: Path) -> Path:
    from bzimage_builder import build_bzimage

    kernel = tmp_path / "bzImage"
    kernel.write_bytes(build_bzimage())
    return kernel


@pytest.mark.parametrize(("option", "value", "field"), [
    ("memory", "lots", "memory"), ("memory", "1M", "memory size"),
    ("cpuid_policy", "fastest", "cpuid_policy"), ("entry", "bios", "entry"),
    ("capture_limit", -1, "capture_limit"), ("timeout", 0, "timeout"),
])
def test_exec_refuses_a_bad_option_before_building_the_initramfs(
        no_initramfs_build: None, small_kernel: Path, tmp_path: Path, option: str, value: object,
        field: str) -> None:
    from vmboot.execute import api

    with pytest.raises(VmbootError) as info:
        api.exec_command(["true"], kernel=small_kernel, busybox=tmp_path / "busybox",
                         **{option: value})  # type: ignore[arg-type]
    assert str(info.value).startswith(f"{field}: ")


def test_exec_refuses_a_file_that_is_no_kernel_before_building_the_initramfs(
        no_initramfs_build: None, tmp_path: Path) -> None:
    from vmboot.execute import api

    text = tmp_path / "notes.txt"
    text.write_text("not a kernel\n")
    with pytest.raises(KernelFormatError, match="is a text file"):
        api.exec_command(["true"], kernel=text, busybox=tmp_path / "busybox")


def test_exec_refuses_a_busybox_that_is_not_static_before_building_the_initramfs(
        no_initramfs_build: None, small_kernel: Path, tmp_path: Path) -> None:
    from vmboot.errors import FetchError
    from vmboot.execute import api

    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(FetchError, match=rf"busybox {script}: not usable in the guest"):
        api.exec_command(["true"], kernel=small_kernel, busybox=script, memory="64M")


def test_exec_builds_the_initramfs_once_the_configuration_is_valid(
        monkeypatch: pytest.MonkeyPatch, small_kernel: Path) -> None:
    """The guards above are not vacuous: with valid options the builder is reached."""
    from vmboot.execute import api, image
    from vmboot.execute.default_guest import GUEST_IMAGE_DIR, shipped_busybox

    class Built(Exception):
        pass

    def builder(*args: object, **kwargs: object) -> bytes:
        raise Built

    monkeypatch.setattr(image, "exec_initramfs", builder)
    busybox = shipped_busybox()
    assert busybox is not None, f"{GUEST_IMAGE_DIR} has no busybox"
    with pytest.raises(Built):
        api.exec_command(["true"], kernel=small_kernel, busybox=busybox, memory="64M")
