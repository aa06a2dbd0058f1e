"""What this test process holds, read from /proc/self: for tests that prove something is
released (file descriptors, memory, mappings) after many VMs or requests."""

from __future__ import annotations

import os
from pathlib import Path


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def mapping_count() -> int:
    return len(Path("/proc/self/maps").read_text().splitlines())
