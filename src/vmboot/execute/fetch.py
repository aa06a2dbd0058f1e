"""Downloads ``vmboot exec`` may need: a static busybox and (optionally) a Debian kernel.

Both come from the Debian archive through the host's own apt: ``apt-get download``
fetches the .deb into a temporary directory (no root needed, nothing is installed) and
``dpkg-deb`` unpacks the one file wanted into the cache (:mod:`vmboot.execute.cache`).

- :func:`fetch_busybox`: Debian's ``busybox-static`` into ``<cache>/busybox/busybox``.
- :func:`fetch_debian_kernel`: the newest versioned ``linux-image-<ABI>-cloud-amd64``
  (the ``-unsigned`` variant when apt has it) into
  ``<cache>/debian-kernels/<ABI>/boot/``; only ``/boot`` is unpacked (the modules are
  ~100 MB and a kernel booted with an initramfs of our own does not need them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vmboot.errors import FetchError
from vmboot.execute.cache import (
    BUSYBOX_SUBDIR,
    KERNELS_SUBDIR,
    cache_limit,
    cache_subdir,
    keep_within_limit,
)
from vmboot.execute.discovery import cached_busybox, check_static_busybox, static_elf_problem

BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX_IN_DEB = ("bin/busybox", "usr/bin/busybox")
"""Where busybox-static puts the binary (bookworm: /bin; later releases: /usr/bin)."""
SOURCE_RECORD = "SOURCE"

KERNEL_FLAVOUR = "cloud-amd64"
KERNEL_PACKAGE_RE = re.compile(
    r"^linux-image-(?P<abi>\d+(?:\.\d+)*-\d+)-cloud-amd64(?P<unsigned>-unsigned)?$"
)
"""Versioned cloud kernel packages, e.g. linux-image-6.1.0-41-cloud-amd64(-unsigned)."""
APT_TIMEOUT = 600
"""Seconds one apt-get/dpkg-deb run may take."""
EXECUTABLE_MODE = 0o755


# -- apt helpers ----------------------------------------------------------------------------

def _run(cmd: list[str], *, cwd: Path | None = None, what: str) -> str:
    tool = cmd[0]
    if shutil.which(tool) is None:
        raise FetchError(f"{what}: `{tool}` is not installed; this needs a Debian or Ubuntu host with apt")
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise FetchError(f"{what}: `{' '.join(cmd)}` took more than {APT_TIMEOUT} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise FetchError(
            f"{what}: `{' '.join(cmd)}` exited with status {done.returncode}: {' / '.join(tail)} "
            "(is the package in apt's lists? run `apt-get update`)"
        )
    return done.stdout


def apt_download(package: str, into: Path) -> Path:
    """``apt-get download package`` into ``into``; the .deb's path."""
    _run(["apt-get", "download", "-q", package], cwd=into, what=f"downloading {package}")
    debs = sorted(into.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise FetchError(f"downloading {package}: expected one {package}_*.deb in {into}, found {debs}")
    return debs[0]


def _install_file(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` atomically (a temporary name in the same directory, then rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    tmp.chmod(EXECUTABLE_MODE)
    os.replace(tmp, dest)


# -- busybox --------------------------------------------------------------------------------

def fetch_busybox(*, force: bool = False) -> Path:
    """Download Debian's busybox-static into the cache (unless a valid one is there); its path."""
    dest = cached_busybox()
    if not force and dest.is_file() and static_elf_problem(dest) is None:
        return dest
    cache_limit()  # a wrong $VMBOOT_CACHE_MAX is refused before the download
    cache_subdir(BUSYBOX_SUBDIR, create=True)
    with tempfile.TemporaryDirectory(prefix="vmboot-busybox-") as tmp_name:
        tmp = Path(tmp_name)
        deb = apt_download(BUSYBOX_PACKAGE, tmp)
        root = tmp / "root"
        _run(["dpkg-deb", "-x", str(deb), str(root)], what=f"unpacking {deb.name}")
        found = [root / rel for rel in BUSYBOX_IN_DEB if (root / rel).is_file()]
        if not found:
            raise FetchError(f"{deb.name} has no busybox binary at {' or '.join(BUSYBOX_IN_DEB)}")
        check_static_busybox(found[0])
        _install_file(found[0], dest)
        (dest.parent / SOURCE_RECORD).write_text(deb.name + "\n")
    keep_within_limit(dest.parent)
    return dest


# -- Debian kernel --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KernelPackage:
    name: str
    abi: str
    unsigned: bool

    @property
    def version_key(self) -> tuple[int, ...]:
        return tuple(int(n) for n in re.split(r"[.-]", self.abi))


def parse_kernel_packages(names: list[str]) -> list[KernelPackage]:
    """The versioned cloud kernel packages among ``names``, newest first (unsigned before signed)."""
    found = []
    for name in names:
        m = KERNEL_PACKAGE_RE.match(name.strip())
        if m:
            found.append(KernelPackage(m.group(0), m.group("abi"), bool(m.group("unsigned"))))
    return sorted(found, key=lambda p: (p.version_key, p.unsigned), reverse=True)


def newest_kernel_package() -> KernelPackage:
    """The newest versioned cloud kernel package apt knows."""
    out = _run(["apt-cache", "search", "--names-only", f"^linux-image-[0-9].*-{KERNEL_FLAVOUR}"],
               what="listing Debian cloud kernels")
    packages = parse_kernel_packages([line.split(" - ")[0] for line in out.splitlines()])
    if not packages:
        raise FetchError(
            f"apt knows no linux-image-<ABI>-{KERNEL_FLAVOUR} package; on Debian run `apt-get update` "
            "(the cloud kernels are in the main archive)"
        )
    return packages[0]


def extract_boot_members(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract the regular files and directories under ``boot/`` of ``tar`` into ``dest``;
    a name with ``..`` or an absolute one is skipped. With extraction filters (Python
    3.11.4 and later) the "data" filter applies too; Debian 12's Python 3.11.2 has none,
    and there the file modes, owners and times of the archive are not applied."""
    filtered = hasattr(tarfile, "data_filter")
    for member in tar:
        path = PurePosixPath(member.name)
        if (path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir())
                or member.name.lstrip("./").split("/", 1)[0] != "boot"):
            continue
        if filtered:
            tar.extract(member, dest, filter="data")
        else:
            tar.extract(member, dest, set_attrs=False)


def _extract_boot(deb: Path, dest: Path) -> None:
    """Unpack only ``./boot/`` of ``deb`` into ``dest`` (``dpkg-deb --fsys-tarfile``)."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            extract_boot_members(tar, dest)
    finally:
        proc.stdout.close()
        status = proc.wait()
    if status != 0:
        raise FetchError(f"unpacking {deb.name}: dpkg-deb --fsys-tarfile exited with status {status}")


def fetch_debian_kernel(*, force: bool = False) -> Path:
    """Download the newest Debian cloud kernel into the cache; the path of its vmlinuz."""
    package = newest_kernel_package()
    flavour = f"{package.abi}-{KERNEL_FLAVOUR}"
    dest = cache_subdir(KERNELS_SUBDIR) / package.abi
    vmlinuz = dest / "boot" / f"vmlinuz-{flavour}"
    if vmlinuz.is_file() and not force:
        return vmlinuz
    cache_limit()  # a wrong $VMBOOT_CACHE_MAX is refused before the download
    cache_subdir(KERNELS_SUBDIR, create=True)
    with tempfile.TemporaryDirectory(prefix="vmboot-kernel-") as tmp_name:
        tmp = Path(tmp_name)
        deb = apt_download(package.name, tmp)
        staging = tmp / "root"
        _extract_boot(deb, staging)
        unpacked = staging / "boot" / f"vmlinuz-{flavour}"
        if not unpacked.is_file():
            raise FetchError(f"{deb.name} has no boot/vmlinuz-{flavour}")
        for item in sorted((staging / "boot").iterdir()):
            if item.is_file():
                _install_file(item, dest / "boot" / item.name)
    keep_within_limit(dest)
    return vmlinuz
