"""`vmboot inspect`: text and --json, and errors with exit status 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bzimage_builder import BzImageSpec, build_bzimage
from conftest import shared_kernel_file
from vmboot.linux import bootparam as bp


def _vmboot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmboot", *args], capture_output=True, text=True)


def test_inspect_json_tiny_kernel() -> None:
    path = shared_kernel_file("tiny-bzImage")
    out = _vmboot("inspect", "--json", str(path))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    raw = path.read_bytes()
    assert info["kernel_version"].startswith("6.1.192 ")
    assert info["compression"] == "lz4"
    assert info["default_load_address"] == 0x1000000
    assert info["entry_point"] == 0x1000200
    assert info["entry_64"]["ok"] is True
    assert "XLF_KERNEL_64" in info["xloadflags"] and "LOADED_HIGH" in info["loadflags"]
    hdr = info["setup_header"]
    assert set(hdr) == {f.name for f in bp.SETUP_HEADER_FIELDS}
    for f in bp.SETUP_HEADER_FIELDS:
        assert hdr[f.name] == int.from_bytes(raw[f.offset : f.offset + f.size], "little"), f.name


def test_inspect_text_lists_every_field(tmp_path: Path) -> None:
    img = tmp_path / "old.bzImage"
    img.write_bytes(build_bzimage(BzImageSpec(version=0x0209, xloadflags=0)))
    out = _vmboot("inspect", str(img))
    assert out.returncode == 0, out.stderr
    for f in bp.SETUP_HEADER_FIELDS:
        assert f" {f.name} " in out.stdout
    assert "not defined before protocol 2.10" in out.stdout  # pref_address on a 2.09 kernel
    assert "64-bit entry usable:  NO" in out.stdout


def test_inspect_errors(tmp_path: Path) -> None:
    bad = tmp_path / "initrd.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + bytes(64))
    out = _vmboot("inspect", str(bad))
    assert out.returncode == 1
    assert "gzip-compressed" in out.stderr and str(bad) in out.stderr
    missing = _vmboot("inspect", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    assert _vmboot().returncode == 2


def test_inspect_elf_vmlinux() -> None:
    path = shared_kernel_file("tiny-vmlinux")
    out = _vmboot("inspect", "--json", str(path))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["e_entry"] == 0x1000000
    assert info["pvh_entry"] is not None and info["default_entry"] == "pvh"
    assert info["kernel_version"].startswith("Linux version 6.1.192 ")
    loads = [s for s in info["segments"] if s["type"] == "LOAD"]
    assert loads[0]["paddr"] == 0x1000000 and loads[0]["vaddr"] == 0xFFFFFFFF81000000
    text = _vmboot("inspect", str(path))
    assert text.returncode == 0 and "pvh" in text.stdout.lower()


def test_every_kernel_format_has_a_display() -> None:
    from vmboot.cli.inspect import DESCRIBERS
    from vmboot.linux.kernel import KernelFormat

    assert set(DESCRIBERS) == set(KernelFormat)


def test_inspect_dispatches_on_the_kernel_format() -> None:
    from elf_builder import simple_kernel
    from vmboot.cli.inspect import describe_kernel, kernel_summary
    from vmboot.linux.kernel import KernelFormat
    from vmboot.linux.loader.detect import load_kernel

    bz = load_kernel(build_bzimage())
    elf = load_kernel(simple_kernel())
    assert bz.format is KernelFormat.BZIMAGE and elf.format is KernelFormat.VMLINUX
    bz_info, elf_info = describe_kernel(bz), describe_kernel(elf)
    assert bz_info["format"] == KernelFormat.BZIMAGE and "setup_header" in bz_info
    assert elf_info["format"] == KernelFormat.VMLINUX and "segments" in elf_info
    assert kernel_summary(bz)[1].startswith("format:               bzImage")
    assert "program headers:" in kernel_summary(elf)
