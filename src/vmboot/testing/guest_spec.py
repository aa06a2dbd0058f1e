"""Which guest a test gets: ``@pytest.mark.vmboot(kernel=..., cpus=..., memory=..., share=[...])``
over the session's defaults (``--vmboot-kernel`` and the other options, ini settings,
``$VMBOOT_KERNEL``, the kernel vmboot ships).

A :class:`GuestSpec` is plain, hashable data: tests with equal specs share one snapshot.
Every value is checked when the spec is made, before anything boots.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmboot import __version__
from vmboot.config import DEFAULT_CMDLINE, DEFAULT_MEMORY, MAX_CPUS, MIN_CPUS
from vmboot.errors import UsageError
from vmboot.testing.names import MARKER, MARKER_KEYS
from vmboot.units import format_size, parse_size

GUEST_CMDLINE = f"{DEFAULT_CMDLINE} loglevel=5"
"""The guest's kernel command line: warnings and worse reach the console (the verdicts read
it), routine boot messages do not (each console byte costs the guest an exit). On a host that
emulates guest ring 0 :func:`guest_cmdline` adds the snapshot clocksource."""


def guest_cmdline() -> str:
    """:data:`GUEST_CMDLINE`, plus :data:`~vmboot.vmm.snapshots.SNAPSHOT_CLOCKSOURCE` on a PVM
    host, where a restored guest would otherwise first catch up the snapshot's age."""
    from vmboot.hv.kvm.host import host_is_emulating
    from vmboot.vmm.snapshots import SNAPSHOT_CLOCKSOURCE

    return f"{GUEST_CMDLINE} {SNAPSHOT_CLOCKSOURCE}" if host_is_emulating() else GUEST_CMDLINE


@dataclass(frozen=True)
class ShareSpec:
    """A host directory for the guest, as ``--share`` takes it: ``DIR[:TAG][,ro]``."""

    source: Path
    tag: str
    read_only: bool = False

    def describe(self) -> str:
        return f"{self.source}:{self.tag}{',ro' if self.read_only else ''}"


@dataclass(frozen=True)
class GuestSpec:
    """Everything the guest of a test is made from (its snapshot's identity, with the image)."""

    kernel: Path
    cpus: int = MIN_CPUS
    memory: int = parse_size(DEFAULT_MEMORY)
    shares: tuple[ShareSpec, ...] = ()
    cmdline: str = GUEST_CMDLINE

    def describe(self) -> str:
        """``tiny-bzImage, 1 vCPU, 256 MiB`` (and the shares)."""
        parts = [self.kernel.name, f"{self.cpus} vCPU{'s' if self.cpus > 1 else ''}",
                 format_size(self.memory)]
        parts.extend(f"share {s.describe()}" for s in self.shares)
        return ", ".join(parts)

    def key(self, image: bytes) -> str:
        """The cache key of this guest booted with the initramfs ``image``: it changes with
        the kernel's bytes, the image, every setting and vmboot's version."""
        h = hashlib.sha256()
        with open(self.kernel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(hashlib.sha256(image).digest())
        h.update(json.dumps([self.cpus, self.memory, self.cmdline, __version__,
                             [s.describe() for s in self.shares]]).encode())
        return h.hexdigest()[:32]


@dataclass(frozen=True)
class SpecDefaults:
    """The session's defaults for what a test's marker does not say."""

    kernel: str | None = None
    cpus: int | str = MIN_CPUS
    memory: int | str = DEFAULT_MEMORY


def merge_markers(markers: Iterable[Mapping[str, object]]) -> dict[str, object]:
    """The marker keywords that apply, closest marker first (a function's over its module's);
    an unknown keyword or a positional argument is refused."""
    merged: dict[str, object] = {}
    for kwargs in markers:
        unknown = sorted(set(kwargs) - set(MARKER_KEYS))
        if unknown:
            raise UsageError(f"@pytest.mark.{MARKER}: unknown keyword {', '.join(unknown)}; "
                             f"it takes {', '.join(MARKER_KEYS)}")
        for key, value in kwargs.items():
            merged.setdefault(key, value)
    return merged


def guest_spec(marker: Mapping[str, object], defaults: SpecDefaults,
               environ: Mapping[str, str] | None = None) -> GuestSpec:
    """The guest for a test whose markers say ``marker`` (see :func:`merge_markers`)."""
    where = f"@pytest.mark.{MARKER}"
    kernel = _kernel(marker.get("kernel"), defaults.kernel, environ, where)
    cpus = _cpus(marker.get("cpus", defaults.cpus), where if "cpus" in marker else "--vmboot-cpus")
    memory_what = f"{where}(memory=...)" if "memory" in marker else "--vmboot-memory"
    memory = parse_size(_text_or_int(marker.get("memory", defaults.memory), memory_what), memory_what)
    if memory <= 0:
        raise UsageError(f"{memory_what}: 0 bytes of guest RAM; give a size such as {DEFAULT_MEMORY}")
    shares = tuple(_share(item, where) for item in _share_list(marker.get("share", ()), where))
    return GuestSpec(kernel, cpus, memory, shares, guest_cmdline())


def _kernel(from_marker: object, default: str | None, environ: Mapping[str, str] | None,
            where: str) -> Path:
    from vmboot.execute.discovery import KERNEL_ENV

    env = os.environ if environ is None else environ
    if from_marker is not None:
        if not isinstance(from_marker, str | os.PathLike):
            raise UsageError(f"{where}(kernel={from_marker!r}): not a path; give the kernel file")
        path, what = Path(from_marker), f"{where}(kernel=...)"
    elif default:
        path, what = Path(default), "--vmboot-kernel"
    elif env.get(KERNEL_ENV):
        path, what = Path(env[KERNEL_ENV]), f"${KERNEL_ENV}"
    else:
        from vmboot.execute.guest_choice import choose_kernel

        return choose_kernel(None)
    if not path.is_file():
        raise UsageError(f"{what}: {str(path)!r} is not a file; give a bzImage or vmlinux")
    return path.resolve()


def _cpus(value: object, what: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_CPUS <= value <= MAX_CPUS:
        raise UsageError(f"{what}: cpus={value!r} is not a whole number in {MIN_CPUS}..{MAX_CPUS}; "
                         f"give between {MIN_CPUS} and {MAX_CPUS} vCPUs")
    return value


def _text_or_int(value: object, what: str) -> str | int:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return value
    raise UsageError(f"{what}: {value!r} is not a size; give e.g. {DEFAULT_MEMORY}")


def _share_list(value: object, where: str) -> Sequence[object]:
    if isinstance(value, str | os.PathLike):
        return [value]
    if isinstance(value, list | tuple):
        return value
    raise UsageError(f"{where}(share={value!r}): give a list of DIR[:TAG][,ro]")


def _share(item: object, where: str) -> ShareSpec:
    from vmboot.devices.virtio.share import parse_share

    if not isinstance(item, str | os.PathLike):
        raise UsageError(f"{where}(share=[{item!r}]): not DIR[:TAG][,ro]")
    share = parse_share(os.fspath(item))
    return ShareSpec(share.source, share.tag, share.read_only)
