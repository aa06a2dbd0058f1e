"""Argument types shared by the verbs (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from vmboot.errors import UsageError

if TYPE_CHECKING:
    from vmboot.devices.virtio.block import Disk
    from vmboot.devices.virtio.share import Share
    from vmboot.report.kinds import Verdict


def seconds(text: str) -> float:
    """A positive, finite number of seconds (``--timeout``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds (not inf or nan)")
    return value


def cpu_count(text: str) -> int:
    """A number of vCPUs for ``--cpus``: an integer in 1..MAX_CPUS."""
    from vmboot.x86.mptable import MAX_CPUS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of vCPUs; give an integer in 1..{MAX_CPUS}") from None
    if not 1 <= value <= MAX_CPUS:
        raise argparse.ArgumentTypeError(f"{text!r} vCPUs is outside 1..{MAX_CPUS}")
    return value


def add_size_arguments(p: argparse.ArgumentParser) -> None:
    """``-m/--memory`` and ``--cpus``, as the verbs that boot a guest take them."""
    from vmboot.config import DEFAULT_MEMORY, MAX_CPUS, MIN_CPUS

    p.add_argument("-m", "--memory", metavar="SIZE", default=DEFAULT_MEMORY,
                   help=f"guest RAM: 64M, 1G, 512MiB, or bytes (default: {DEFAULT_MEMORY})")
    p.add_argument("--cpus", metavar="N", type=cpu_count, default=MIN_CPUS,
                   help=f"vCPUs ({MIN_CPUS}-{MAX_CPUS}; default: {MIN_CPUS}): one host thread "
                        "each, announced to the guest by an MP table; the kernel starts them "
                        "with INIT/SIPI")


def sample_rate(text: str) -> float:
    """A sampling rate in Hz for ``--profile-hz``: positive, finite, at most 10 kHz."""
    from vmboot.vmm.profile import MAX_HZ

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of samples a second") from None
    if not (0 < value <= MAX_HZ):
        raise argparse.ArgumentTypeError(f"{text!r} Hz is outside 0 < Hz <= {MAX_HZ}")
    return value


def fail_on(text: str) -> frozenset[Verdict]:
    """``--fail-on warning,oops``: verdicts that fail a run even when it succeeded."""
    from vmboot.report.verdict import parse_fail_on

    try:
        return parse_fail_on(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--fail-on: ")) from None


FAIL_ON_HELP = ("exit non-zero when the kernel reported one of these verdicts, even if the run "
                "succeeded (comma-separated: panic, oops, bug, warning, soft-lockup, hung-task, "
                "rcu-stall, ...; see `vmboot report --help`)")


def disk_argument(text: str) -> Disk:
    """``--disk PATH[,ro][,throwaway][,serial=ID]`` (:meth:`Disk.parse`)."""
    from vmboot.devices.virtio.block import Disk
    from vmboot.errors import BootConfigError

    try:
        return Disk.parse(text)
    except BootConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_disk_argument(parser: argparse.ArgumentParser) -> None:
    """``--disk``, repeatable, the same for every verb that gives the guest disks."""
    parser.add_argument("--disk", metavar="PATH[,ro][,throwaway][,serial=ID]", action="append",
                        default=[], type=disk_argument,
                        help="a raw disk image as a virtio-blk disk (repeatable: vda, vdb, ...). "
                             "ro: read-only; throwaway: writes go to a private overlay and the "
                             "file is never modified; serial=ID: the disk's serial (20 bytes max)")


def share_argument(text: str) -> Share:
    """``--share HOST_DIR[:TAG][,ro]`` (:func:`~vmboot.devices.virtio.share.parse_share`)."""
    from vmboot.devices.virtio.share import parse_share

    try:
        return parse_share(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
