"""What a virtio-net backend is: a file descriptor the I/O thread watches, frames in and out.

A backend either carries the virtio-net header with each frame (:attr:`NetBackend.vnet_hdr`,
a TAP device opened with ``IFF_VNET_HDR``: checksum and segmentation offloads pass through)
or plain Ethernet frames (passt). :meth:`NetBackend.recv` returns one frame or None when
none is ready; a backend that has gone away (passt killed, the connection reset) raises
:class:`NetBackendDown`.

A backend whose peer's buffer is full keeps the part of a frame it could not send
(:meth:`NetBackend.send` returns False); the device then takes no more frames from the
guest until :meth:`NetBackend.flush` has sent it, and watches the backend's fd for
writability meanwhile: the guest is held back, the I/O thread never waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vmboot.errors import BootConfigError, VmbootError

Chunk = bytes | bytearray | memoryview
MAX_PARTS = 64
"""Parts of a frame handed to one ``writev``/``sendmsg`` as they are; a frame in more is
joined first (the kernel takes at most IOV_MAX = 1024 buffers, and a guest's indirect
chain may hold more)."""


def few_parts(parts: Sequence[Chunk]) -> Sequence[Chunk]:
    """``parts``, or one buffer joining them when there are :data:`MAX_PARTS` or more."""
    return parts if len(parts) < MAX_PARTS else [b"".join(parts)]


class NetBackendError(BootConfigError):
    """A network backend cannot be set up (before the guest boots)."""


class NetBackendDown(VmbootError):
    """A running backend went away; the guest's link goes down."""


class FrameDropped(VmbootError):
    """The backend could not take one frame (an interface that is down, a full queue)."""


class NetBackend(Protocol):
    kind: str
    """"tap" or "user"."""
    vnet_hdr: bool
    """Frames carry a virtio_net_hdr_v1 (12 bytes) in front in both directions."""
    offload_features: int
    """The virtio-net offload feature bits the backend can carry."""
    mtu: int
    """The MTU the device announces (VIRTIO_NET_F_MTU)."""

    def fileno(self) -> int: ...

    def set_offloads(self, features: int) -> None:
        """The guest accepted ``features``: let the backend send what the guest can take."""

    def recv(self) -> bytes | None: ...

    def send(self, parts: Sequence[Chunk]) -> bool:
        """Send one frame made of ``parts`` in order (with the header when :attr:`vnet_hdr`):
        True when it went whole, False when the backend kept (part of) it for :meth:`flush`."""

    def flush(self) -> bool:
        """Send what :meth:`send` kept; True when nothing is left (the backend takes frames)."""

    def describe(self) -> dict[str, object]: ...

    def close(self) -> None: ...
