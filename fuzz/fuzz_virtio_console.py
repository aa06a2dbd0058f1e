"""virtio-console (multiport control queues, console and named port) under a hostile
driver (see fuzz/virtio_ops.py): nothing escapes; output reaches only the port sinks."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import struct

from fuzz.harness import Target, atheris_main
from fuzz.virtio_ops import request_seed, run_ops
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.console import ConsoleDevice, ConsolePort
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.hv import MemoryVM

_out: list[bytes] = []


def _make() -> ConsoleDevice:
    _out.clear()
    dev = ConsoleDevice([ConsolePort("", _out.append), ConsolePort("fuzz.port", _out.append)])
    dev.ports[0].push(b"input for the guest")
    return dev


def _check(device: VirtioDevice, vm: MemoryVM) -> None:
    assert sum(len(chunk) for chunk in _out) < 1 << 24


def one_input(data: bytes) -> None:
    run_ops(data, _make, _check)


def _seeds() -> list[bytes]:
    ready = struct.pack("<IHH", 0, spec.CONSOLE_DEVICE_READY, 1)
    port_ready = struct.pack("<IHH", 1, spec.CONSOLE_PORT_READY, 1)
    return [request_seed(2, b"", 0, [64]) + request_seed(3, ready, len(ready), []),
            request_seed(3, port_ready, len(port_ready), []),
            request_seed(1, b"hello\n", 6, []), request_seed(0, b"", 0, [32])]


TARGET = Target("virtio_console", one_input, _seeds, max_len=2048,
                description="virtio-console data and control queues under a hostile driver")

if __name__ == "__main__":
    atheris_main(TARGET)
