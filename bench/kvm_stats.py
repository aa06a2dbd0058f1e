"""KVM's own statistics of vCPU 0 (``exits``, ``mmio_exits``, ``halt_exits``, ...), read the
same way for vmboot and for QEMU.

Both come from KVM's binary statistics (``KVM_GET_STATS_FD``, Linux 5.14+;
Documentation/virt/kvm/api.rst): they count every exit, those KVM handles itself
(ioeventfd writes, HLT, interrupt windows) as well as those it passes to the VMM.

- vmboot: :class:`OwnVcpuStats`, read inside the vmboot process (``bench/exec_tap.py``
  runs ``vmboot exec`` with it), on its own vCPU fd found by its ``/proc/self/fd`` link;
- QEMU: its QMP command ``query-stats`` (QEMU 7.1+), which reads the same statistics fd.

Neither can be read from outside the VMM here: KVM answers a vCPU ioctl from any process
but the VM's own with EIO (so ``pidfd_getfd`` of the vCPU fd gives nothing), and reading
debugfs's ``/sys/kernel/debug/kvm/PID-FD/exits`` fails with EPERM on this host even as root
with debugfs mounted.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

KVM_GET_STATS_FD = 0xAECE
"""_IO(KVMIO=0xAE, 0xce)."""
HEADER = struct.Struct("<IIIIII")
"""struct kvm_stats_header: flags, name_size, num_desc, id_offset, desc_offset, data_offset."""
DESC = struct.Struct("<IhHII")
"""struct kvm_stats_desc: flags, exponent, size, offset, bucket_size; then name[name_size]."""
VCPU_LINK = "anon_inode:kvm-vcpu:"
EXITS = "exits"
MMIO_EXITS = "mmio_exits"
IO_EXITS = "io_exits"


def _stat_offsets(fd: int) -> dict[str, int]:
    _flags, name_size, count, _id, desc_offset, data_offset = HEADER.unpack(
        os.pread(fd, HEADER.size, 0))
    step = DESC.size + name_size
    raw = os.pread(fd, step * count, desc_offset)
    offsets = {}
    for i in range(count):
        _f, _exp, size, offset, _bucket = DESC.unpack_from(raw, i * step)
        name = raw[i * step + DESC.size:(i + 1) * step].split(b"\0", 1)[0].decode()
        if size == 1:
            offsets[name] = data_offset + offset
    return offsets


class OwnVcpuStats:
    """The statistics fd of vCPU ``index`` of this process's VM.

    Open it with :meth:`attach` as soon as the vCPU exists: ``KVM_GET_STATS_FD`` is a vCPU
    ioctl, which waits for the vCPU's mutex, and a vCPU inside ``KVM_RUN`` holds that until
    its next exit to userspace. Opened later (on the first :meth:`read_all`, which looks the
    vCPU fd up in ``/proc/self/fd``), the first reading waits that long and is taken late: a
    guest busy in its own code for a second makes it a second late. Reading the statistics
    fd itself (``pread``) never waits.
    """

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self._fd: int | None = None
        self._offsets: dict[str, int] = {}

    def attach(self, vcpu_fd: int) -> None:
        """Open the statistics fd of ``vcpu_fd`` now (before its first ``KVM_RUN``)."""
        if self._fd is None:
            self._fd = int(fcntl.ioctl(vcpu_fd, KVM_GET_STATS_FD))
            self._offsets = _stat_offsets(self._fd)

    def read(self, name: str = EXITS) -> int:
        return self.read_all()[name]

    def read_all(self) -> dict[str, int]:
        """Every single-value statistic this host's KVM exposes, in one ``pread``."""
        if self._fd is None:
            self._fd = self._open()
            self._offsets = _stat_offsets(self._fd)
        low, high = min(self._offsets.values()), max(self._offsets.values()) + 8
        raw = os.pread(self._fd, high - low, low)
        return {name: int(struct.unpack_from("<Q", raw, at - low)[0])
                for name, at in self._offsets.items()}

    def _open(self) -> int:
        link = f"{VCPU_LINK}{self.index}"
        for entry in Path("/proc/self/fd").iterdir():
            try:
                if os.readlink(entry) == link:
                    return int(fcntl.ioctl(int(entry.name), KVM_GET_STATS_FD))
            except OSError:
                continue
        raise RuntimeError(f"this process has no KVM vCPU {self.index} (yet)")


class QmpStats:
    """QEMU's ``query-stats`` over its QMP socket (``-qmp unix:PATH,server=on,wait=off``)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.stream = self.sock.makefile("rwb")
        self._reply()  # the greeting
        self._command("qmp_capabilities")

    def _reply(self) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(self.stream.readline())
            if "QMP" in message or "return" in message or "error" in message:
                return message

    def _command(self, name: str, **arguments: object) -> Any:
        message: dict[str, object] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self.stream.write(json.dumps(message).encode() + b"\n")
        self.stream.flush()
        reply = self._reply()
        if "error" in reply:
            raise RuntimeError(f"QMP {name}: {reply['error']}")
        return reply["return"]

    def vcpu_exits(self, index: int = 0) -> int:
        return self.vcpu_stats(index)[EXITS]

    def vcpu_stats(self, index: int = 0) -> dict[str, int]:
        """Every single-value KVM statistic of vCPU ``index`` (histograms left out)."""
        got = self._command("query-stats", target="vcpu", providers=[{"provider": "kvm"}])
        per_vcpu = sorted(got, key=lambda r: r["qom-path"])
        return {s["name"]: int(s["value"]) for s in per_vcpu[index]["stats"]
                if isinstance(s["value"], int)}

    def close(self) -> None:
        self.stream.close()
        self.sock.close()
