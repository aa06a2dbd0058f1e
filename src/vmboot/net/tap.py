"""A TAP backend: an existing TAP interface opened with ``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR``.

vmboot never creates the interface (that takes ``CAP_NET_ADMIN``; ``vmboot net tap-create``
prints or runs the ``ip`` commands). Each read returns one frame with its 12-byte
virtio_net_hdr_v1 in front (``TUNSETVNETHDRSZ``), and writes take the guest's header and
frame as they are: checksum and segmentation offloads pass through (``TUNSETOFFLOAD``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Sequence

from vmboot.devices.virtio import spec
from vmboot.net.backend import Chunk, FrameDropped, NetBackendError, few_parts

TUN_DEVICE = "/dev/net/tun"
IFNAMSIZ = 16
# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
_IFREQ = struct.Struct(f"{IFNAMSIZ}sH22x")
_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
READ_SIZE = spec.NET_HDR_SIZE + spec.NET_MAX_GSO_FRAME

OFFLOAD_FEATURES = ((1 << spec.NET_F_CSUM) | (1 << spec.NET_F_GUEST_CSUM)
                    | (1 << spec.NET_F_HOST_TSO4) | (1 << spec.NET_F_HOST_TSO6)
                    | (1 << spec.NET_F_GUEST_TSO4) | (1 << spec.NET_F_GUEST_TSO6))
"""What a vnet-header TAP carries: checksum offload and TSO both ways."""
_GUEST_OFFLOADS = ((spec.NET_F_GUEST_CSUM, TUN_F_CSUM), (spec.NET_F_GUEST_TSO4, TUN_F_TSO4),
                   (spec.NET_F_GUEST_TSO6, TUN_F_TSO6))


def check_interface(name: str) -> None:
    """A :class:`NetBackendError` unless interface ``name`` exists in this network namespace
    (TUNSETIFF would create a missing one; vmboot only opens what the user made)."""
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name:
        raise NetBackendError(f"--net tap={name}: {name!r} is not an interface name "
                              f"(1 to {IFNAMSIZ - 1} bytes, no '/')")
    try:
        socket.if_nametoindex(name)
    except OSError:
        raise NetBackendError(f"--net tap={name}: there is no interface {name!r} (in this "
                              f"network namespace); create it first: vmboot net tap-create "
                              f"{name}") from None


def tun_ioctl(fd: int, request: int, arg: int | bytes, *, name: str, what: str,
              hints: dict[int, str] | None = None) -> int | bytes:
    """The one way this module issues an ioctl on ``/dev/net/tun``: a failure is a
    :class:`NetBackendError` naming the interface, the request and the errno, with the hint
    ``hints`` gives for that errno."""
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        hint = (hints or {}).get(e.errno or 0, "")
        raise NetBackendError(f"--net tap={name}: {what} failed: {e.strerror}"
                              f"{'; ' + hint if hint else ''}") from None


class TapBackend:
    kind = "tap"
    vnet_hdr = True
    offload_features = OFFLOAD_FEATURES

    def __init__(self, name: str, mtu: int = spec.NET_DEFAULT_MTU) -> None:
        check_interface(name)
        self.name = name
        self.mtu = mtu
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise NetBackendError(f"--net tap={name}: cannot open {TUN_DEVICE}: "
                                  f"{e.strerror}") from None
        self._fd = fd
        try:
            self._attach(name)
        except BaseException:
            os.close(fd)
            self._fd = -1
            raise

    def _attach(self, name: str) -> None:
        features = struct.unpack("I", self._ioctl(TUNGETFEATURES, b"\0" * 4, "TUNGETFEATURES"))[0]
        if not features & IFF_VNET_HDR:
            raise NetBackendError(f"--net tap={name}: this kernel's TUN driver lacks "
                                  f"IFF_VNET_HDR (features {features:#x}), which virtio-net needs")
        self._ioctl(TUNSETIFF, _IFREQ.pack(name.encode(), _FLAGS), "TUNSETIFF", hints={
            errno.EBUSY: "it is busy or its owner is another user",
            errno.EPERM: "its owner is another user",
            errno.EINVAL: "it is not a TAP device (a TUN, layer 3, device or another kind); "
                          "make one: vmboot net tap-create NAME"})
        got = _IFREQ.unpack(self._ioctl(TUNGETIFF, _IFREQ.pack(b"", 0), "TUNGETIFF"))[1]
        if not got & IFF_VNET_HDR or not got & IFF_TAP:
            raise NetBackendError(f"--net tap={name}: the interface took flags {got:#x}, "
                                  f"without IFF_TAP|IFF_VNET_HDR ({IFF_TAP | IFF_VNET_HDR:#x}); "
                                  f"recreate it: vmboot net tap-create {name}")
        self._ioctl(TUNSETVNETHDRSZ, struct.pack("i", spec.NET_HDR_SIZE), "TUNSETVNETHDRSZ")
        self.set_offloads(0)

    def _ioctl(self, request: int, arg: bytes, what: str,
               hints: dict[int, str] | None = None) -> bytes:
        """An ioctl with a buffer argument: the buffer the kernel gives back."""
        result = tun_ioctl(self._fd, request, arg, name=self.name, what=what, hints=hints)
        assert isinstance(result, bytes)  # fcntl.ioctl returns a bytes argument as bytes
        return result

    def fileno(self) -> int:
        return self._fd

    def set_offloads(self, features: int) -> None:
        flags = 0
        for bit, tun_flag in _GUEST_OFFLOADS:
            if features >> bit & 1:
                flags |= tun_flag
        if flags & (TUN_F_TSO4 | TUN_F_TSO6) and not flags & TUN_F_CSUM:
            flags &= TUN_F_CSUM  # the kernel refuses TSO without checksum offload
        tun_ioctl(self._fd, TUNSETOFFLOAD, flags, name=self.name, what=f"TUNSETOFFLOAD {flags:#x}")

    def recv(self) -> bytes | None:
        try:
            return os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return None

    def send(self, parts: Sequence[Chunk]) -> bool:
        """One ``writev``: a TAP takes a frame whole or not at all (a full queue drops it)."""
        try:
            os.writev(self._fd, few_parts(parts))
        except (BlockingIOError, OSError) as e:
            if isinstance(e, BlockingIOError) or e.errno in (errno.EIO, errno.ENOBUFS,
                                                              errno.EAGAIN):
                raise FrameDropped(f"tap {self.name}: {e.strerror}") from None
            raise
        return True

    def flush(self) -> bool:
        """Nothing is ever kept back."""
        return True

    def describe(self) -> dict[str, object]:
        return {"backend": "tap", "tap": self.name}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

