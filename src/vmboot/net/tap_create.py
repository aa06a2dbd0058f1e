"""The ``ip`` commands that make a TAP interface vmboot can open (``--net tap=NAME``):
a persistent TAP device with the vnet header, owned by a user, with an address, up."""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import subprocess

from vmboot.net.backend import NetBackendError
from vmboot.net.tap import IFNAMSIZ

DEFAULT_ADDRESS = "172.30.0.1/24"
"""The host's address on the TAP link when none is given (the guest takes another in it)."""


def tap_create_commands(name: str, user: str | None = None,
                        address: str | None = DEFAULT_ADDRESS) -> list[list[str]]:
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name.strip() != name:
        raise NetBackendError(f"tap-create: {name!r} is not an interface name "
                              f"(1 to {IFNAMSIZ - 1} bytes, no '/' or spaces)")
    add = ["ip", "tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"]
    if user:
        add += ["user", user]
    commands = [add]
    if address:
        try:
            ipaddress.ip_interface(address)
        except ValueError:
            raise NetBackendError(f"tap-create --address: {address!r} is not an address with "
                                  "a prefix length (e.g. 172.30.0.1/24)") from None
        commands.append(["ip", "addr", "add", address, "dev", name])
    commands.append(["ip", "link", "set", name, "up"])
    return commands


def render(commands: list[list[str]]) -> str:
    return "".join(shlex.join(c) + "\n" for c in commands)


def run_commands(commands: list[list[str]]) -> None:
    """Run them in order; the first failure stops with ip's own message."""
    if shutil.which("ip") is None:
        raise NetBackendError("tap-create --run: the ip command is missing (package iproute2)")
    for c in commands:
        done = subprocess.run(c, capture_output=True, text=True, check=False)
        if done.returncode:
            raise NetBackendError(f"tap-create: {shlex.join(c)} failed "
                                  f"({done.returncode}): {done.stderr.strip()} (creating a TAP "
                                  "device needs CAP_NET_ADMIN)")
