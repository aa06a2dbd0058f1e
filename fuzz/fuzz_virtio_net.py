"""virtio-net under a hostile driver (see fuzz/virtio_ops.py) and a backend sending frames
of every size (shorter than a header, ordinary, past the MTU, past any limit): nothing
escapes, nothing over the limit reaches the backend, and every frame from the backend is
either delivered, dropped and counted, or held for buffers."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

from collections import deque
from collections.abc import Sequence

from fuzz.harness import Target, atheris_main
from fuzz.virtio_ops import request_seed, run_ops
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.devices.virtio.net import NetDevice
from vmboot.hv import MemoryVM
from vmboot.net.backend import Chunk

MTU = 1500
INBOUND = (4, 60, 1514, 1600, 9000, 70000)
"""Sizes of the frames the backend offers, in turn."""


class _Backend:
    kind = "fuzz"
    vnet_hdr = False
    offload_features = 0
    mtu = MTU

    def __init__(self) -> None:
        self.inbound: deque[bytes] = deque(bytes([i]) * n for i, n in enumerate(INBOUND * 4))
        self.sent: list[int] = []

    def fileno(self) -> int:
        return -1

    def set_offloads(self, features: int) -> None:
        pass

    def recv(self) -> bytes | None:
        return self.inbound.popleft() if self.inbound else None

    def send(self, parts: Sequence[Chunk]) -> bool:
        self.sent.append(sum(len(p) for p in parts))
        return True

    def flush(self) -> bool:
        return True

    def describe(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        pass


_backend = _Backend()


def _make() -> NetDevice:
    global _backend
    _backend = _Backend()
    return NetDevice(_backend, bytes.fromhex("020000000001"))


def _check(device: VirtioDevice, vm: MemoryVM) -> None:
    assert isinstance(device, NetDevice)
    limit = MTU + spec.ETH_HEADER_SIZE + spec.ETH_VLAN_TAG_SIZE
    assert all(n <= limit for n in _backend.sent), _backend.sent
    c = device.counters
    offered = len(INBOUND) * 4 - len(_backend.inbound)
    held = 0 if device._held is None else 1
    assert c["rx_frames"] + c["rx_dropped"] + held <= offered


def one_input(data: bytes) -> None:
    run_ops(data, _make, _check)


def _seeds() -> list[bytes]:
    frame = bytes(spec.NET_HDR_SIZE) + b"\xff" * 6 + bytes(6) + b"\x08\x00" + bytes(46)
    return [request_seed(1, frame, len(frame), []), request_seed(0, b"", 0, [2048]) * 4,
            request_seed(0, b"", 0, [512, 512, 512])]


TARGET = Target("virtio_net", one_input, _seeds, max_len=4096,
                description="virtio-net queues under a hostile driver and an odd backend")

if __name__ == "__main__":
    atheris_main(TARGET)
