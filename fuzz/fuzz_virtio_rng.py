"""virtio-rng under a hostile driver (see fuzz/virtio_ops.py): nothing escapes, and the
device never writes outside the buffers it was given (guest RAM outside DATA stays zero)."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

from fuzz.harness import Target, atheris_main
from fuzz.virtio_ops import request_seed, run_ops
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.devices.virtio.rng import RngDevice
from vmboot.hv import MemoryVM


def _check(device: VirtioDevice, vm: MemoryVM) -> None:
    assert vm.memory.read(0x200000, 0x1000) == bytes(0x1000)


def one_input(data: bytes) -> None:
    run_ops(data, RngDevice, _check)


def _seeds() -> list[bytes]:
    return [request_seed(0, b"", 0, [16]), request_seed(0, b"", 0, [8, 8]) * 3]


TARGET = Target("virtio_rng", one_input, _seeds, max_len=2048,
                description="virtio-rng queues under a hostile driver")

if __name__ == "__main__":
    atheris_main(TARGET)
