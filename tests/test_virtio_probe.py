"""A probe guest that programs a virtio-rng device through its MMIO registers under real KVM.

The guest (hand-assembled 64-bit code in a synthetic bzImage, no Linux) negotiates
VIRTIO_F_VERSION_1, gives queue 0 a ring the test laid out in guest RAM, sets DRIVER_OK,
writes QueueNotify, and polls the used index; it prints ``Y`` on COM1 when the device used
the buffer (``N`` if it gave up) and resets. With ioeventfd/irqfd the notification must
never reach vmboot as an MMIO exit; with the fallback it arrives as exactly one.
"""

from __future__ import annotations

import pytest

from conftest import requires_kvm
from test_machine import COM1, HLT_LOOP, guest_program, mov_dx, out_imm
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.driver import DriverQueue
from vmboot.devices.virtio.rng import RngDevice
from vmboot.devices.virtio.setup import MMIO_BASE, NotificationChoice
from vmboot.hv import MemoryVM
from vmboot.vmm.machine import Machine

pytestmark = requires_kvm

RING = 0x1000000
BUFFER = 0x1100000
BUFFER_BYTES = 64
QUEUE_SIZE = 8
POLL_ITERATIONS = 5_000_000
R = spec.MmioReg


def _mov_rbx(value: int) -> bytes:
    return b"\x48\xbb" + value.to_bytes(8, "little")


def _mov_rsi(value: int) -> bytes:
    return b"\x48\xbe" + value.to_bytes(8, "little")


def _store(reg: int, value: int) -> bytes:
    """mov dword [rbx + reg], value"""
    return b"\xc7\x83" + reg.to_bytes(4, "little") + value.to_bytes(4, "little")


def _program(q: DriverQueue) -> bytes:
    regs = [
        (R.STATUS, spec.STATUS_ACKNOWLEDGE),
        (R.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER),
        (R.DRIVER_FEATURES_SEL, 1), (R.DRIVER_FEATURES, 1),  # VIRTIO_F_VERSION_1 (bit 32)
        (R.DRIVER_FEATURES_SEL, 0), (R.DRIVER_FEATURES, 0),
        (R.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK),
        (R.QUEUE_SEL, 0), (R.QUEUE_NUM, QUEUE_SIZE),
        (R.QUEUE_DESC_LOW, q.desc), (R.QUEUE_DESC_HIGH, 0),
        (R.QUEUE_DRIVER_LOW, q.avail), (R.QUEUE_DRIVER_HIGH, 0),
        (R.QUEUE_DEVICE_LOW, q.used), (R.QUEUE_DEVICE_HIGH, 0),
        (R.QUEUE_READY, 1),
        (R.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK
         | spec.STATUS_DRIVER_OK),
        (R.QUEUE_NOTIFY, 0),
    ]
    code = _mov_rbx(MMIO_BASE) + b"".join(_store(r, v) for r, v in regs)
    code += _mov_rsi(q.used + 2) + b"\xb9" + POLL_ITERATIONS.to_bytes(4, "little")
    code += mov_dx(COM1)
    code += (b"\x0f\xb7\x06"   # poll: movzx eax, word [rsi]   (the used index)
             b"\x85\xc0"       # test eax, eax
             b"\x75\x09"       # jnz found
             b"\xff\xc9"       # dec ecx
             b"\x75\xf5"       # jnz poll
             b"\xb0N\xee"      # mov al, 'N'; out dx, al
             b"\xeb\x03"       # jmp end
             b"\xb0Y\xee")     # found: mov al, 'Y'; out dx, al
    return code + b"\xb0\n\xee" + out_imm(0x64, 0xFE) + HLT_LOOP


@pytest.mark.parametrize("path", ["ioeventfd", "exits"])
def test_probe_guest_drives_virtio_rng(path: NotificationChoice) -> None:
    layout = MemoryVM(32 << 20)  # only to compute the ring's addresses for the guest code
    kernel = guest_program(_program(DriverQueue(layout.memory, RING, QUEUE_SIZE)))
    layout.close()
    rng = RngDevice()
    with Machine(kernel, memory="32M", virtio_devices=[rng],
                 virtio_notifications=path) as m:
        assert m.vm is not None
        guest_q = DriverQueue(m.vm.memory, RING, QUEUE_SIZE)
        guest_q.write_desc(0, BUFFER, BUFFER_BYTES, spec.DESC_F_WRITE, 0)
        guest_q.publish(0)
        result = m.run(timeout=120)
        used = guest_q.take_used()
        random_bytes = m.vm.memory.read(BUFFER, BUFFER_BYTES)
    assert result.console == b"Y\n", result.exit.one_line()
    assert used == [(0, BUFFER_BYTES)]
    assert random_bytes != bytes(BUFFER_BYTES)
    report = result.virtio
    assert report is not None
    device = report["devices"][0]
    assert device["requests"] == 1 and device["error"] is None
    if path == "ioeventfd":
        assert report["notification_path"] == "ioeventfd/irqfd"
        assert device["notify_exits"] == 0  # KVM signalled the eventfd itself
    else:
        assert report["notification_path"] == "exits"
        assert device["notify_exits"] == 1
