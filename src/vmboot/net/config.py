"""What network a machine gets: ``--net user`` (passt) or ``--net tap=NAME``, the ports to
publish, and the MAC address (given, or derived from the VM's name so it is stable)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from vmboot.net import DHCP_CMDLINE as DHCP_CMDLINE
from vmboot.net.backend import NetBackend, NetBackendError
from vmboot.net.passt import PortForward

NetMode = Literal["user", "tap"]
NET_MODES: tuple[str, ...] = ("user", "tap")
DEFAULT_VM_NAME = "vmboot"


@dataclass(frozen=True)
class NetConfig:
    mode: NetMode
    tap: str | None = None
    publish: tuple[PortForward, ...] = ()
    mac: str | None = None
    """``aa:bb:cc:dd:ee:ff``; None: derived from ``vm_name``."""
    vm_name: str = DEFAULT_VM_NAME
    kernel_dhcp: bool = False
    """Add ``ip=dhcp`` to the kernel command line."""

    def __post_init__(self) -> None:
        if self.mode not in NET_MODES:
            raise NetBackendError(f"--net: {self.mode!r} is not one of user, tap=NAME")
        if self.mode == "tap" and not self.tap:
            raise NetBackendError("--net tap=NAME: the TAP interface's name is missing")
        if self.mode == "tap" and self.publish:
            raise NetBackendError("--publish: only with --net user (with a TAP device the "
                                  "guest is reached at its own address)")

    @classmethod
    def parse(cls, text: str, publish: Sequence[str] = (), mac: str | None = None,
              vm_name: str = DEFAULT_VM_NAME, kernel_dhcp: bool = False) -> NetConfig:
        """``user`` or ``tap=NAME``."""
        kind, _, name = text.partition("=")
        if kind == "user" and not name:
            mode: NetMode = "user"
        elif kind == "tap":
            mode = "tap"
        else:
            raise NetBackendError(f"--net: {text!r} is neither 'user' nor 'tap=NAME'")
        return cls(mode, name or None, tuple(PortForward.parse(p) for p in publish), mac,
                   vm_name, kernel_dhcp)

    def open_backend(self) -> NetBackend:
        if self.mode == "tap":
            from vmboot.net.tap import TapBackend

            assert self.tap is not None
            return TapBackend(self.tap)
        from vmboot.net.passt import PasstBackend

        return PasstBackend(self.publish)

