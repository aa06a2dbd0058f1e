"""Argument types shared by the verbs (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
import math


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
