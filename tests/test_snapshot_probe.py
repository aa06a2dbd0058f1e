"""Snapshots at the probe level: a counting guest saved mid-run and resumed in fresh VMs,
every KVM state structure round-tripped, and the file format's refusals."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import requires_kvm
from kvm_helpers import CODE_GPA, assemble, enter_long_mode
from vmboot.devices.pc import PcPlatform
from vmboot.devices.state import SavesState
from vmboot.errors import SnapshotError, SnapshotFormatError, SnapshotMismatchError
from vmboot.hv import Register
from vmboot.hv.kvm import KvmVM, abi
from vmboot.hv.kvm.state import (
    capabilities,
    get_vcpu_state,
    get_vm_state,
    set_vcpu_state,
    set_vm_state,
)
from vmboot.snapshot import BootFacts, load_manifest, restore_devices, restore_vm, save_snapshot
from vmboot.snapshot.format import HEADER, HEADER_FIELDS, MAGIC, state_checksum
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.runner import Runner
from vmboot.x86 import msr

pytestmark = [requires_kvm, pytest.mark.kvm]

MEMORY = 32 << 20
COUNTER_GPA = 0x9000
COUNTER = f"""
    mov rbx, {COUNTER_GPA:#x}
1:  inc qword ptr [rbx]
    inc rcx
    jmp 1b
"""
"""Counts in RCX and in memory at COUNTER_GPA, forever: the two stay equal."""
RUN_SECONDS = 0.2


def _facts(cmdline: str = "counter", kernel: bytes = b"counter-guest") -> BootFacts:
    return BootFacts(kernel_sha256=hashlib.sha256(kernel).hexdigest(), kernel_name="counter",
                     cmdline=cmdline, initrd_sha256=None, memory_bytes=MEMORY)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _devices(platform: PcPlatform) -> dict[str, SavesState]:
    return {"COM1": platform.console_serial, "rtc": platform.rtc, "i8042": platform.i8042}


def _counts(vm: KvmVM) -> tuple[int, int]:
    rcx = vm.vcpus[0].get_registers((Register.RCX,))[Register.RCX]
    (mem,) = struct.unpack("<Q", vm.memory.read(COUNTER_GPA, 8))
    return rcx, mem


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, tuple[int, int]]]:
    """A counter guest run for a while, then saved; yields the file and the saved counts."""
    path = tmp_path_factory.mktemp("snap") / "counter.snap"
    with KvmVM(MEMORY) as vm:
        vcpu = vm.create_vcpu(0)
        vm.write(CODE_GPA, assemble(COUNTER))
        enter_long_mode(vm, vcpu)
        result = Runner(vm, vcpu).run(timeout=RUN_SECONDS)
        assert result.reason is ExitReason.TIMEOUT
        counts = _counts(vm)
        platform = PcPlatform()
        platform.console_serial.push_input(b"queued")
        report = save_snapshot(path, vm, _devices(platform), _facts())
        assert report.vcpus == 1 and report.msrs > 0
        assert 0 < report.memory_bytes_written < MEMORY
    yield path, counts


def test_the_counter_was_saved_mid_run(snapshot: tuple[Path, tuple[int, int]]) -> None:
    _, (rcx, mem) = snapshot
    assert rcx > 0 and mem in (rcx, rcx + 1)  # stopped between the two increments or not


def test_restored_guest_continues_from_the_same_point(snapshot: tuple[Path, tuple[int, int]]) -> None:
    path, (rcx, mem) = snapshot
    for _ in range(2):  # twice from the same file: each restore starts at the saved point
        snap, manifest = load_manifest(path, _facts())
        with snap:
            vm = restore_vm(snap, manifest)
        with vm:
            assert _counts(vm) == (rcx, mem)
            platform = PcPlatform()
            restore_devices(_devices(platform), manifest.devices)
            set_vm_state(vm, manifest.vm)
            assert bytes(platform.console_serial.rx) == b"queued"
            result = Runner(vm, vm.vcpus[0]).run(timeout=RUN_SECONDS)
            assert result.reason is ExitReason.TIMEOUT
            new_rcx, new_mem = _counts(vm)
            assert new_rcx > rcx and new_mem in (new_rcx, new_rcx + 1)  # one program, continued


def test_restores_and_runs_leave_the_file_unchanged(snapshot: tuple[Path, tuple[int, int]]) -> None:
    path, _ = snapshot
    before = _sha256(path)
    snap, manifest = load_manifest(path, _facts())
    with snap:
        vm = restore_vm(snap, manifest)
    with vm:
        set_vm_state(vm, manifest.vm)
        vm.memory.write(0, b"\xff" * 4096)  # host writes, like guest ones, stay private
        Runner(vm, vm.vcpus[0]).run(timeout=RUN_SECONDS)
    assert _sha256(path) == before


def test_a_restored_guest_saved_over_its_own_file(snapshot: tuple[Path, tuple[int, int]],
                                                  tmp_path: Path) -> None:
    """Saving a restored guest to the file its memory is mapped from replaces the file
    without disturbing the running mapping; the new file resumes at the later point."""
    path = tmp_path / "chain.snap"
    path.write_bytes(snapshot[0].read_bytes())
    snap, manifest = load_manifest(path, _facts())
    with snap:
        vm = restore_vm(snap, manifest)
    with vm:
        set_vm_state(vm, manifest.vm)
        Runner(vm, vm.vcpus[0]).run(timeout=RUN_SECONDS)
        later = _counts(vm)
        save_snapshot(path, vm, {}, _facts())
        assert _counts(vm) == later  # the guest's own memory is unchanged by the save
    snap, manifest = load_manifest(path, _facts())
    with snap:
        vm = restore_vm(snap, manifest)
    with vm:
        assert _counts(vm) == later and later[0] > snapshot[1][0]


def test_zero_pages_are_holes_and_memory_is_page_aligned(snapshot: tuple[Path, tuple[int, int]]) -> None:
    path, _ = snapshot
    snap, _ = load_manifest(path)
    with snap:
        assert snap.memory_offset % 4096 == 0
        st = os.stat(path)
        assert st.st_size == snap.memory_offset + MEMORY
        assert st.st_blocks * 512 < MEMORY // 4  # the guest touched a few pages of 32 MiB


def test_a_running_vcpu_is_not_saved(tmp_path: Path) -> None:
    with KvmVM(MEMORY) as vm:
        vcpu = vm.create_vcpu(0)
        vm.write(CODE_GPA, assemble(COUNTER))
        enter_long_mode(vm, vcpu)
        runner = Runner(vm, vcpu)
        results: list[ExitReason] = []
        thread = threading.Thread(target=lambda: results.append(runner.run(timeout=30).reason))
        thread.start()
        try:
            while vm.memory.read(COUNTER_GPA, 8) == bytes(8):  # wait until the guest runs
                time.sleep(0.01)  # (memory only: a vCPU ioctl would wait for the run to end)
            with pytest.raises(SnapshotError, match="already running in another thread"):
                save_snapshot(tmp_path / "busy.snap", vm, {}, _facts())
        finally:
            runner.request_stop()
            thread.join()
        assert results == [ExitReason.STOPPED]
        assert not (tmp_path / "busy.snap").exists() and not list(tmp_path.iterdir())
        save_snapshot(tmp_path / "idle.snap", vm, {}, _facts())  # once stopped, it can be


def test_an_unwritable_path_is_refused(tmp_path: Path) -> None:
    with KvmVM(MEMORY) as vm:
        vm.create_vcpu(0)
        with pytest.raises(SnapshotError, match="cannot create it"):
            save_snapshot(tmp_path / "missing-dir" / "x.snap", vm, {}, _facts())


# -- every state structure: set then get gives back what was set ---------------------------
def test_vcpu_state_round_trips(tmp_path: Path) -> None:
    with KvmVM(MEMORY) as a, KvmVM(MEMORY) as b:
        va = a.create_vcpu(0)
        a.write(CODE_GPA, assemble(COUNTER))
        enter_long_mode(a, va)
        Runner(a, va).run(timeout=0.05)
        va.set_msrs({msr.MSR_LSTAR: 0xFFFFFFFF81000000, msr.MSR_STAR: 0x23001000000000})
        caps = capabilities(a)
        indices = a.kvm.msr_index_list()
        saved = get_vcpu_state(va, indices, caps)
        vb = b.create_vcpu(0)
        set_vcpu_state(vb, saved)
        again = get_vcpu_state(vb, indices, caps)
        for name in ("regs", "sregs", "fpu", "cpuid", "mp_state", "events", "debugregs",
                     "xsave", "xcrs", "lapic"):
            assert getattr(again, name) == getattr(saved, name), name
        tsc = msr.MSR_IA32_TSC
        assert {k: v for k, v in again.msrs.items() if k != tsc} == \
            {k: v for k, v in saved.msrs.items() if k != tsc}
        assert again.msrs[tsc] >= saved.msrs[tsc]  # the TSC runs on from the saved value
        assert again.msrs[msr.MSR_LSTAR] == 0xFFFFFFFF81000000


def test_vm_state_round_trips() -> None:
    with KvmVM(MEMORY) as a, KvmVM(MEMORY) as b:
        a.create_vcpu(0)
        b.create_vcpu(0)
        a.irq_line(4, True)  # some IOAPIC/PIC state that differs from reset
        saved = get_vm_state(a)
        set_vm_state(b, saved)
        again = get_vm_state(b)
        assert again.irqchips == saved.irqchips
        assert again.pit is not None and saved.pit is not None
        pa = abi.KvmPitState2.from_buffer_copy(saved.pit)
        pb = abi.KvmPitState2.from_buffer_copy(again.pit)
        for ca, cb in zip(pa.channels, pb.channels, strict=True):
            for field, *_ in abi.KvmPitChannelState._fields_:
                if field != "count_load_time":  # KVM re-bases it on its own clock
                    assert getattr(ca, field) == getattr(cb, field), field
        assert again.clock_ns >= saved.clock_ns  # continued, not restarted


# -- refusals --------------------------------------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _rewrite_manifest(path: Path, edit: dict[str, object]) -> None:
    """Change manifest fields and re-sign, as a snapshot written by another vmboot would be."""
    raw = bytearray(path.read_bytes())
    magic, version, flags, m_off, m_len, mem_off, mem_len, _ = HEADER.unpack_from(raw)
    manifest = json.loads(raw[m_off : m_off + m_len])
    manifest.update(edit)
    body = json.dumps(manifest).encode()
    assert m_off + len(body) <= mem_off
    fields = HEADER_FIELDS.pack(magic, version, flags, m_off, len(body), mem_off, mem_len)
    raw[:HEADER.size] = fields + state_checksum(fields, body)
    raw[m_off : m_off + len(body)] = body
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(("damage", "reason"), [
    ("truncated", "truncated"),
    ("short", "shorter than"),
    ("flipped", "checksum"),
    ("version", "format version 7"),
    ("magic", "not a vmboot snapshot"),
])
def test_damaged_files_are_refused(snapshot: tuple[Path, tuple[int, int]], tmp_path: Path,
                                   damage: str, reason: str) -> None:
    path = _copy(snapshot[0], tmp_path / "damaged.snap")
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "short":
        raw = raw[:40]
    elif damage == "flipped":
        raw[HEADER.size + 100] ^= 0x01
    elif damage == "version":
        struct.pack_into("<I", raw, len(MAGIC), 7)
    elif damage == "magic":
        raw[0:8] = b"NOTASNAP"
    path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotFormatError, match=reason):
        load_manifest(path)


def test_another_vmboot_version_is_refused(snapshot: tuple[Path, tuple[int, int]], tmp_path: Path) -> None:
    path = _copy(snapshot[0], tmp_path / "old.snap")
    _rewrite_manifest(path, {"vmboot_version": "0.0.1"})
    with pytest.raises(SnapshotMismatchError, match=r"written by vmboot 0\.0\.1"):
        load_manifest(path)


def test_a_damaged_state_value_is_refused(snapshot: tuple[Path, tuple[int, int]], tmp_path: Path) -> None:
    path = _copy(snapshot[0], tmp_path / "odd.snap")
    _rewrite_manifest(path, {"vcpus": [{"index": 0}]})
    with pytest.raises(SnapshotFormatError, match="field 'regs' is missing"):
        load_manifest(path)


def test_another_kernel_is_refused(snapshot: tuple[Path, tuple[int, int]]) -> None:
    with pytest.raises(SnapshotMismatchError, match="is not the kernel the snapshot was taken with"):
        load_manifest(snapshot[0], _facts(kernel=b"another kernel"))


def test_a_changed_command_line_is_refused(snapshot: tuple[Path, tuple[int, int]]) -> None:
    with pytest.raises(SnapshotMismatchError, match="command line 'counter quiet' differs"):
        load_manifest(snapshot[0], _facts(cmdline="counter quiet"))


def test_missing_host_cpu_features_are_refused(snapshot: tuple[Path, tuple[int, int]]) -> None:
    from vmboot.snapshot.host import check_capabilities, check_cpuid

    snap, manifest = load_manifest(snapshot[0])
    snap.close()
    saved = manifest.vcpus[0].cpuid_entries()
    check_cpuid(saved, saved, 0)
    leaf1 = next(e for e in saved if e.function == 1)
    weaker = [replace(e, edx=e.edx & ~(1 << 26)) if e is leaf1 else e for e in saved]  # SSE2
    with pytest.raises(SnapshotMismatchError, match=r"leaf 0x1.0 EDX bits 0x4000000"):
        check_cpuid(saved, weaker, 0)
    with pytest.raises(SnapshotMismatchError, match="xsave"):
        check_capabilities({"xsave": 1}, {"xsave": 0})


def test_where_the_agent_waits_is_saved(snapshot: tuple[Path, tuple[int, int]],
                                        tmp_path: Path) -> None:
    """A guest saved with its agent parked keeps the mailbox's address in the manifest (the
    counter guest has no agent: none is recorded)."""
    snap, manifest = load_manifest(snapshot[0], _facts())
    snap.close()
    assert manifest.agent_mailbox is None
    path = tmp_path / "parked.snap"
    with KvmVM(MEMORY) as vm:
        vm.create_vcpu(0)
        save_snapshot(path, vm, _devices(PcPlatform()), _facts(), agent_mailbox=0x7DB0000)
    snap, manifest = load_manifest(path, _facts())
    snap.close()
    assert manifest.agent_mailbox == 0x7DB0000
    assert manifest.to_plain()["agent"] == {"mailbox": 0x7DB0000}


@pytest.mark.parametrize("agent", ["mailbox", {"mailbox": -4096}, {"mailbox": "0x1000"},
                                   {"mailbox": True}])
def test_a_malformed_agent_mailbox_is_refused(snapshot: tuple[Path, tuple[int, int]],
                                              tmp_path: Path, agent: object) -> None:
    path = _copy(snapshot[0], tmp_path / "agent.snap")
    _rewrite_manifest(path, {"agent": agent})
    with pytest.raises(SnapshotFormatError, match=r"'agent' is .*not an object whose 'mailbox'"):
        load_manifest(path)
