"""vmboot.execute.cache, vmboot.execute.fetch and the `vmboot fetch` verb."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import require, require_tool
from vmboot.cli.main import main
from vmboot.elf import PT_INTERP, ElfFile
from vmboot.errors import FetchError
from vmboot.execute.cache import cache_dir
from vmboot.execute.discovery import cached_busybox, find_busybox, static_elf_problem
from vmboot.execute.fetch import fetch_busybox, fetch_debian_kernel, parse_kernel_packages


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cache_dir({"VMBOOT_CACHE": "/a", "XDG_CACHE_HOME": "/b", "HOME": "/h"}) == Path("/a")
    assert cache_dir({"XDG_CACHE_HOME": "/b", "HOME": "/h"}) == Path("/b/vmboot")
    assert cache_dir({"VMBOOT_CACHE": "", "HOME": "/h"}) == Path("/h/.cache/vmboot")
    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    assert cached_busybox() == tmp_path / "busybox" / "busybox"


def test_static_check_reads_program_headers(tmp_path: Path) -> None:
    ls = Path(shutil.which("ls") or "/bin/ls")
    assert "dynamically linked" in (static_elf_problem(ls) or "")
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert "bad ELF magic" in (static_elf_problem(script) or "")
    assert "cannot read" in (static_elf_problem(tmp_path / "missing") or "")


def test_find_busybox_explains_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "busybox"
    shutil.copy(shutil.which("ls", path="/usr/bin:/bin") or "/bin/ls", fake)  # a dynamic ELF named busybox
    monkeypatch.setattr("vmboot.execute.discovery.BUSYBOX_SYSTEM_PATHS", ())
    with pytest.raises(FetchError, match=r"no static x86-64 busybox.*dynamically linked.*fetch busybox"):
        find_busybox()


def test_kernel_package_choice() -> None:
    names = ["linux-image-6.1.0-9-cloud-amd64", "linux-image-6.1.0-41-cloud-amd64",
             "linux-image-6.1.0-41-cloud-amd64-unsigned", "linux-image-cloud-amd64",
             "linux-image-6.1.0-41-cloud-amd64-dbg", "linux-image-5.10.0-30-cloud-amd64"]
    chosen = parse_kernel_packages(names)
    assert [p.name for p in chosen] == ["linux-image-6.1.0-41-cloud-amd64-unsigned",
                                        "linux-image-6.1.0-41-cloud-amd64",
                                        "linux-image-6.1.0-9-cloud-amd64",
                                        "linux-image-5.10.0-30-cloud-amd64"]
    assert chosen[0].abi == "6.1.0-41"


def test_fetch_without_apt_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FetchError, match="`apt-get` is not installed"):
        fetch_busybox()


@pytest.mark.network
def test_fetch_busybox_for_real(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path))
    require_apt_package("busybox-static")
    path = fetch_busybox()  # a failure now is vmboot's or the archive's: it fails the test
    assert path == tmp_path / "busybox" / "busybox"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    with ElfFile.open(path) as elf:  # x86-64 ELF64 (ElfFile checks), and static
        assert not any(seg.type == PT_INTERP for seg in elf.segments)
    assert (tmp_path / "busybox" / "SOURCE").read_text().startswith("busybox-static_")
    # Cached now: the CLI answers from the cache, and find_busybox sees it.
    assert main(["fetch", "busybox", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"what": "busybox", "path": str(path), "cache": str(tmp_path)}
    monkeypatch.setattr("vmboot.execute.discovery.BUSYBOX_SYSTEM_PATHS", ())
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert find_busybox() == path
    assert os.access(path, os.X_OK)


def test_cli_fetch_reports_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["fetch", "kernel"]) == 1
    assert "apt-cache` is not installed" in capsys.readouterr().err


@pytest.mark.network
def test_fetch_debian_kernel_for_real(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path))
    require_apt_package("linux-image-cloud-amd64")
    vmlinuz = fetch_debian_kernel()
    assert vmlinuz.parent == tmp_path / "debian-kernels" / vmlinuz.parent.parent.name / "boot"
    assert vmlinuz.name == f"vmlinuz-{vmlinuz.parent.parent.name}-cloud-amd64"
    head = vmlinuz.read_bytes()[:0x210]
    assert head[0x202:0x206] == b"HdrS"  # a bzImage with a boot protocol header
    assert not (tmp_path / "debian-kernels" / vmlinuz.parent.parent.name / "lib").exists()  # /boot only
    assert fetch_debian_kernel() == vmlinuz  # second call: from the cache


def require_apt_package(name: str) -> None:
    """apt-get is here and its package lists know ``name`` (else skip, or fail under CI)."""
    apt_cache = require_tool("apt-cache", "apt")
    require_tool("apt-get", "apt")
    require_tool("dpkg-deb", "dpkg")
    shown = subprocess.run([apt_cache, "show", name], capture_output=True, text=True)
    require(shown.returncode == 0 and shown.stdout.strip(), f"Debian package {name}",
            "apt does not know it (run apt-get update)")


@pytest.mark.parametrize("without_filters", [False, True], ids=["this-python", "without-filters"])
def test_only_boot_is_unpacked_and_nothing_escapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  without_filters: bool) -> None:
    """/boot's files come out; a name with .. or an absolute one, a link and anything outside
    boot/ do not, with this Python's tarfile and with one without extraction filters (as
    Debian 12's 3.11.2)."""
    import io
    import tarfile

    from vmboot.execute.fetch import extract_boot_members

    if without_filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in [("./boot/vmlinuz-x", b"kernel"), ("./boot/../../escaped", b"no"),
                           ("/boot/absolute", b"no"), ("./usr/lib/other", b"no")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./boot/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    raw.seek(0)
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(fileobj=raw, mode="r|") as tar:
        extract_boot_members(tar, dest)
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert found == ["dest", "dest/boot", "dest/boot/vmlinuz-x"]
    assert (dest / "boot" / "vmlinuz-x").read_bytes() == b"kernel"
