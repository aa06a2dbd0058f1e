"""KVM's own ``exits`` counter of vCPU 0, read the same way for vmboot and for QEMU.

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
    """The statistics fd of vCPU ``index`` of this process's VM (opened on first use)."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self._fd: int | None = None
        self._offsets: dict[str, int] = {}

    def read(self, name: str = EXITS) -> int:
        if self._fd is None:
            self._fd = self._open()
            self._offsets = _stat_offsets(self._fd)
        value: int = struct.unpack("<Q", os.pread(self._fd, 8, self._offsets[name]))[0]
        return value

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
        got = self._command("query-stats", target="vcpu",
                            providers=[{"provider": "kvm", "names": [EXITS]}])
        per_vcpu = sorted(got, key=lambda r: r["qom-path"])
        return int(next(s["value"] for s in per_vcpu[index]["stats"] if s["name"] == EXITS))

    def close(self) -> None:
        self.stream.close()
        self.sock.close()
