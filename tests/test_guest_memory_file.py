"""Guest RAM mapped from a file (a snapshot's memory): copy-on-write, never written back."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from conftest import requires_kvm
from vmboot.errors import GuestMemoryError
from vmboot.hv.guest_memory import GuestMemory

SIZE = 4 << 20
OFFSET = mmap.ALLOCATIONGRANULARITY


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "ram"
    with path.open("wb") as f:
        f.truncate(OFFSET + SIZE)
        f.seek(OFFSET)
        f.write(b"\xaa" * SIZE)
    return path


def test_reads_the_file_and_keeps_writes_private(tmp_path: Path) -> None:
    path = _file(tmp_path)
    before = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        mem = GuestMemory.from_file(fd, OFFSET, SIZE)
    finally:
        os.close(fd)  # the mapping keeps its own reference
    try:
        assert mem.read(0x1000, 4) == b"\xaa" * 4
        mem.write(0x1000, b"host")
        assert mem.read(0x1000, 4) == b"host"
    finally:
        mem.close()
    assert path.read_bytes() == before


def test_zero_writes_zeros_not_the_files_bytes(tmp_path: Path) -> None:
    """MADV_DONTNEED on a file mapping would bring the file's bytes back, not zeros."""
    fd = os.open(_file(tmp_path), os.O_RDONLY)
    try:
        mem = GuestMemory.from_file(fd, OFFSET, SIZE)
    finally:
        os.close(fd)
    try:
        mem.zero(0, SIZE)
        assert mem.read(0, SIZE) == bytes(SIZE)
    finally:
        mem.close()


def test_an_unaligned_offset_is_refused(tmp_path: Path) -> None:
    fd = os.open(_file(tmp_path), os.O_RDONLY)
    try:
        with pytest.raises(GuestMemoryError, match="not a multiple of the mapping granularity"):
            GuestMemory.from_file(fd, OFFSET + 512, SIZE)
    finally:
        os.close(fd)


@requires_kvm
def test_kvm_vm_refuses_private_memory_when_shared_memory_is_asked() -> None:
    from vmboot.errors import HypervisorError
    from vmboot.hv.kvm import KvmVM

    memory = GuestMemory(16 << 20)
    try:
        with pytest.raises(HypervisorError, match=r"shared_memory=True but the given guest "
                                                  r"memory is private"):
            KvmVM(16 << 20, memory=memory, shared_memory=True)
    finally:
        memory.close()
