"""Where ``vmboot exec`` finds its kernel and its busybox on this host.

The kernel (``kernel=None``, :func:`find_kernel`), in this order:

1. ``$VMBOOT_KERNEL``;
2. the kernel vmboot ships (:mod:`vmboot.execute.default_guest`), which boots on every KVM
   host, including those whose ``/dev/kvm`` is PVM;
3. the vmboot cache: the newest ``<cache>/debian-kernels/<ABI>/boot/vmlinuz-*`` that
   ``vmboot fetch kernel`` stored (pass it as ``kernel=`` to use it while the shipped
   kernel is installed: ``vmboot exec --kernel "$(vmboot fetch kernel)"``);
4. ``/boot/vmlinuz-$(uname -r)``, when it is readable.

A static busybox already on this host (:func:`find_busybox`; the guest's busybox is chosen
by :func:`vmboot.execute.guest_choice.choose_busybox`): ``busybox`` on ``$PATH``,
``/bin/busybox``, ``/usr/bin/busybox``, then the cache (``vmboot fetch busybox``). "Static"
is read from the ELF program headers: no ``PT_INTERP`` (so no dynamic loader is needed in
the guest).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from vmboot.errors import ElfFormatError, FetchError, KernelImageError
from vmboot.execute.cache import BUSYBOX_SUBDIR, KERNELS_SUBDIR, cache_dir
from vmboot.execute.default_guest import BUSYBOX_NAME, GUEST_IMAGE_DIR, shipped_kernel

KERNEL_ENV = "VMBOOT_KERNEL"
BOOT_DIR = Path("/boot")

HOW_TO_GET_A_KERNEL = (
    f"pass kernel= (--kernel), set ${KERNEL_ENV} to a bzImage, run `vmboot fetch kernel` "
    "(a Debian cloud kernel into the vmboot cache), or reinstall vmboot (its wheel ships a "
    "kernel that boots everywhere, including on hosts whose /dev/kvm is PVM)"
)
BUSYBOX_SYSTEM_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
HOW_TO_GET_BUSYBOX = (
    "use the one vmboot ships (no --busybox, $VMBOOT_BUSYBOX unset), get one with "
    "`vmboot fetch busybox` (downloads Debian's busybox-static into the vmboot cache through "
    "apt-get; run `apt-get update` first on a fresh machine), or install it system-wide "
    "with `apt-get install busybox-static`"
)


# -- the kernel -------------------------------------------------------------------------------

_VERSION_PART = re.compile(r"\d+|\D+")


def _version_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Natural sort key: runs of digits compare as numbers (6.1.0-10 after 6.1.0-9)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _VERSION_PART.findall(name))


def cached_kernels(cache: Path | None = None) -> list[Path]:
    """The kernels ``vmboot fetch kernel`` stored in the cache, newest first."""
    root = (cache_dir() if cache is None else cache) / KERNELS_SUBDIR
    found = [p for p in root.glob("*/boot/vmlinuz-*") if p.is_file()]
    return sorted(found, key=lambda p: _version_key(p.name), reverse=True)


def find_kernel(environ: Mapping[str, str] | None = None, *, cache: Path | None = None,
                boot_dir: Path = BOOT_DIR, release: str | None = None,
                guest_image: Path = GUEST_IMAGE_DIR) -> Path:
    """The kernel to boot when none is given (see the module docstring for the order).

    ``environ``, ``cache``, ``boot_dir``, ``release`` (``uname -r``) and ``guest_image``
    (the embedded guest's directory) default to this host's; tests pass their own.
    """
    env = os.environ if environ is None else environ
    from_env = env.get(KERNEL_ENV)
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise KernelImageError(
                f"${KERNEL_ENV}={from_env!r}: no such file (valid: the path of a bzImage; "
                f"unset it to use the cached or the shipped kernel)"
            )
        return path
    shipped = shipped_kernel(guest_image)
    if shipped is not None:
        return shipped
    tried = [f"${KERNEL_ENV} (unset)", "the kernel vmboot ships (not in this installation)"]
    if cache is None:
        cache = cache_dir(env)
    cached = cached_kernels(cache)
    if cached:
        return cached[0]
    tried.append(f"{cache}/debian-kernels/*/boot/vmlinuz-* (none)")
    host = boot_dir / f"vmlinuz-{os.uname().release if release is None else release}"
    if host.is_file() and os.access(host, os.R_OK):
        return host
    tried.append(f"{host} ({'not readable' if host.exists() else 'missing'})")
    raise KernelImageError(f"no kernel to boot; looked at {', '.join(tried)}; {HOW_TO_GET_A_KERNEL}")


# -- busybox ----------------------------------------------------------------------------------

def static_elf_problem(path: Path) -> str | None:
    """Why ``path`` is not a static x86-64 executable, or ``None`` if it is one."""
    from vmboot.elf import ET_DYN, ET_EXEC, PT_INTERP, ElfFile

    try:
        with ElfFile.open(path) as elf:
            if elf.e_type not in (ET_EXEC, ET_DYN):
                return f"ELF type {elf.e_type} is not an executable (valid: ET_EXEC or ET_DYN)"
            if any(seg.type == PT_INTERP for seg in elf.segments):
                return "it is dynamically linked (has a PT_INTERP program header)"
    except ElfFormatError as e:  # its message starts with the path: the caller names it once
        return str(e).removeprefix(f"{path}: ")
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    return None


def check_static_busybox(path: Path) -> Path:
    """``path`` if it is a static x86-64 ELF executable, else :class:`FetchError` saying why."""
    problem = static_elf_problem(path)
    if problem is not None:
        raise FetchError(f"busybox {path}: not usable in the guest: {problem}; {HOW_TO_GET_BUSYBOX}")
    return path


def cached_busybox() -> Path:
    """Where :func:`fetch_busybox` stores busybox (it may not exist)."""
    return cache_dir() / BUSYBOX_SUBDIR / BUSYBOX_NAME


def find_busybox() -> Path:
    """A static x86-64 busybox on this host (see the module docstring for the search order)."""
    candidates: list[Path] = []
    on_path = shutil.which(BUSYBOX_NAME)
    if on_path:
        candidates.append(Path(on_path))
    candidates += [*BUSYBOX_SYSTEM_PATHS, cached_busybox()]
    rejected: list[str] = []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        problem = static_elf_problem(candidate)
        if problem is None:
            return candidate
        rejected.append(f"{candidate}: {problem}")
    tried = ", ".join(str(c) for c in candidates)
    detail = f" (rejected: {'; '.join(rejected)})" if rejected else ""
    raise FetchError(f"no static x86-64 busybox found; looked at {tried}{detail}; {HOW_TO_GET_BUSYBOX}")
