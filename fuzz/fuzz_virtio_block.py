"""virtio-blk under a hostile driver (see fuzz/virtio_ops.py), on a read-only image and a
throwaway one: nothing escapes, and neither image file ever changes."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import atexit
import hashlib
import shutil
import struct
import tempfile
from pathlib import Path

from fuzz.harness import Target, atheris_main
from fuzz.virtio_ops import request_seed, run_ops
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.block import BlockDevice, Disk
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.hv import MemoryVM

IMAGE_BYTES = 64 * 512
_dir = Path(tempfile.mkdtemp(prefix="vmboot-fuzz-blk-"))
atexit.register(shutil.rmtree, _dir, True)
_image = _dir / "disk.img"
_image.write_bytes(bytes(range(256)) * (IMAGE_BYTES // 256))
_digest = hashlib.sha256(_image.read_bytes()).hexdigest()
_flip = [False]


def _make() -> BlockDevice:
    _flip[0] = not _flip[0]
    return BlockDevice(Disk(_image, read_only=_flip[0], throwaway=not _flip[0], serial="fuzz"))


def _check(device: VirtioDevice, vm: MemoryVM) -> None:
    assert hashlib.sha256(_image.read_bytes()).hexdigest() == _digest, "the image file changed"


def one_input(data: bytes) -> None:
    run_ops(data, _make, _check)


def _header(kind: int, sector: int) -> bytes:
    return struct.pack("<IIQ", kind, 0, sector)


def _seeds() -> list[bytes]:
    return [
        request_seed(0, _header(spec.BLK_T_IN, 1), 16, [512, 1]),
        request_seed(0, _header(spec.BLK_T_OUT, 2) + bytes(512), 528, [1]),
        request_seed(0, _header(spec.BLK_T_GET_ID, 0), 16, [20, 1]),
        request_seed(0, _header(spec.BLK_T_FLUSH, 0), 16, [1]),
        request_seed(0, _header(spec.BLK_T_WRITE_ZEROES, 0) + struct.pack("<QII", 0, 8, 0), 32, [1]),
    ]


TARGET = Target("virtio_block", one_input, _seeds, max_len=4096,
                description="virtio-blk requests under a hostile driver; image files unchanged")

if __name__ == "__main__":
    atheris_main(TARGET)
