"""Snapshot files: header, checksum and manifest checks, then the state parsers.

An input's first byte picks how the rest is used: even, as a whole snapshot file; odd, as a
manifest that gets a valid header and checksum around it (so mutants reach the manifest's
parsers instead of stopping at the checksum). The parsed state then goes through every
consumer that needs no KVM: the devices' ``restore``, the CPUID table, the clock, and the
boot-facts comparison.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import ctypes
import json
import os
import tempfile
from pathlib import Path

from fuzz.harness import Target, atheris_main
from vmboot.devices.pc import PcPlatform
from vmboot.hv.kvm import abi
from vmboot.hv.kvm.state import VcpuState, VmState
from vmboot.snapshot import BootFacts, Manifest, load_manifest, restore_devices
from vmboot.snapshot.format import HEADER, HEADER_FIELDS, MAGIC, MEMORY_ALIGNMENT, state_checksum
from vmboot.vmm.snapshots import platform_devices

MEMORY = 4096
WHOLE_FILE, MANIFEST_ONLY = 0, 1
_SCRATCH = Path(tempfile.mkdtemp(prefix="vmboot-fuzz-snapshot-",
                                 dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def snapshot_file(body: bytes, memory: int = MEMORY) -> bytes:
    """A snapshot file around manifest ``body``, with a valid header and checksum."""
    mem_off = -(-(HEADER.size + len(body)) // MEMORY_ALIGNMENT) * MEMORY_ALIGNMENT
    fields = HEADER_FIELDS.pack(MAGIC, 1, 0, HEADER.size, len(body), mem_off, memory)
    head = fields + state_checksum(fields, body) + body
    return head + bytes(mem_off - len(head)) + bytes(memory)


def seed_manifest() -> bytes:
    def zeros(struct: type[ctypes.Structure]) -> bytes:
        return bytes(ctypes.sizeof(struct))

    entry = abi.KvmCpuidEntry2(function=1, eax=0x00A0F11, ecx=1 << 31, edx=1 << 26)
    vcpu = VcpuState(index=0, regs=zeros(abi.KvmRegs), sregs=zeros(abi.KvmSregs),
                     fpu=zeros(abi.KvmFpu), cpuid=bytes(entry), msrs={0x10: 1, 0xC0000082: 2},
                     mp_state=0, events=zeros(abi.KvmVcpuEvents),
                     debugregs=zeros(abi.KvmDebugregs), xsave=zeros(abi.KvmXsave),
                     xcrs=zeros(abi.KvmXcrs), lapic=zeros(abi.KvmLapicState))
    vm = VmState(irqchips=[zeros(abi.KvmIrqchip)] * 3, pit=zeros(abi.KvmPitState2),
                 clock=zeros(abi.KvmClockData))
    boot = BootFacts("0" * 64, "seed", "console=ttyS0", None, MEMORY, [[0, MEMORY]],
                     {"vmlinux": None, "system_map": None})
    devices = {name: dev.state() for name, dev in platform_devices(PcPlatform()).items()}
    manifest = Manifest(boot, {"xsave": 1, "xcrs": 1}, vm, [vcpu], devices)
    return json.dumps(manifest.to_plain(), sort_keys=True).encode()


def seeds() -> list[bytes]:
    body = seed_manifest()
    return [bytes([MANIFEST_ONLY]) + body, bytes([WHOLE_FILE]) + snapshot_file(body)]


def offsets() -> list[int]:
    """The header's fields, after the mode byte."""
    return [1 + o for o in (0, 8, 12, 16, 24, 32, 40, 48)]


def one_input(data: bytes) -> None:
    mode, rest = (data[0], data[1:]) if data else (WHOLE_FILE, b"")
    raw = snapshot_file(rest) if mode & 1 else rest
    path = _SCRATCH / f"input-{os.getpid()}.snap"
    path.write_bytes(raw)
    snap, manifest = load_manifest(path)
    snap.close()
    for state in manifest.vcpus:
        state.cpuid_entries()
    _ = manifest.vm.clock_ns
    manifest.boot.check_same(manifest.boot)
    restore_devices(platform_devices(PcPlatform()), manifest.devices)


TARGET = Target("snapshot", one_input, seeds, offsets, max_len=1 << 16,
                description="open_snapshot, Manifest.from_plain, devices' restore")

if __name__ == "__main__":
    atheris_main(TARGET)
