"""Which channel ``vmboot exec`` takes (decided from the kernel's symbols), the agent image,
and the options that go with them (fast: no guest is booted)."""

from __future__ import annotations

import argparse
from collections.abc import Collection
from pathlib import Path

import pytest

from vmboot.agent import agent_binary
from vmboot.cli.main import build_parser
from vmboot.config import MachineConfig
from vmboot.devices.virtio.block import Disk
from vmboot.devices.virtio.vsock_host import VsockConfig
from vmboot.errors import BootConfigError, InitramfsError, SymbolSourceError, UsageError
from vmboot.execute.agent_run import OutputCapture
from vmboot.execute.channel import (
    CHANNEL_CHOICES,
    REQUIRED_SYMBOLS,
    ChannelDecision,
    choose_channel,
)
from vmboot.execute.default_guest import shipped_kernel
from vmboot.execute.image import AGENT_RESERVED_PATHS, agent_argv, agent_entries
from vmboot.initramfs.entry import EntryKind

KERNEL = Path("bzImage")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the decision keeps in the vmboot cache goes to a directory of this test's."""
    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path / "cache"))
EVERYTHING = frozenset({"vm_cmdline_set", "virtcons_probe", "virtio_vsock_probe", "serial8250_init"})


def names(found: Collection[str]) -> object:
    def read(kernel: Path) -> Collection[str]:
        assert kernel == KERNEL
        return found
    return read


def unreadable(kernel: Path) -> Collection[str]:
    raise SymbolSourceError(f"{kernel}: no kallsyms token table found")


def decide(choice: str, found: Collection[str] | None, warm: bool = False) -> ChannelDecision:
    reader = unreadable if found is None else names(found)
    return choose_channel(choice, KERNEL, warm=warm, symbol_names=reader)  # type: ignore[arg-type]


def test_auto_takes_the_agent_console_when_the_kernel_has_its_drivers() -> None:
    decision = decide("auto", EVERYTHING)
    assert (decision.channel, decision.agent) == ("console", "console")
    assert "virtcons_probe" in decision.reason


@pytest.mark.parametrize("lacking", REQUIRED_SYMBOLS["console"])
def test_auto_falls_back_to_the_uarts_and_names_the_missing_driver(lacking: str) -> None:
    decision = decide("auto", EVERYTHING - {lacking})
    assert (decision.channel, decision.agent) == ("serial", None)
    assert lacking in decision.reason


def test_auto_with_unreadable_symbols_is_serial_and_says_why() -> None:
    decision = decide("auto", None)
    assert decision.channel == "serial" and "cannot be read" in decision.reason


def test_an_explicit_channel_the_kernel_lacks_is_refused_naming_the_symbol() -> None:
    with pytest.raises(UsageError, match="virtio_vsock_probe"):
        decide("vsock", EVERYTHING - {"virtio_vsock_probe"})
    with pytest.raises(UsageError, match="virtcons_probe"):
        decide("console", EVERYTHING - {"virtcons_probe"})


def test_explicit_channels_when_the_kernel_has_them_or_cannot_tell() -> None:
    assert decide("vsock", EVERYTHING).channel == "vsock"
    assert decide("serial", frozenset()).channel == "serial"
    assert decide("console", None).channel == "console"  # cannot tell: taken as asked


def test_warm_is_the_console_agent_and_refuses_other_channels() -> None:
    assert decide("auto", EVERYTHING, warm=True).channel == "console"
    assert decide("console", EVERYTHING, warm=True).channel == "console"
    for other in ("serial", "vsock"):
        with pytest.raises(UsageError, match="warm"):
            decide(other, EVERYTHING, warm=True)
    with pytest.raises(UsageError, match="virtcons_probe"):
        decide("auto", set(), warm=True)


def test_an_unknown_channel_is_refused() -> None:
    with pytest.raises(UsageError, match="auto, console, vsock, serial"):
        decide("uart", EVERYTHING)


def test_the_shipped_kernel_has_every_agent_channel() -> None:
    kernel = shipped_kernel()
    assert kernel is not None, "the checkout's shipped guest kernel is missing"
    assert choose_channel("auto", kernel).channel == "console"
    assert choose_channel("vsock", kernel).channel == "vsock"


# -- the agent image ------------------------------------------------------------------------


def test_the_agent_image_has_the_agent_as_init_and_busybox(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF busybox stand-in")
    extra = tmp_path / "data.bin"
    extra.write_bytes(b"data")
    entries = {e.path: e for e in agent_entries([(extra, "/in/data.bin")], busybox)}
    init = entries["init"]
    assert init.kind is EntryKind.FILE and init.mode & 0o111
    assert Path(str(init.source)) == agent_binary()
    assert Path(str(entries["bin/busybox"].source)) == busybox
    assert Path(str(entries["in/data.bin"].source)) == extra
    assert {"dev", "proc", "sys", "tmp", "mnt", "dev/console"} <= set(entries)
    assert "vmboot/command" not in entries  # the command travels over the channel


def test_applet_links_and_directories_join_the_same_image(tmp_path: Path) -> None:
    """The pytest plugin's image is the exec image plus a link per applet and a home."""
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"bb")
    plain = {e.path: e for e in agent_entries([], busybox)}
    full = {e.path: e for e in agent_entries([], busybox, applets=("ls", "sh", "busybox"),
                                             directories=("/root",))}
    assert set(full) - set(plain) == {"bin/ls", "root"}
    assert full["bin/ls"].kind is EntryKind.SYMLINK and full["bin/ls"].target == "busybox"
    assert full["root"].kind is EntryKind.DIRECTORY
    assert all(full[path] == entry for path, entry in plain.items())


def test_every_agent_image_is_built_by_one_function(busybox: Path) -> None:
    """The warm guest's image is exec's with no files; the plugin's adds applets."""
    from vmboot.execute.image import agent_initramfs
    from vmboot.initramfs.reader import read_cpio
    from vmboot.testing.agent_image import GUEST_HOME, build_agent_initramfs

    exec_paths = {e.path for e in read_cpio(agent_initramfs([], busybox))}
    plugin = {e.path: e for e in read_cpio(build_agent_initramfs(busybox))}
    assert exec_paths < set(plugin)
    assert GUEST_HOME.strip("/") in plugin and "bin/cat" in plugin
    assert plugin["init"].data == agent_binary().read_bytes()


def test_user_files_cannot_replace_the_agent_image_files(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"bb")
    with pytest.raises(InitramfsError, match="reserved: " + ", ".join(AGENT_RESERVED_PATHS)):
        agent_entries([(busybox, "/init")], busybox)


def test_the_agent_runs_the_command_through_busybox_env() -> None:
    assert agent_argv(["ls", "-l"], {"PATH": "/bin"}) == ["/bin/busybox", "env", "--", "ls", "-l"]
    with pytest.raises(InitramfsError, match="contains '='"):
        agent_argv(["A=b"], {})
    with pytest.raises(InitramfsError, match="not usable"):
        agent_argv(["true"], {"1X": "y"})


def test_output_capture_keeps_the_limit_and_passes_everything_on() -> None:
    seen: list[bytes] = []
    capture = OutputCapture(seen.append, limit=5)
    capture(b"abc")
    capture(b"defg")
    assert (bytes(capture.data), capture.dropped, b"".join(seen)) == (b"abcde", 2, b"abcdefg")


# -- the machine's agent vocabulary ---------------------------------------------------------


def test_machine_config_agent_is_one_vocabulary() -> None:
    assert MachineConfig(KERNEL, agent=True).agent == "console"
    assert MachineConfig(KERNEL, agent=False).agent is None
    assert MachineConfig(KERNEL, agent="vsock", vsock=VsockConfig()).agent_transport == "vsock"
    with pytest.raises(UsageError, match="vsock=VsockConfig"):
        MachineConfig(KERNEL, agent="vsock")
    with pytest.raises(UsageError, match="console, vsock"):
        MachineConfig(KERNEL, agent="serial")  # type: ignore[arg-type]


# -- options --------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_exec_disk_has_the_run_syntax_and_parser() -> None:
    spec = "data.img,ro,serial=d0"
    exec_args = parse("exec", "--disk", spec, "--disk", "b.img,throwaway", "--", "true")
    run_args = parse("run", "k", "--disk", spec)
    assert exec_args.disk == [Disk("data.img", read_only=True, serial="d0"),
                              Disk("b.img", throwaway=True)]
    assert exec_args.disk[0] == run_args.disk[0]


def test_exec_refuses_a_bad_disk_while_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse("exec", "--disk", "a.img,ro,throwaway", "--", "true")
    assert stopped.value.code == 2
    assert "read-only and throwaway together" in capsys.readouterr().err


def test_exec_channel_and_verbose_options() -> None:
    args = parse("exec", "--channel", "vsock", "-v", "--", "true")
    assert (args.channel, args.verbose) == ("vsock", True)
    assert parse("exec", "--", "true").channel == "auto"
    assert tuple(CHANNEL_CHOICES) == ("auto", "console", "vsock", "serial")


def test_rootfs_refuses_disks_and_channels() -> None:
    from vmboot.cli.exec import run

    with pytest.raises(UsageError, match="--disk and --channel"):
        run(parse("exec", "--rootfs", "/", "--disk", "a.img", "--", "true"))


def test_serial_channel_refuses_stdin_bytes_before_building_anything() -> None:
    from vmboot.execute.api import exec_command

    kernel = shipped_kernel()
    assert kernel is not None, "the checkout's shipped guest kernel is missing"
    with pytest.raises(BootConfigError, match="stdin: the serial channel"):
        exec_command(["cat"], kernel=kernel, channel="serial", stdin=b"data")


def test_a_kernels_drivers_are_read_once_and_kept_in_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import vmboot.debug.symbol_sources as symbol_sources
    from vmboot.execute.channel import kernel_function_names

    shipped = shipped_kernel()
    if shipped is None:
        pytest.skip("this checkout has no shipped guest kernel")
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(shipped.read_bytes())
    first = kernel_function_names(kernel)
    assert {"virtcons_probe", "vm_cmdline_set", "virtio_vsock_probe"} <= set(first)
    assert len(list((tmp_path / "cache" / "kernel-drivers").iterdir())) == 1

    def no_decoding(source: object) -> object:
        raise AssertionError("kallsyms decoded again")
    monkeypatch.setattr(symbol_sources, "load_kernel_symbols", no_decoding)
    assert kernel_function_names(kernel) == first
    later = kernel.stat().st_mtime_ns + 1_000_000_000
    os.utime(kernel, ns=(later, later))  # another file now: read again
    with pytest.raises(AssertionError, match="decoded again"):
        kernel_function_names(kernel)
