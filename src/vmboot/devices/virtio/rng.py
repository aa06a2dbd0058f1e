"""virtio-rng (virtio 1.2 section 5.4): entropy from the host's ``getrandom``."""

from __future__ import annotations

import os
from typing import ClassVar

from vmboot.devices.virtio import spec
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.devices.virtio.queue import DescriptorChain, scatter

QUEUE_SIZE = 256
MAX_REQUEST_BYTES = 64 << 10
"""Bytes given for one request at most (a larger buffer gets this many)."""


class RngDevice(VirtioDevice):
    device_id: ClassVar[spec.DeviceId] = spec.DeviceId.RNG
    name: ClassVar[str] = "rng"

    def __init__(self) -> None:
        super().__init__((QUEUE_SIZE,))
        self.bytes_given = 0

    def describe(self) -> dict[str, int]:
        return {"bytes": self.bytes_given}

    def process_queue(self, index: int) -> bool:
        return self.serve_each(index, self._give)

    def _give(self, chain: DescriptorChain) -> int:
        memory = self.memory
        assert memory is not None
        n = min(chain.writable_bytes, MAX_REQUEST_BYTES)
        written = scatter(memory, chain.writable, os.getrandom(n)) if n else 0
        self.bytes_given += written
        return written
