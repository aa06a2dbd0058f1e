"""Run ``vmboot exec`` exactly as the ``vmboot`` command does, and note, when each bench
marker reaches its stderr, the time, every KVM statistic of vCPU 0 (read inside this
process: :class:`kvm_stats.OwnVcpuStats`, its fd opened as the vCPU is created) and
vmboot's own count of what its virtio-mmio devices did (:class:`DeviceCounts`).
Used by ``bench/exec_output.py``.

Run: ``python bench/exec_tap.py RECORD -- ARGS...`` (ARGS as for ``vmboot exec``); RECORD
gets one JSON line per marker: ``{"marker", "time", "kvm": {...}, "vmm": {...}}``.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kvm_stats import OwnVcpuStats

MARKERS = (b"BULK-START", b"BULK-END")


class DeviceCounts:
    """Counts, per virtio-mmio device, of its register accesses (each one a userspace MMIO
    exit: ``console read INTERRUPT_STATUS``), queue runs (``console run q5``: one a
    notification, through an ioeventfd or not), interrupts sent, and for the console the
    chains and bytes taken from each transmit queue. Installed by wrapping the transport's
    methods in this process only."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def install(self) -> None:
        from vmboot.devices.virtio import console, mmio, spec

        counts = self.counts
        transport = mmio.MmioTransport
        read, write = transport.mmio_read, transport.mmio_write
        process, interrupt = transport.process, transport._raise_interrupt
        drain = console.ConsoleDevice._drain

        def register(offset: int) -> str:
            if offset >= spec.MmioReg.CONFIG:
                return "CONFIG"
            try:
                return spec.MmioReg(offset).name
            except ValueError:
                return f"{offset:#x}"

        def counted_read(self: mmio.MmioTransport, offset: int, size: int) -> int:
            counts[f"{self.device.name} read {register(offset)}"] += 1
            return read(self, offset, size)

        def counted_write(self: mmio.MmioTransport, offset: int, size: int, value: int) -> None:
            counts[f"{self.device.name} write {register(offset)}"] += 1
            write(self, offset, size, value)

        def counted_process(self: mmio.MmioTransport, index: int) -> None:
            counts[f"{self.device.name} run q{index}"] += 1
            process(self, index)

        def counted_interrupt(self: mmio.MmioTransport, bit: int) -> None:
            counts[f"{self.device.name} interrupt"] += 1
            interrupt(self, bit)

        def counted_drain(self: console.ConsoleDevice, index: int, handle: Any) -> bool:
            def take(data: bytes) -> object:
                counts[f"console chains q{index}"] += 1
                counts[f"console bytes q{index}"] += len(data)
                return handle(data)
            return drain(self, index, take)

        transport.mmio_read = counted_read  # type: ignore[method-assign]
        transport.mmio_write = counted_write  # type: ignore[method-assign]
        transport.process = counted_process  # type: ignore[method-assign]
        transport._raise_interrupt = counted_interrupt  # type: ignore[method-assign]
        console.ConsoleDevice._drain = counted_drain  # type: ignore[method-assign]


def main() -> int:
    import vmboot.devices.console as console
    from vmboot.cli.main import main as vmboot_main

    record_path, separator, *args = sys.argv[1:]
    if separator != "--":
        raise SystemExit("usage: exec_tap.py RECORD -- ARGS...")
    from vmboot.hv.kvm.vm import KvmVM

    stats = OwnVcpuStats()
    create_vcpu = KvmVM.create_vcpu

    def create_and_attach(self: KvmVM, index: int = 0) -> Any:
        vcpu = create_vcpu(self, index)
        if index == stats.index:
            stats.attach(vcpu.fd)
        return vcpu

    KvmVM.create_vcpu = create_and_attach  # type: ignore[method-assign]
    devices = DeviceCounts()
    devices.install()
    seen = bytearray()
    noted: set[bytes] = set()
    original = console.stream_sink

    def tapped(stream):  # type: ignore[no-untyped-def]
        sink = original(stream)
        if stream is not sys.stderr:
            return sink

        def tap(data: bytes) -> None:
            now = time.perf_counter()
            seen.extend(data)
            for marker in MARKERS:
                if marker not in noted and marker in seen:
                    noted.add(marker)
                    note = {"marker": marker.decode(), "time": now, "kvm": stats.read_all(),
                            "vmm": dict(devices.counts)}
                    with open(record_path, "a") as record:
                        record.write(json.dumps(note) + "\n")
            sink(data)
        return tap

    console.stream_sink = tapped
    return vmboot_main(["exec", *args])


if __name__ == "__main__":
    sys.exit(main())
