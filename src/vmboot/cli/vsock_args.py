"""``--vsock PATH``, ``--vsock-cid N`` and ``--vsock-connect-timeout SECONDS``, shared by
``vmboot run`` and ``vmboot exec``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from vmboot.cli.arguments import seconds
from vmboot.devices.virtio.vsock_defaults import CONNECT_TIMEOUT, DEFAULT_GUEST_CID
from vmboot.errors import UsageError

if TYPE_CHECKING:
    from vmboot.devices.virtio.vsock_host import VsockConfig


def add_vsock_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vsock", metavar="PATH", default=None,
                   help="a virtio-vsock device with Firecracker's hybrid host side: a guest "
                        "connection to host port P arrives on the UNIX socket PATH_P; a host "
                        "program connects to PATH, writes 'CONNECT <port>\\n' and reads "
                        "'OK <hostport>\\n'")
    p.add_argument("--vsock-cid", metavar="N", type=int, default=None,
                   help=f"the guest's vsock CID (3 or more; default {DEFAULT_GUEST_CID}; needs --vsock)")
    p.add_argument("--vsock-connect-timeout", metavar="SECONDS", type=seconds, default=None,
                   help="how long the guest has to accept a 'CONNECT <port>' before the stream "
                        f"is closed (default {CONNECT_TIMEOUT:g}; needs --vsock)")


def vsock_config(args: argparse.Namespace) -> VsockConfig | None:
    """The vsock device the arguments ask for (checked), or None."""
    if args.vsock is None:
        for name, value in (("--vsock-cid", args.vsock_cid),
                            ("--vsock-connect-timeout", args.vsock_connect_timeout)):
            if value is not None:
                raise UsageError(f"{name}: no --vsock PATH; give the hybrid socket path too")
        return None
    from vmboot.devices.virtio.vsock_host import VsockConfig

    config = VsockConfig(DEFAULT_GUEST_CID if args.vsock_cid is None else args.vsock_cid, args.vsock,
                         CONNECT_TIMEOUT if args.vsock_connect_timeout is None
                         else args.vsock_connect_timeout)
    config.validate()
    return config
