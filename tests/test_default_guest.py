"""The embedded default guest: shipped files, checksums, licences, the choice of busybox and kernel.

``VMBOOT_REBUILD_GUEST=1`` opts in to the slow test that rebuilds the guest with its
build script (root, Debian 12, apt, about an hour of CPU) and compares the checksums.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vmboot.errors import FetchError
from vmboot.execute.default_guest import (
    BUILD_SCRIPT_NAME,
    BUSYBOX_NAME,
    CHECKSUMMED,
    CHECKSUMS_NAME,
    GUEST_IMAGE_DIR,
    KERNEL_NAME,
    LICENCE_NAMES,
    SOURCES_NAME,
    read_checksums,
    read_versions,
    verify,
)
from vmboot.execute.discovery import static_elf_problem
from vmboot.execute.guest_choice import BUSYBOX_ENV, choose_busybox
from vmboot.linux.loader.bzimage import load_bzimage

REBUILD_ENV = "VMBOOT_REBUILD_GUEST"


def test_shipped_files_match_the_recorded_checksums() -> None:
    assert set(read_checksums()) == set(CHECKSUMMED)
    assert verify() == []


def test_verify_names_a_changed_or_missing_file(tmp_path: Path) -> None:
    for name in (*CHECKSUMMED, CHECKSUMS_NAME):
        shutil.copy(GUEST_IMAGE_DIR / name, tmp_path / name)
    with (tmp_path / BUSYBOX_NAME).open("ab") as f:
        f.write(b"\0")
    (tmp_path / KERNEL_NAME).unlink()
    bad = {m.name: m for m in verify(tmp_path)}
    assert set(bad) == {BUSYBOX_NAME, KERNEL_NAME}
    assert bad[KERNEL_NAME].actual is None
    assert bad[BUSYBOX_NAME].actual is not None and bad[BUSYBOX_NAME].actual != bad[BUSYBOX_NAME].recorded


def test_a_malformed_checksum_line_is_an_error(tmp_path: Path) -> None:
    (tmp_path / CHECKSUMS_NAME).write_text("abc bzImage\n")
    with pytest.raises(FetchError, match=r"SHA256SUMS:1: 'abc bzImage' is not a `sha256sum` line"):
        read_checksums(tmp_path)


def test_licences_versions_sources_and_script_ship_with_the_binaries() -> None:
    for name in (*LICENCE_NAMES, SOURCES_NAME, BUILD_SCRIPT_NAME):
        assert (GUEST_IMAGE_DIR / name).stat().st_size > 0, name
    assert "GNU GENERAL PUBLIC LICENSE" in (GUEST_IMAGE_DIR / "COPYING.linux").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in (GUEST_IMAGE_DIR / "COPYING.busybox").read_text()
    versions = read_versions()
    sources = (GUEST_IMAGE_DIR / SOURCES_NAME).read_text()
    script = (GUEST_IMAGE_DIR / BUILD_SCRIPT_NAME).read_text()
    # the source offer and the build script name the very versions recorded
    assert versions["linux-source-6.1"] in sources and versions["busybox-static"] in sources
    assert f"KVER_PIN:-{versions['linux-source-6.1']}" in script
    assert f"BUSYBOX_PIN:-{versions['busybox-static']}" in script


def test_the_kernel_is_the_version_recorded() -> None:
    image = load_bzimage(GUEST_IMAGE_DIR / KERNEL_NAME)
    assert image.kernel_version is not None
    assert image.kernel_version == read_versions()["kernel-release"]


GUEST_KERNEL_OPTIONS = ("SMP", "RANDOMIZE_BASE", "UNWINDER_ORC", "DEBUG_INFO_BTF", "KEXEC", "CRASH_CORE",
                        "VIRTIO_MMIO_CMDLINE_DEVICES", "VIRTIO_BLK", "VIRTIO_NET", "VIRTIO_CONSOLE",
                        "VIRTIO_VSOCKETS", "HW_RANDOM_VIRTIO", "VIRTIO_FS", "EXT4_FS", "OVERLAY_FS")
"""What the README and docs say the shipped kernel has."""


def test_the_kernel_config_has_what_the_docs_promise() -> None:
    config = (GUEST_IMAGE_DIR / "kernel.config").read_text().splitlines()
    version = read_versions()["kernel"]
    assert f"# Linux/x86_64 {version} Kernel Configuration" in config
    missing = [name for name in GUEST_KERNEL_OPTIONS if f"CONFIG_{name}=y" not in config]
    assert missing == []


def test_busybox_is_static() -> None:
    assert static_elf_problem(GUEST_IMAGE_DIR / BUSYBOX_NAME) is None


def test_busybox_choice_order(tmp_path: Path) -> None:
    shipped = GUEST_IMAGE_DIR / BUSYBOX_NAME
    mine = tmp_path / "mine"
    shutil.copy(shipped, mine)
    never: list[str] = []
    assert choose_busybox(environ={}, progress=never.append) == shipped
    assert choose_busybox(environ={BUSYBOX_ENV: str(mine)}, progress=never.append) == mine
    other = tmp_path / "other"
    shutil.copy(shipped, other)
    assert choose_busybox(other, environ={BUSYBOX_ENV: str(mine)}, progress=never.append) == other
    assert never == []


def test_busybox_from_the_environment_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"\$VMBOOT_BUSYBOX='.*nope': no such file"):
        choose_busybox(environ={BUSYBOX_ENV: str(tmp_path / "nope")})


def test_busybox_is_fetched_on_first_use_with_one_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fetched = tmp_path / "cache" / "busybox" / "busybox"

    def no_host_busybox() -> Path:
        raise FetchError("no static x86-64 busybox found")

    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("vmboot.execute.guest_choice.find_busybox", no_host_busybox)
    monkeypatch.setattr("vmboot.execute.fetch.fetch_busybox", lambda: fetched)
    lines: list[str] = []
    found = choose_busybox(environ={}, guest_image=tmp_path / "no-guest", progress=lines.append)
    assert found == fetched
    assert len(lines) == 1 and str(tmp_path / "cache" / "busybox") in lines[0] and "fetching" in lines[0]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get(REBUILD_ENV) != "1",
                    reason=f"rebuilding the guest takes about an hour; set {REBUILD_ENV}=1 to run it")
def test_rebuild_gives_the_recorded_checksums(tmp_path: Path) -> None:
    from conftest import require, require_tool

    require(os.geteuid() == 0, "root", "build.sh installs its build dependencies with apt-get")
    require_tool("apt-get", "apt")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work")}
    subprocess.run(["bash", str(GUEST_IMAGE_DIR / BUILD_SCRIPT_NAME)], env=env, check=True)
    assert read_checksums(out) == read_checksums()
    assert verify(out) == []


def test_kernel_is_fetched_on_first_use_when_none_is_found(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vmboot.errors import KernelImageError
    from vmboot.execute.guest_choice import choose_kernel

    fetched = tmp_path / "cache" / "debian-kernels" / "6.1.0-9" / "boot" / "vmlinuz-6.1.0-9-cloud-amd64"

    def nothing_found() -> Path:
        raise KernelImageError("no kernel to boot")

    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VMBOOT_KERNEL", raising=False)
    monkeypatch.setattr("vmboot.execute.guest_choice.find_kernel", nothing_found)
    monkeypatch.setattr("vmboot.execute.fetch.fetch_debian_kernel", lambda: fetched)
    lines: list[str] = []
    assert choose_kernel(progress=lines.append) == fetched
    assert len(lines) == 1 and str(tmp_path / "cache" / "debian-kernels") in lines[0]
    # an explicit choice is never replaced by a download
    mine = tmp_path / "mine"
    assert choose_kernel(mine, progress=lines.append) == mine
    monkeypatch.undo()
    monkeypatch.setenv("VMBOOT_KERNEL", str(tmp_path / "nope"))
    with pytest.raises(KernelImageError, match="VMBOOT_KERNEL"):
        choose_kernel(progress=lines.append)
    assert len(lines) == 1


def test_the_default_kernel_is_the_shipped_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vmboot.execute.guest_choice import choose_kernel

    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("VMBOOT_KERNEL", raising=False)
    never: list[str] = []
    assert choose_kernel(progress=never.append) == GUEST_IMAGE_DIR / KERNEL_NAME
    assert never == []


@pytest.mark.slow
def test_the_wheel_carries_the_guest(tmp_path: Path) -> None:
    """`pip wheel .` packs every file of the guest image (package data), so `pip install` has it."""
    import sys
    import zipfile

    from conftest import REPO

    # build isolation: pip installs the build requirements of pyproject.toml from the index
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("vmboot-*.whl")
    with zipfile.ZipFile(wheel) as z:
        packed = {name: z.getinfo(name).file_size for name in z.namelist()}
    for path in GUEST_IMAGE_DIR.iterdir():
        assert packed.get(f"vmboot/guest_image/{path.name}") == path.stat().st_size, path.name
