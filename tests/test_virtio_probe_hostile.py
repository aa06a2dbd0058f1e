"""A hostile driver under real KVM: a probe guest (hand-assembled 64-bit code, no Linux)
programs a virtio-rng device through its MMIO registers, with rings the test filled with
every malformed chain of ``virtio_support.HOSTILE_CHAINS``, then a notification before
DRIVER_OK, a reset with requests outstanding, 1,000 resets, and a last good request.

The guest prints one character per step on COM1: ``R`` when the device set NEEDS_RESET
(the defined state for a malformed chain), ``-`` when a notification before DRIVER_OK was
ignored, ``Z`` when a reset read back status 0, ``Y`` when the final request was served.
The device work runs on vmboot's I/O thread (ioeventfd/irqfd) or, forced, on the exits
path; either way vmboot stays healthy, and no file descriptor or memory is left behind.
"""

from __future__ import annotations

import pytest

from conftest import requires_kvm
from kvm_helpers import assemble
from process_usage import open_fd_count, rss_bytes
from test_machine import COM1, ENTRY_64_OFFSET, guest_program
from virtio_support import DATA, HOSTILE_CHAINS
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.driver import DriverQueue
from vmboot.devices.virtio.queue import GuestRam
from vmboot.devices.virtio.rng import RngDevice
from vmboot.devices.virtio.setup import MMIO_BASE, NotificationChoice
from vmboot.hv import MemoryVM
from vmboot.vmm.machine import Machine

pytestmark = requires_kvm

MEMORY = 64 << 20
RINGS = 0x1000000
"""Each step's queue lives at RINGS + step * RING_STRIDE."""
RING_STRIDE = 0x10000
QUEUE_SIZE = 16
GOOD_BYTES = 64
RESETS = 1000
POLLS = 200_000
"""Status or used-index reads before the guest gives up on an answer (a bound, not a wait:
the device answers on its own thread within a few reads)."""
ENTRY = 0x100000 + ENTRY_64_OFFSET
"""Where the synthetic bzImage's 64-bit entry lands (its protected-mode code at 1 MiB)."""
R = spec.MmioReg
ALL = (spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK
       | spec.STATUS_DRIVER_OK)

CASES = sorted(HOSTILE_CHAINS)
STEP_EARLY = len(CASES)
STEP_RESET_MID_IO = STEP_EARLY + 1
STEP_RESETS = STEP_RESET_MID_IO + 1
STEP_GOOD = STEP_RESETS + 1
EXPECTED = "R" * len(CASES) + "-" + "Z" + "Z" + "Y" + "\n"


def _store(reg: int, value: int) -> str:
    return f"mov dword ptr [rbx + {reg:#x}], {value:#x}\n"


def _bring_up(q: DriverQueue, driver_ok: bool = True) -> str:
    """Reset, accept every feature the device offers (as the MemoryVM tests do), program
    queue 0 at ``q``, DRIVER_OK."""
    status = spec.STATUS_ACKNOWLEDGE
    code = _store(R.STATUS, 0) + _store(R.STATUS, status)
    status |= spec.STATUS_DRIVER
    code += _store(R.STATUS, status)
    for sel in (0, 1):
        code += _store(R.DEVICE_FEATURES_SEL, sel)
        code += f"mov eax, dword ptr [rbx + {R.DEVICE_FEATURES:#x}]\n"
        code += _store(R.DRIVER_FEATURES_SEL, sel)
        code += f"mov dword ptr [rbx + {R.DRIVER_FEATURES:#x}], eax\n"
    status |= spec.STATUS_FEATURES_OK
    code += _store(R.STATUS, status)
    code += _store(R.QUEUE_SEL, 0) + _store(R.QUEUE_NUM, q.size)
    for low, address in ((R.QUEUE_DESC_LOW, q.desc), (R.QUEUE_DRIVER_LOW, q.avail),
                         (R.QUEUE_DEVICE_LOW, q.used)):
        code += _store(low, address & 0xFFFFFFFF) + _store(low + 4, address >> 32)
    code += _store(R.QUEUE_READY, 1)
    if driver_ok:
        code += _store(R.STATUS, ALL)
    return code


def _say(char: str) -> str:
    return f"mov al, {ord(char)}\nout dx, al\n"


def _poll(read: str, done: str, yes: str, no: str, label: str) -> str:
    """Read with ``read`` into eax up to POLLS times until ``done`` (a jcc mnemonic after
    the read's test) holds; print ``yes`` or ``no``."""
    return (f"mov ecx, {POLLS}\n{label}_poll:\n{read}{done} {label}_yes\n"
            f"dec ecx\njnz {label}_poll\n{_say(no)}jmp {label}_end\n"
            f"{label}_yes:\n{_say(yes)}{label}_end:\n")


def _status_is_zero(label: str) -> str:
    read = f"mov eax, dword ptr [rbx + {R.STATUS:#x}]\ntest eax, eax\n"
    return _poll(read, "jz", "Z", "X", label)


def _program(queues: list[DriverQueue]) -> str:
    code = f"mov rbx, {MMIO_BASE:#x}\nmov dx, {COM1:#x}\n"
    needs_reset = (f"mov eax, dword ptr [rbx + {R.STATUS:#x}]\n"
                   f"test eax, {spec.STATUS_DEVICE_NEEDS_RESET:#x}\n")
    for step in range(len(CASES)):
        code += _bring_up(queues[step]) + _store(R.QUEUE_NOTIFY, 0)
        code += _poll(needs_reset, "jnz", "R", "N", f"hostile{step}")
    early = queues[STEP_EARLY]
    used_moved = f"movzx eax, word ptr [{early.used + 2:#x}]\ntest eax, eax\n"
    code += _bring_up(early, driver_ok=False) + _store(R.QUEUE_NOTIFY, 0)
    code += _poll(used_moved, "jnz", "!", "-", "early")
    code += _bring_up(queues[STEP_RESET_MID_IO]) + _store(R.QUEUE_NOTIFY, 0)
    code += _store(R.STATUS, 0) + _status_is_zero("midio")
    code += f"mov r12d, {RESETS}\nresets:\n" + _bring_up(queues[STEP_RESETS])
    code += _store(R.STATUS, 0) + "dec r12d\njnz resets\n" + _status_is_zero("resets")
    good = queues[STEP_GOOD]
    used = f"movzx eax, word ptr [{good.used + 2:#x}]\ntest eax, eax\n"
    code += _bring_up(good) + _store(R.QUEUE_NOTIFY, 0) + _poll(used, "jnz", "Y", "N", "good")
    code += _say("\n") + "mov al, 0xfe\nout 0x64, al\nhalt:\nhlt\njmp halt\n"
    return code


def _queues(ram: GuestRam) -> list[DriverQueue]:
    return [DriverQueue(ram, RINGS + step * RING_STRIDE, QUEUE_SIZE)
            for step in range(STEP_GOOD + 1)]


def _run(path: NotificationChoice) -> tuple[str, dict[str, object], bytes]:
    layout = MemoryVM(MEMORY)  # only to compute the rings' addresses for the guest code
    kernel = guest_program(assemble(_program(_queues(layout.memory)), base=ENTRY))
    layout.close()
    rng = RngDevice()
    with Machine(kernel, memory=f"{MEMORY >> 20}M", virtio_devices=[rng],
                 virtio_notifications=path) as m:
        assert m.vm is not None
        queues = _queues(m.vm.memory)
        for step, case in enumerate(CASES):
            HOSTILE_CHAINS[case](queues[step], MEMORY)
        queues[STEP_EARLY].add_chain([], [(DATA, GOOD_BYTES)])
        for _ in range(3):
            queues[STEP_RESET_MID_IO].add_chain([], [(DATA, GOOD_BYTES)])
        queues[STEP_GOOD].add_chain([], [(DATA + 0x8000, GOOD_BYTES)])
        result = m.run(timeout=300)
        assert m.vm is not None
        served = m.vm.memory.read(DATA + 0x8000, GOOD_BYTES)
    report = result.virtio
    assert report is not None, result.exit.one_line()
    device: dict[str, object] = report["devices"][0]
    return result.console.decode(errors="replace"), device, served


@pytest.mark.parametrize("path", ["ioeventfd", "exits"])
def test_hostile_driver_under_kvm(path: NotificationChoice) -> None:
    console, device, served = _run(path)
    assert console == EXPECTED, (console, device)
    assert served != bytes(GOOD_BYTES)  # the last request got random bytes
    assert device["error"] is None  # the final reset cleared the last complaint


def test_hostile_runs_leave_nothing_behind() -> None:
    """Three runs in a row: no file descriptor left open, and memory flat (a leak of the
    64 MiB guest RAM or of the rings per run would show as tens of MiB)."""
    _run("ioeventfd")
    fds, rss = open_fd_count(), rss_bytes()
    for _ in range(2):
        console, _, _ = _run("ioeventfd")
        assert console == EXPECTED
    assert open_fd_count() == fds
    assert rss_bytes() - rss < 8 << 20, f"RSS grew by {(rss_bytes() - rss) >> 10} KiB over two runs"
