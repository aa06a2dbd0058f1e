"""KVM's own per-vCPU counters (``exits``, ``io_exits``, ...) of any VMM process we started.

KVM's binary statistics (``KVM_GET_STATS_FD``, Linux 5.14+; Documentation/virt/kvm/api.rst,
"KVM_GET_STATS_FD") are read through a vCPU fd. Another process's vCPU fd is found by its
``/proc/PID/fd`` link (``anon_inode:kvm-vcpu:N``) and copied here with ``pidfd_getfd(2)``
(needs ptrace rights over it: our own child, or root); the statistics fd ioctl'd from it
keeps the VM's counters readable even after the VMM has exited. The same code reads vmboot's
and QEMU's counters, so both are counted by KVM the same way (the exits KVM handles itself,
such as ioeventfd writes, included).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

KVM_GET_STATS_FD = 0xAECE
"""_IO(KVMIO=0xAE, 0xce)."""
SYS_PIDFD_GETFD = 438
HEADER = struct.Struct("<IIIIII")
"""struct kvm_stats_header: flags, name_size, num_desc, id_offset, desc_offset, data_offset."""
DESC = struct.Struct("<IhHII")
"""struct kvm_stats_desc: flags, exponent, size, offset, bucket_size; then name[name_size]."""
VCPU_LINK = "anon_inode:kvm-vcpu:"

_libc = ctypes.CDLL(None, use_errno=True)


def _pidfd_getfd(pid: int, fd: int) -> int:
    pidfd = os.pidfd_open(pid)
    try:
        got = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd(pid {pid}, fd {fd}): {os.strerror(err)}")
        return int(got)
    finally:
        os.close(pidfd)


@dataclass
class VcpuStats:
    """The statistics fd of one vCPU of another process."""

    fd: int
    offsets: dict[str, tuple[int, int]]
    """Counter name -> (byte offset in the fd, number of u64 values)."""

    def read(self) -> dict[str, int]:
        out = {}
        for name, (offset, size) in self.offsets.items():
            if size == 1:
                out[name] = struct.unpack("<Q", os.pread(self.fd, 8, offset))[0]
        return out

    def close(self) -> None:
        os.close(self.fd)


def _open_stats(vcpu_fd: int) -> VcpuStats:
    fd = fcntl.ioctl(vcpu_fd, KVM_GET_STATS_FD)
    _flags, name_size, count, _id_offset, desc_offset, data_offset = HEADER.unpack(
        os.pread(fd, HEADER.size, 0))
    step = DESC.size + name_size
    raw = os.pread(fd, step * count, desc_offset)
    offsets = {}
    for i in range(count):
        _f, _exp, size, offset, _bucket = DESC.unpack_from(raw, i * step)
        name = raw[i * step + DESC.size:(i + 1) * step].split(b"\0", 1)[0].decode()
        offsets[name] = (data_offset + offset, size)
    return VcpuStats(fd, offsets)


def vcpu_stats(pid: int, vcpu: int = 0, timeout: float = 60.0) -> VcpuStats:
    """The statistics of vCPU ``vcpu`` of process ``pid``, once that process has made it."""
    deadline = time.monotonic() + timeout
    link = f"{VCPU_LINK}{vcpu}"
    while True:
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(entry)
            except OSError:
                continue
            if target == link:
                mine = _pidfd_getfd(pid, int(entry.name))
                try:
                    return _open_stats(mine)
                finally:
                    os.close(mine)
        if time.monotonic() > deadline:
            raise SystemExit(f"process {pid} made no KVM vCPU {vcpu} within {timeout:g} s")
        time.sleep(0.01)
