"""virtio-vsock under a hostile driver (see fuzz/virtio_ops.py): any tx chain (short
headers, bad ops, lengths past the buffer, packets for unknown or listening ports),
rx and event buffers of any shape; nothing escapes, every chain taken is returned, the
queued control packets stay bounded, and every host socket is closed at the end."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

from fuzz.harness import Target, atheris_main
from fuzz.virtio_ops import request_seed, run_ops
from vmboot.devices.virtio import vsock_packet as vp
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.devices.virtio.vsock import MAX_PENDING_CONTROL, VsockDevice
from vmboot.devices.virtio.vsock_host import VsockListener
from vmboot.hv import MemoryVM

LISTEN_PORT = 5000
_listeners: list[VsockListener] = []


def _make() -> VsockDevice:
    device = VsockDevice()
    _listeners[:] = [device.listen(LISTEN_PORT)]
    return device


def _check(device: VirtioDevice, vm: MemoryVM) -> None:
    assert isinstance(device, VsockDevice)
    assert len(device._control) <= MAX_PENDING_CONTROL
    assert device.malformed >= 0 and len(device._conns) <= 1 << 16


def one_input(data: bytes) -> None:
    try:
        run_ops(data, _make, _check)
    finally:
        for listener in _listeners:
            listener.close()


def _packet(op: vp.Op, payload: bytes = b"", src_port: int = 1024) -> bytes:
    return vp.Header(vp.DEFAULT_GUEST_CID, vp.HOST_CID, src_port, LISTEN_PORT, len(payload),
                     vp.PacketType.STREAM, op, 0, 4096, 0).pack() + payload


def _seeds() -> list[bytes]:
    rx = request_seed(vp.RX_QUEUE, b"", 0, [vp.HEADER_SIZE, 64])
    request = _packet(vp.Op.REQUEST)
    rw = _packet(vp.Op.RW, b"hello")
    return [rx + request_seed(vp.TX_QUEUE, request, len(request), []),
            request_seed(vp.TX_QUEUE, rw, len(rw), []) + rx,
            request_seed(vp.TX_QUEUE, rw, 20, []),
            request_seed(vp.EVENT_QUEUE, b"", 0, [4])]


TARGET = Target("virtio_vsock", one_input, _seeds, max_len=2048,
                description="virtio-vsock rx, tx and event queues under a hostile driver")

if __name__ == "__main__":
    atheris_main(TARGET)
