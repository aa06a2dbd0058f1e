"""A stream backend (passt's framing) whose peer stops reading, on the real I/O thread: the
device keeps the rest of the frame the full socket did not take, stops taking frames from
the guest, and sends the rest once the peer reads again; meanwhile another device on the
same I/O thread is served as usual and nothing declares the link down."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Sequence

from test_virtio_mmio import FakeVm
from virtio_support import DATA
from vmboot.devices.bus import MmioBus
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.driver import DriverQueue, driver_ok, negotiate, write_reg
from vmboot.devices.virtio.net import TX, NetDevice
from vmboot.devices.virtio.rng import RngDevice
from vmboot.devices.virtio.setup import VirtioDevices
from vmboot.net.backend import Chunk
from vmboot.net.frame_stream import FrameStream

HDR = spec.NET_HDR_SIZE
FRAME = 1500
FRAMES = 64
"""Frames the guest queues: far more than the small socket buffer holds."""
WAIT_S = 30.0
"""Upper bound on waiting for the I/O thread (never reached when all is well)."""


class StreamBackend:
    """passt's side of the device without passt: frames over one end of a socket pair."""

    kind = "user"
    vnet_hdr = False
    offload_features = 0
    mtu = FRAME

    def __init__(self, sock: socket.socket) -> None:
        self.stream = FrameStream(sock)

    def fileno(self) -> int:
        return self.stream.fileno()

    def set_offloads(self, features: int) -> None:
        pass

    def recv(self) -> bytes | None:
        return self.stream.recv()

    def send(self, parts: Sequence[Chunk]) -> bool:
        return self.stream.send(parts)

    def flush(self) -> bool:
        return self.stream.flush()

    def describe(self) -> dict[str, object]:
        return {"backend": "stream"}

    def close(self) -> None:
        self.stream.close()


def _wait(what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"the I/O thread never got to: {what}")
        time.sleep(0.005)


class Rig:
    """A net device on a socket pair and an rng device, both on one real I/O thread, their
    queues set up as a driver would; :attr:`peer` is the far end of the net's socket."""

    def __init__(self) -> None:
        ours, self.peer = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # full after a few frames
        self.backend = StreamBackend(ours)
        self.net = NetDevice(self.backend, bytes.fromhex("020000000001"))
        self.devices = VirtioDevices([self.net, RngDevice()], "exits")
        self.devices.attach(MmioBus())
        self.vm = FakeVm(fds=False)
        self.devices.connect(self.vm)
        self.net_t, self.rng_t = self.devices.transports
        queues: list[DriverQueue] = []
        for t, sizes in ((self.net_t, (16, 128)), (self.rng_t, (8,))):
            negotiate(t)
            for i, size in enumerate(sizes):
                q = DriverQueue(self.vm.memory, 0x100000 + 0x10000 * len(queues), size)
                q.program(t, i)
                queues.append(q)
            driver_ok(t)
        self.rx, self.tx, self.rng = queues

    def transmit(self, count: int) -> None:
        """Queue ``count`` frames (frame i is FRAME bytes of i) and kick, as an MMIO exit."""
        for i in range(count):
            frame = bytes(HDR) + bytes([i]) * FRAME
            self.vm.memory.write(DATA + i * 0x1000, frame)
            self.tx.add_chain([(DATA + i * 0x1000, len(frame))], [])
        write_reg(self.net_t, spec.MmioReg.QUEUE_NOTIFY, TX)

    def close(self) -> None:
        self.devices.close()
        self.peer.close()


def test_a_peer_that_stops_reading_holds_the_guest_back_not_the_io_thread() -> None:
    r = Rig()
    try:
        net, backend, peer, rx, tx, rng, rng_t = r.net, r.backend, r.peer, r.rx, r.tx, r.rng, r.rng_t
        r.transmit(FRAMES)
        _wait("a frame held back by the full socket", lambda: backend.stream.unsent > 0)

        head = rng.add_chain([], [(DATA + 0x100000, 16)])
        write_reg(rng_t, spec.MmioReg.QUEUE_NOTIFY, 0)
        _wait("the other device's request", lambda: rng.used_idx() == 1)
        # Served while the net device is still held back: the I/O thread never waited.
        assert backend.stream.unsent > 0 and net.link_up
        assert rng.take_used() == [(head, 16)]
        taken = tx.used_idx()
        assert 0 < taken < FRAMES  # the guest is held back: frames wait in its queue
        assert net.counters["tx_dropped"] == 0

        received = bytearray()
        frames: list[bytes] = []

        def read_all() -> bool:
            with contextlib.suppress(BlockingIOError):
                received.extend(peer.recv(1 << 20, socket.MSG_DONTWAIT))
            while len(received) >= 4 and len(received) - 4 >= struct.unpack_from(">I", received)[0]:
                n = struct.unpack_from(">I", received)[0]
                frames.append(bytes(received[4:4 + n]))
                del received[:4 + n]
            return len(frames) == FRAMES

        _wait("every frame, once the peer reads", read_all)  # writable: the rest goes out
        assert frames == [bytes([i]) * FRAME for i in range(FRAMES)]  # whole and in order
        _wait("every transmit chain used", lambda: tx.used_idx() == FRAMES)
        assert net.counters["tx_frames"] == FRAMES and net.link_up
        assert rx.used_idx() == 0  # the peer sent nothing
    finally:
        r.close()


def test_a_peer_gone_while_a_frame_waits_each_way_takes_the_link_down() -> None:
    # Reading is off (a frame from the peer waits for receive buffers the guest never
    # gave) and writing is watched (a frame waits for room): the hang-up still reaches
    # the device through the writing side, which takes the link down.
    r = Rig()
    try:
        r.peer.sendall(struct.pack(">I", 60) + bytes(60))
        _wait("the peer's frame held", lambda: r.net._held is not None)
        r.transmit(FRAMES)
        _wait("a frame held back by the full socket", lambda: r.backend.stream.unsent > 0)
        r.peer.close()
        _wait("the link down", lambda: not r.net.link_up)
        assert r.net_t.interrupt_status & spec.INTERRUPT_CONFIG_CHANGE
        head = r.rng.add_chain([], [(DATA + 0x100000, 16)])
        write_reg(r.rng_t, spec.MmioReg.QUEUE_NOTIFY, 0)
        _wait("the other device's request", lambda: r.rng.used_idx() == 1)
        assert r.rng.take_used() == [(head, 16)]
    finally:
        r.devices.close()


def test_the_interrupt_for_a_sent_frame_comes_from_its_timer() -> None:
    r = Rig()
    try:
        r.transmit(1)
        _wait("the frame sent", lambda: r.tx.used_idx() == 1)
        # Nothing else happens on the device: the held-back interrupt comes when the
        # delay runs out, through the timer the I/O thread watches.
        _wait("the used-buffer interrupt", lambda: r.net_t.interrupts > 0)
        assert r.net_t.interrupt_status & spec.INTERRUPT_USED_BUFFER
        reader = b""
        while len(reader) < 4 + FRAME:
            reader += r.peer.recv(1 << 16)
        assert reader == struct.pack(">I", FRAME) + bytes(FRAME)
    finally:
        r.close()
