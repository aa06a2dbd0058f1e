"""virtio-console (multiport control protocol, console output and input, named ports) and
virtio-rng, driven through the transport on a MemoryVM."""

from __future__ import annotations

import struct

import pytest

from virtio_support import DATA, Rig, rig
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.console import ConsoleDevice, ConsolePort, tx_queue
from vmboot.devices.virtio.driver import notify
from vmboot.devices.virtio.rng import MAX_REQUEST_BYTES, RngDevice
from vmboot.errors import BootConfigError, DeviceStateError

CONTROL = struct.Struct("<IHH")


def _control_messages(r: Rig) -> list[tuple[int, int, int, bytes]]:
    out = []
    for head, length in r.queues[2].take_used():
        raw = r.vm.memory.read(DATA + 0x10000 + head * 0x100, length)
        out.append((*CONTROL.unpack_from(raw), raw[CONTROL.size:]))
    return out


def _console() -> tuple[Rig, list[bytes], list[bytes]]:
    console_out: list[bytes] = []
    port_out: list[bytes] = []
    dev = ConsoleDevice([ConsolePort("", console_out.append),
                         ConsolePort("org.vmboot.test", port_out.append)])
    r = rig(dev)
    for i in range(8):  # control receive buffers
        r.queues[2].next_free = i
        r.queues[2].add_chain([], [(DATA + 0x10000 + i * 0x100, 0x100)])
    return r, console_out, port_out


def _send_control(r: Rig, port: int, event: int, value: int) -> None:
    at = DATA + 0x20000 + r.queues[3].next_free * 0x10
    r.vm.memory.write(at, CONTROL.pack(port, event, value))
    r.queues[3].add_chain([(at, CONTROL.size)], [])
    notify(r.transport, 3)


def test_multiport_handshake_names_ports_and_marks_the_console() -> None:
    r, _, _ = _console()
    assert r.device.has_feature(spec.CONSOLE_F_MULTIPORT)
    _send_control(r, 0, spec.CONSOLE_DEVICE_READY, 1)
    assert [(p, e, v) for p, e, v, _ in _control_messages(r)] == [
        (0, spec.CONSOLE_DEVICE_ADD, 1), (1, spec.CONSOLE_DEVICE_ADD, 1)]
    _send_control(r, 0, spec.CONSOLE_PORT_READY, 1)
    _send_control(r, 1, spec.CONSOLE_PORT_READY, 1)
    assert _control_messages(r) == [
        (0, spec.CONSOLE_CONSOLE_PORT, 1, b""), (0, spec.CONSOLE_PORT_OPEN, 1, b""),
        (1, spec.CONSOLE_PORT_NAME, 1, b"org.vmboot.test"), (1, spec.CONSOLE_PORT_OPEN, 1, b"")]
    _send_control(r, 1, spec.CONSOLE_PORT_OPEN, 1)
    assert r.device.ports[1].guest_open  # type: ignore[attr-defined]


def test_output_goes_to_each_ports_sink() -> None:
    r, console_out, port_out = _console()
    r.vm.memory.write(DATA, b"hello console\n")
    r.queues[1].add_chain([(DATA, 14)], [])
    notify(r.transport, 1)
    r.vm.memory.write(DATA + 0x100, b"to the port")
    r.queues[5].add_chain([(DATA + 0x100, 11)], [])
    notify(r.transport, 5)
    assert console_out == [b"hello console\n"] and port_out == [b"to the port"]


def test_input_waits_for_buffers_then_fills_them() -> None:
    r, _, _ = _console()
    dev = r.device
    assert isinstance(dev, ConsoleDevice)
    kicked: list[int] = []
    dev._notify = kicked.append  # what the transport would run on the I/O thread
    assert dev.ports[0].push(b"typed input") == 11
    assert kicked == [0]
    r.queues[0].add_chain([], [(DATA + 0x3000, 4)])
    r.queues[0].add_chain([], [(DATA + 0x3100, 64)])
    notify(r.transport, 0)
    used = r.queues[0].take_used()
    assert [n for _, n in used] == [4, 7]
    assert r.vm.memory.read(DATA + 0x3000, 4) + r.vm.memory.read(DATA + 0x3100, 7) == b"typed input"


def test_control_message_for_unknown_port_is_ignored() -> None:
    r, _, _ = _console()
    _send_control(r, 99, spec.CONSOLE_PORT_READY, 1)
    _send_control(r, 0, 0xFFFF, 1)
    _send_control(r, 0, spec.CONSOLE_DEVICE_READY, 1)
    assert len(_control_messages(r)) == 2 and not r.needs_reset


def test_rng_fills_buffers_and_caps_a_request() -> None:
    r = rig(RngDevice(), queue_size=16)
    head = r.queues[0].add_chain([], [(DATA, 16), (DATA + 0x100000, MAX_REQUEST_BYTES)])
    notify(r.transport, 0)
    assert r.queues[0].take_used() == [(head, MAX_REQUEST_BYTES)]
    assert r.vm.memory.read(DATA, 16) != bytes(16)


def test_rng_readable_only_request_gets_nothing() -> None:
    r = rig(RngDevice())
    head = r.queues[0].add_chain([(DATA, 16)], [])
    notify(r.transport, 0)
    assert r.queues[0].take_used() == [(head, 0)]


def _ordered_console() -> tuple[Rig, list[tuple[str, bytes]]]:
    """Ports: the console, "out", and "ctl", which drains "out" before each buffer."""
    heard: list[tuple[str, bytes]] = []
    out = ConsolePort("out", lambda data: heard.append(("out", data)))
    ctl = ConsolePort("ctl", lambda data: heard.append(("ctl", data)), drain_first=(out,))
    return rig(ConsoleDevice([ConsolePort(""), out, ctl])), heard


def test_a_port_hears_the_output_queued_before_its_message_first() -> None:
    """Output queued on "out" (its notification not yet served) reaches its sink before the
    "ctl" message queued after it; the driver is interrupted for both queues' buffers."""
    r, heard = _ordered_console()
    out_tx, ctl_tx = tx_queue(1), tx_queue(2)
    for i, text in enumerate((b"last ", b"output")):
        r.vm.memory.write(DATA + i * 0x100, text)
        r.queues[out_tx].add_chain([(DATA + i * 0x100, len(text))], [])
    r.vm.memory.write(DATA + 0x1000, b"exited")
    r.queues[ctl_tx].add_chain([(DATA + 0x1000, 6)], [])
    notify(r.transport, ctl_tx)  # the control queue's notification is served first
    assert heard == [("out", b"last "), ("out", b"output"), ("ctl", b"exited")]
    assert len(r.queues[out_tx].take_used()) == 2
    before = len(r.interrupts)
    r.transport.on_queue_event(out_tx)  # "out"'s own notification: nothing left to take
    assert heard[3:] == [] and len(r.interrupts) == before + 1  # but the interrupt is owed
    r.transport.on_queue_event(out_tx)
    assert len(r.interrupts) == before + 1  # owed once only


def test_a_port_that_drains_a_port_of_another_device_is_refused() -> None:
    stray = ConsolePort("elsewhere")
    with pytest.raises(BootConfigError, match="'ctl' drains ports \\['elsewhere'\\]"):
        ConsoleDevice([ConsolePort(""), ConsolePort("ctl", drain_first=(stray,))])


def test_saved_owed_interrupts_are_checked() -> None:
    r, _ = _ordered_console()
    dev = r.device
    assert isinstance(dev, ConsoleDevice)
    state = dev.state()
    assert state["owed"] == []
    dev.check_state(state)
    with pytest.raises(DeviceStateError, match="owed is \\[99\\]"):
        dev.check_state({**state, "owed": [99]})
    dev.restore({**state, "owed": [tx_queue(1)]})
    assert dev.state()["owed"] == [tx_queue(1)]
