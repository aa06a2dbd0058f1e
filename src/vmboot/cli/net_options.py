"""The network options of ``vmboot run`` and ``vmboot exec``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from vmboot.net import DHCP_CMDLINE

if TYPE_CHECKING:
    from vmboot.net.config import NetConfig


def add_net_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--net", metavar="user|tap=NAME", default=None,
                   help="a virtio-net device (eth0). user: user-mode networking through passt "
                        "(no privileges; the guest gets an address by DHCP and reaches the "
                        "host's loopback services at its gateway address). tap=NAME: an "
                        "existing TAP interface (see: vmboot net tap-create)")
    p.add_argument("--publish", metavar="HOSTPORT:GUESTPORT", action="append", default=[],
                   help="with --net user: forward TCP connections to the host's port to the "
                        "guest's (repeatable)")
    p.add_argument("--mac", metavar="MAC", default=None,
                   help="the guest's MAC address (default: derived from --name, so stable)")
    p.add_argument("--name", metavar="NAME", default="vmboot",
                   help="the VM's name, from which its MAC address is derived (default: vmboot)")
    p.add_argument("--kernel-dhcp", action="store_true",
                   help=f"add {DHCP_CMDLINE} to the kernel command line: the kernel configures "
                        "eth0 by DHCP itself (for initramfs guests without a DHCP client)")


def net_config(args: argparse.Namespace) -> NetConfig | None:
    if args.net is None:
        if args.publish or args.kernel_dhcp or args.mac:
            from vmboot.errors import UsageError

            raise UsageError("--publish, --mac and --kernel-dhcp need --net user or --net "
                             "tap=NAME")
        return None
    from vmboot.net.config import NetConfig

    return NetConfig.parse(args.net, args.publish, args.mac, args.name, args.kernel_dhcp)
