"""Split virtqueues under a hostile driver: every malformed ring or chain ends in a defined
state (the device needs a reset, or the request fails), never in a host exception or an
access outside guest RAM. Driven through the virtio-mmio transport on a MemoryVM."""

from __future__ import annotations

import pytest

from virtio_support import DATA, HOSTILE_CHAINS, Rig, restart, rig
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.driver import notify, read_reg, write_reg
from vmboot.devices.virtio.queue import QueueError, Virtqueue
from vmboot.devices.virtio.rng import RngDevice

R = spec.MmioReg
GIB = 1 << 30


def _rng(**kw: object) -> Rig:
    return rig(RngDevice(), **kw)  # type: ignore[arg-type]


def test_a_good_request_is_served_and_interrupts() -> None:
    r = _rng()
    q = r.queues[0]
    head = q.add_chain([], [(DATA, 64)])
    notify(r.transport, 0)
    assert q.take_used() == [(head, 64)]
    assert r.vm.memory.read(DATA, 64) != bytes(64)
    assert r.interrupts and r.transport.interrupt_status & spec.INTERRUPT_USED_BUFFER
    assert not r.needs_reset


def test_indirect_chain() -> None:
    r = _rng()
    q = r.queues[0]
    head = q.add_chain([], [(DATA, 8), (DATA + 100, 8)], indirect_table=DATA + 0x1000)
    notify(r.transport, 0)
    assert q.take_used() == [(head, 16)]


@pytest.mark.parametrize("case", sorted(HOSTILE_CHAINS))
def test_hostile_chain_needs_reset_and_a_reset_recovers(case: str) -> None:
    r = _rng()
    HOSTILE_CHAINS[case](r.queues[0], r.vm.memory.size)
    notify(r.transport, 0)
    assert r.needs_reset, case
    assert r.transport.error
    assert r.interrupts[-1] & spec.INTERRUPT_CONFIG_CHANGE
    assert r.queues[0].take_used() == []
    notify(r.transport, 0)  # further notifications do nothing until the reset
    assert r.queues[0].take_used() == []
    # the driver resets and starts over on the same transport: the device works again
    restart(r)
    assert not r.needs_reset and r.transport.error is None
    head = r.queues[0].add_chain([], [(DATA, 32)])
    notify(r.transport, 0)
    assert r.queues[0].take_used() == [(head, 32)]


def test_buffer_straddling_the_mmio_hole() -> None:
    """RAM is [0, 3 GiB) and [4 GiB, ...): a buffer across 3 GiB is not RAM, even though
    both its ends are next to RAM."""
    r = _rng(memory=3 * GIB + (64 << 20))
    r.queues[0].add_chain([], [(3 * GIB - 32, 64)])
    notify(r.transport, 0)
    assert r.needs_reset
    assert "not inside guest RAM" in (r.transport.error or "")


def test_buffer_just_above_the_hole_is_fine() -> None:
    r = _rng(memory=3 * GIB + (64 << 20))
    head = r.queues[0].add_chain([], [(4 * GIB, 64)])
    notify(r.transport, 0)
    assert r.queues[0].take_used() == [(head, 64)]
    assert r.vm.memory.read(4 * GIB, 64) != bytes(64)


def test_ring_outside_ram_refused_at_driver_ok() -> None:
    r = _rng(start=False)
    from vmboot.devices.virtio.driver import driver_ok, negotiate

    negotiate(r.transport)
    q = r.queues[0]
    q.used = r.vm.memory.size - 8  # the used ring runs off the end of RAM
    q.program(r.transport, 0)
    driver_ok(r.transport)
    assert r.needs_reset
    assert "device (used) ring" in (r.transport.error or "")


@pytest.mark.parametrize("size", [0, 3, 1000, 1 << 16])
def test_bad_queue_size_refused_at_driver_ok(size: int) -> None:
    r = _rng(start=False)
    from vmboot.devices.virtio.driver import driver_ok, negotiate

    negotiate(r.transport)
    r.queues[0].program(r.transport, 0)
    write_reg(r.transport, R.QUEUE_READY, 0)
    write_reg(r.transport, R.QUEUE_NUM, size)
    write_reg(r.transport, R.QUEUE_READY, 1)
    driver_ok(r.transport)
    assert r.needs_reset


def test_misaligned_descriptor_table_refused() -> None:
    r = _rng(start=False)
    from vmboot.devices.virtio.driver import driver_ok, negotiate

    negotiate(r.transport)
    r.queues[0].desc += 8
    r.queues[0].program(r.transport, 0)
    driver_ok(r.transport)
    assert r.needs_reset and "aligned" in (r.transport.error or "")


def test_notification_before_driver_ok_is_ignored() -> None:
    r = _rng(start=False)
    r.queues[0].add_chain([], [(DATA, 64)])
    notify(r.transport, 0)
    assert r.queues[0].take_used() == []
    assert not r.needs_reset and r.interrupts == []


def test_notification_of_a_queue_that_does_not_exist() -> None:
    r = _rng()
    write_reg(r.transport, R.QUEUE_NOTIFY, 7)
    write_reg(r.transport, R.QUEUE_NOTIFY, 0xFFFFFFFF)
    assert not r.needs_reset


def test_index_wraps_past_65535() -> None:
    r = _rng(queue_size=4)
    q = r.queues[0]
    dq = r.device.queues[0]
    dq.next_avail = dq.next_used = 0xFFFE
    q.avail_idx = q.used_seen = 0xFFFE
    heads = []
    for _ in range(4):
        q.next_free = 0
        heads.append(q.add_chain([], [(DATA, 4)]))
        notify(r.transport, 0)
    assert [h for h, _ in q.take_used()] == heads
    assert dq.next_used == 2 and not r.needs_reset


def test_event_idx_suppresses_interrupts_until_used_event() -> None:
    r = _rng()
    assert r.device.has_feature(spec.F_EVENT_IDX)
    q = r.queues[0]
    q.add_chain([], [(DATA, 4)])
    notify(r.transport, 0)
    first = len(r.interrupts)
    q.set_used_event(10)  # "interrupt me when used index passes 10"
    for _ in range(5):
        q.add_chain([], [(DATA, 4)])
        notify(r.transport, 0)
    assert len(r.interrupts) == first
    for _ in range(6):
        q.add_chain([], [(DATA, 4)])
        notify(r.transport, 0)
    assert len(r.interrupts) == first + 1


def test_no_interrupt_flag_without_event_idx() -> None:
    r = _rng(features=spec.TRANSPORT_FEATURES & ~(1 << spec.F_EVENT_IDX))
    q = r.queues[0]
    r.vm.memory.write(q.avail, spec.AVAIL_F_NO_INTERRUPT.to_bytes(2, "little"))
    q.add_chain([], [(DATA, 4)])
    notify(r.transport, 0)
    assert q.take_used() and r.interrupts == []


def test_reset_in_the_middle_of_io_then_1000_resets() -> None:
    r = _rng()
    q = r.queues[0]
    for _ in range(3):
        q.add_chain([], [(DATA, 16)])
    write_reg(r.transport, R.STATUS, 0)  # reset with requests outstanding
    notify(r.transport, 0)
    assert q.take_used() == [] and r.status == 0
    for i in range(1000):
        restart(r)
        head = r.queues[0].add_chain([], [(DATA, 8)])
        if i % 100 == 0:
            notify(r.transport, 0)
            assert r.queues[0].take_used() == [(head, 8)]
        write_reg(r.transport, R.STATUS, 0)
        assert r.status == 0 and read_reg(r.transport, R.QUEUE_READY) == 0
        assert r.device.queues[0].next_avail == 0


def test_virtqueue_rejects_impossible_max_size() -> None:
    with pytest.raises(ValueError):
        Virtqueue(3)


def test_queue_restore_checks_size() -> None:
    q = Virtqueue(16)
    state = vars(q.state()) | {"size": 64}
    with pytest.raises(QueueError):
        q.restore(state)
