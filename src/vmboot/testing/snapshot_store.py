"""One saved guest per guest configuration, in the vmboot cache; a fresh guest per test.

:func:`prepare` makes (once) and finds the snapshot of a :class:`GuestSpec`:
``<cache>/snapshots/pytest-<key>.snap``, the guest booted with the agent image until its
agent greeted the host, then paused and saved. The first process to need it makes it
holding ``<name>.make.lock`` exclusively; the others (pytest-xdist workers, other
sessions) wait on that lock and then use the file. Every process holds ``<name>.lock``
shared for as long as it restores from the file, so the cache's size limit never removes
it from under a session. Restores map the file copy-on-write and never write it. A snapshot
older than ``max_age`` (``--vmboot-max-age``; by default none is) is made again, in a new
file renamed over the old one, so sessions still restoring the old one keep it.

Each restored guest gets fresh entropy and the host's wall time from the agent's resume
message (:meth:`~vmboot.vmm.guest_agent.GuestAgent.resume`), so no two tests share random
state. Shares (virtio-fs) are saved unused: the agent-ready guest has not mounted them, and
each restore starts a fresh virtiofsd. Every test under ``--vmboot-cold`` boots its own
guest instead.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vmboot.execute.cache import (
    SNAPSHOTS_SUBDIR,
    HeldLock,
    cache_subdir,
    file_lock,
    keep_within_limit,
    snapshot_locks,
    touch,
)
from vmboot.testing.guest_spec import GuestSpec
from vmboot.testing.names import DEFAULT_BOOT_TIMEOUT

if TYPE_CHECKING:
    from vmboot.testing.guest_vm import GuestVM
    from vmboot.vmm.guest_agent import GuestAgent
    from vmboot.vmm.machine import Machine, RunResult

SNAPSHOT_PREFIX = "pytest-"


@dataclass
class PreparedGuest:
    """What every test with one guest configuration starts from."""

    spec: GuestSpec
    busybox: Path
    image: bytes
    snapshot: Path | None = None
    """The saved guest to restore (None: each test boots its own)."""
    cold_reason: str | None = None
    """Why each test boots its own guest, when it does."""
    max_age: float | None = None
    """Seconds after which the snapshot is made again (None: never)."""
    _held: HeldLock | None = field(default=None, repr=False)

    def stale(self) -> bool:
        """True when the snapshot is older than :attr:`max_age` (then prepare it again)."""
        return self.snapshot is not None and _stale(snapshot_locks(self.snapshot)[1], self.max_age)

    def release(self) -> None:
        """Let the cache's size limit remove the snapshot again (end of the session)."""
        if self._held is not None:
            self._held.release()
            self._held = None


def new_machine(spec: GuestSpec, image: bytes,
                on_end: Callable[[RunResult], object] | None = None
                ) -> tuple[Machine, GuestAgent[RunResult]]:
    """A machine for ``spec`` (not started) with the agent's console port, and its agent
    (``on_end`` gets how each of its runs ended)."""
    from vmboot.devices.virtio.share import Share
    from vmboot.vmm.guest_agent import AgentBridge, GuestAgent
    from vmboot.vmm.machine import Machine

    bridge = AgentBridge()
    shares = [Share(s.source, s.tag, s.read_only) for s in spec.shares]
    try:
        machine = Machine(spec.kernel, initrd=image, cmdline=spec.cmdline, memory=spec.memory,
                          cpus=spec.cpus, console_ports=bridge.console_ports, shares=shares,
                          on_panic="trace", on_timeout="trace")
    except BaseException:
        bridge.close()
        raise
    return machine, GuestAgent(machine, bridge, on_end)


def _stale(make_lock: Path, max_age: float | None) -> bool:
    """True when the snapshot was made more than ``max_age`` seconds ago (the make lock's
    modification time is when it was made)."""
    if max_age is None:
        return False
    try:
        made = make_lock.stat().st_mtime
    except FileNotFoundError:
        return False
    return time.time() - made > max_age


def prepare(spec: GuestSpec, *, cold: bool, boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
            max_age: float | None = None) -> PreparedGuest:
    """The image of ``spec``'s guest and, unless ``cold``, its snapshot: made if missing, or
    made again when older than ``max_age`` seconds (None: kept however old)."""
    from vmboot.execute.guest_choice import choose_busybox
    from vmboot.testing.agent_image import build_agent_initramfs

    busybox = choose_busybox(None)
    image = build_agent_initramfs(busybox)
    if cold:
        return PreparedGuest(spec, busybox, image, cold_reason="--vmboot-cold")
    path = cache_subdir(SNAPSHOTS_SUBDIR, create=True) / f"{SNAPSHOT_PREFIX}{spec.key(image)}.snap"
    use_lock, make_lock = snapshot_locks(path)
    held = HeldLock(use_lock)
    try:
        if not path.exists() or _stale(make_lock, max_age):
            with file_lock(make_lock, exclusive=True):
                if not path.exists() or _stale(make_lock, max_age):
                    save_agent_ready(spec, image, path, boot_timeout)
                    os.utime(make_lock)
            keep_within_limit(path)
        touch(path)
    except BaseException:
        held.release()
        raise
    return PreparedGuest(spec, busybox, image, snapshot=path, max_age=max_age, _held=held)


def save_agent_ready(spec: GuestSpec, image: bytes, path: Path, boot_timeout: float) -> None:
    """Boot ``spec``'s guest until its agent greets the host, pause it and save it to ``path``
    (written beside it and renamed, so no process ever sees half a file)."""
    machine, agent = new_machine(spec, image)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with machine:
            agent.start(boot_timeout)
            agent.stop()
            machine.snapshot(tmp)
        os.replace(tmp, path)
    finally:
        agent.link.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def start_guest(prepared: PreparedGuest, *, boot_timeout: float, exec_timeout: float) -> GuestVM:
    """A fresh guest for one test: restored from the snapshot, or booted (cold)."""
    from vmboot.testing.guest_vm import GuestVM

    guest: GuestVM | None = None

    def on_end(result: RunResult) -> None:
        if guest is not None:
            guest.ended_with(result)

    machine, agent = new_machine(prepared.spec, prepared.image, on_end)
    guest = GuestVM(machine, agent, prepared.spec, prepared.busybox,
                    restored=prepared.snapshot is not None, exec_timeout=exec_timeout)
    try:
        if prepared.snapshot is not None:
            machine.restore(prepared.snapshot)
            agent.resume()  # fresh entropy and the host's wall time for this guest
        else:
            machine.start()
            agent.start(boot_timeout)
    except BaseException:
        guest.close()
        raise
    return guest
