"""The network backends' set-up, each check run in a private network namespace this test
makes (``unshare --net``), so nothing can leave the machine: a missing TAP device and a TUN
device are refused before boot with a clear message, a real TAP opens with the vnet header,
passt starts (as nobody when root) and stops, a missing passt names its package, and the
``ip`` commands of ``vmboot net tap-create`` work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import require, require_tool
from vmboot.net.backend import NetBackendError
from vmboot.net.config import NetConfig
from vmboot.net.passt import PasstBackend, PortForward
from vmboot.net.tap_create import tap_create_commands

SRC = Path(__file__).resolve().parent.parent / "src"
@pytest.fixture
def netns_tools() -> None:
    """What a private network namespace takes: root, unshare and ip (skip, or fail under CI)."""
    require(os.geteuid() == 0, "root", "unshare --net needs root")
    require_tool("unshare", "util-linux")
    require_tool("ip", "iproute2")


needs_netns = pytest.mark.usefixtures("netns_tools")


NAMESPACE_SETUP = """\
ip link set lo up
ip link add vmbt0 type veth peer name vmbt1
ip addr add 10.0.2.15/24 dev vmbt0
ip addr add 10.0.2.2/24 dev vmbt1
ip link set vmbt0 up
ip link set vmbt1 up
ip route add default via 10.0.2.2 dev vmbt0
"""
"""Loopback and a veth pair whose both ends stay in the namespace, as its default route
(passt wants a routable interface): whatever address a packet goes to, it stays inside."""


def in_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (shell) in a new network namespace set up by :data:`NAMESPACE_SETUP`."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(["unshare", "--net", "sh", "-ec", NAMESPACE_SETUP + script],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def run_scenario(script: str, *args: object, timeout: float, before: str = "") -> dict[str, Any]:
    """Run the test scenario ``script`` (a Python file beside this one, started with
    ``args``) in a new network namespace set up by :data:`NAMESPACE_SETUP` (then the shell
    commands ``before``); its last line of output is a JSON object, returned."""
    path = Path(__file__).with_name(script)
    env = {**os.environ, "PYTHONPATH": f"{SRC}:{path.parent}"}
    command = " ".join(str(a) for a in (sys.executable, path, *args))
    done = subprocess.run(["unshare", "--net", "sh", "-ec", NAMESPACE_SETUP + before
                           + f"exec {command}\n"],
                          capture_output=True, text=True, env=env, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def python(code: str) -> str:
    return f"{sys.executable} -c {_quote(textwrap.dedent(code))}\n"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@needs_netns
def test_a_tap_device_that_does_not_exist_is_refused_before_boot() -> None:
    done = in_namespace(python("""
        from vmboot.net.tap import TapBackend
        from vmboot.net.backend import NetBackendError
        try:
            TapBackend("vmbt-none")
        except NetBackendError as e:
            print("ERROR", e)
    """) + "ip link show vmbt-none 2>/dev/null && echo CREATED || true\n")
    assert "ERROR --net tap=vmbt-none: there is no interface 'vmbt-none'" in done.stdout, done
    assert "vmboot net tap-create vmbt-none" in done.stdout
    assert "CREATED" not in done.stdout  # opening never creates it


@needs_netns
def test_a_tun_device_is_refused_and_a_tap_opens_with_the_vnet_header() -> None:
    done = in_namespace("ip tuntap add dev vmbt-tun mode tun\n"
                        "ip tuntap add dev vmbt-tap mode tap vnet_hdr\n" + python("""
        import os
        from vmboot.net.tap import TapBackend
        from vmboot.net.backend import NetBackendError
        try:
            TapBackend("vmbt-tun")
        except NetBackendError as e:
            print("ERROR", e)
        tap = TapBackend("vmbt-tap")
        print("OPEN", tap.fileno() >= 0)
        print("RECV", tap.recv())
        os.system("ip link set vmbt-tap up")
        frame = bytes(12) + bytes([255] * 6 + [2, 0, 0, 0, 0, 1, 8, 0]) + bytes(1074)
        print("SENT", tap.send([frame[i:i + 1] for i in range(len(frame))]))  # 1100 parts
        tap.close()
    """))
    assert "ERROR --net tap=vmbt-tun: TUNSETIFF failed" in done.stdout, done
    assert "it is not a TAP device" in done.stdout
    assert "OPEN True" in done.stdout
    assert "RECV None" in done.stdout  # nothing queued: recv does not block
    assert "SENT True" in done.stdout, done  # more parts than writev takes: joined first


@needs_netns
def test_tap_create_commands_make_an_interface_vmboot_opens() -> None:
    script = "".join(" ".join(c) + "\n" for c in tap_create_commands("vmbt-made"))
    done = in_namespace(script + python("""
        from vmboot.net.tap import TapBackend
        TapBackend("vmbt-made").close()
        print("OK")
    """))
    assert "OK" in done.stdout, done


def test_tap_create_refuses_bad_names_and_addresses() -> None:
    with pytest.raises(NetBackendError, match="not an interface name"):
        tap_create_commands("a-name-that-is-far-too-long")
    with pytest.raises(NetBackendError, match="not an address"):
        tap_create_commands("tap0", address="10.0.0.300/24")
    assert tap_create_commands("tap0", user="1000", address=None) == [
        ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr", "user", "1000"],
        ["ip", "link", "set", "tap0", "up"]]


@needs_netns
def test_passt_starts_and_stops_with_the_backend() -> None:
    require_tool("passt", "passt")
    done = in_namespace(python("""
        import os
        from vmboot.net.passt import PasstBackend, PortForward
        b = PasstBackend([PortForward(18080, 80)])
        pid = b.pid
        print("UP", b.fileno() >= 0, b.recv())
        print("OWNER", os.stat(f"/proc/{pid}").st_uid)
        b.close()
        print("GONE", not os.path.exists(f"/proc/{pid}"), not b.socket_path.parent.exists())
    """))
    assert "UP True None" in done.stdout, done
    assert "OWNER 65534" in done.stdout
    assert "GONE True True" in done.stdout


def test_a_missing_passt_names_its_package(tmp_path: Path) -> None:
    with pytest.raises(NetBackendError, match="package 'passt'"):
        PasstBackend(passt=None) if shutil.which("passt") is None else _no_passt(tmp_path)


def _no_passt(tmp_path: Path) -> None:
    old = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path)
    try:
        PasstBackend()
    finally:
        os.environ["PATH"] = old


def test_net_option_parsing() -> None:
    assert NetConfig.parse("user", ["8080:80"]).publish == (PortForward(8080, 80),)
    assert NetConfig.parse("tap=tap0").tap == "tap0"
    for bad in ("usr", "tap", "user=x"):
        with pytest.raises(NetBackendError, match="--net"):
            NetConfig.parse(bad)
    with pytest.raises(NetBackendError, match="--publish"):
        NetConfig.parse("user", ["80:99999"])
    with pytest.raises(NetBackendError, match="only with --net user"):
        NetConfig.parse("tap=tap0", ["80:80"])
