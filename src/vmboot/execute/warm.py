"""Warm ``vmboot exec``: a guest booted once, saved when its agent is ready, resumed per run.

The first warm run of a guest (kernel, busybox and agent, memory, vCPUs, CPUID policy,
entry) boots :func:`~vmboot.execute.image.agent_initramfs` (the guest agent as init,
busybox for the commands),
waits until the agent answers on its virtio-console port and saves the guest to
``<cache>/snapshots/exec-<key>.snap``. Every warm run then restores that file (memory mapped
copy-on-write, so runs share it and never change it); the restore sends the agent fresh
entropy and the host's wall time (:meth:`vmboot.vmm.machine.Machine.restore`), and the
command runs through :meth:`~vmboot.vmm.machine.Machine.exec`. The key hashes everything
the saved guest depends on, vmboot's version included, so a changed kernel, busybox, agent
or vmboot gets a new snapshot instead of a refusal.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmboot.atomic_file import write_atomically
from vmboot.errors import FetchError, GuestError
from vmboot.execute.cache import (
    CACHE_ENV,
    DIGESTS_SUBDIR,
    IMAGES_SUBDIR,
    SNAPSHOTS_SUBDIR,
    HeldLock,
    cache_limit,
    cache_subdir,
    keep_within_limit,
    snapshot_locks,
    touch,
)
from vmboot.execute.layout import AGENT_CMDLINE, SHELL_PATH
from vmboot.file_digest import file_sha256
from vmboot.version import __version__

if TYPE_CHECKING:
    from vmboot.agent.client import StdinSource
    from vmboot.config import MachineConfig
    from vmboot.devices.virtio.share import Share
    from vmboot.execute.result import ExecResult
    from vmboot.linux.options import EntryChoice

WARM_BOOT_TIMEOUT = 600.0
"""Limit for the one boot that makes a warm snapshot (when the run itself has none)."""
WARM_CMDLINE = f"{AGENT_CMDLINE} no-kvmapf"
"""The warm guest's command line: an agent image's, and ``no-kvmapf`` (a restored guest
with asynchronous page faults on takes KVM's "wake all" interrupt, and reschedules before
its agent runs; they help only a guest whose memory the host swaps). The agent needs
nothing more on it (its port is its default).
On a host that emulates guest ring 0 :data:`~vmboot.vmm.snapshots.SNAPSHOT_CLOCKSOURCE` is
added (see there)."""
WARM_IMAGE_VERSION = 3
"""Part of the cache key: bumped when the warm guest's layout changes (2: the agent as init;
3: ``vmboot exec``'s agent image, the agent's output ports)."""
IMAGE_TOUCH_SECONDS = 24 * 3600.0
"""A warm image's modification time (its last use, for the cache's eviction order) is
renewed at most this often: each renewal is a new version of the file, hashed again."""
SHELL = "/" + SHELL_PATH
"""The agent image's busybox shell: it finds every applet without links or PATH."""
READY_PROBE = (SHELL, "-c", "true")
"""Run once at the warm boot: it returns when the agent answers, and the guest is saved then."""
"""A command ended by signal N is reported with exit status 128 + N, as a shell does."""

OutputCallback = Callable[[bytes], object]


def shell_argv(command: Sequence[str]) -> list[str]:
    """``command`` run as cold exec runs it: a name is looked up by busybox's shell (its
    applets need no PATH), a path is executed."""
    return [SHELL, "-c", 'exec "$@"', "sh", *command]


def warm_cmdline() -> str:
    from vmboot.hv.kvm.host import host_is_emulating
    from vmboot.vmm.snapshots import SNAPSHOT_CLOCKSOURCE

    return f"{WARM_CMDLINE} {SNAPSHOT_CLOCKSOURCE}" if host_is_emulating() else WARM_CMDLINE


def warm_image(busybox: Path) -> Path:
    """The warm guest's initramfs (:func:`~vmboot.execute.image.agent_initramfs` with
    ``busybox``), kept in the cache under the digest of its inputs (busybox, the agent,
    :data:`WARM_IMAGE_VERSION`) and built only when missing: a warm run with its snapshot
    saved reads neither busybox nor the image (their digests are remembered,
    :mod:`vmboot.file_digest`)."""
    from vmboot.agent import agent_binary

    memo = cache_subdir(DIGESTS_SUBDIR)
    inputs = json.dumps([file_sha256(busybox, memo), file_sha256(agent_binary(), memo),
                         WARM_IMAGE_VERSION])
    path = (cache_subdir(IMAGES_SUBDIR, create=True)
            / f"agent-{hashlib.sha256(inputs.encode()).hexdigest()[:32]}.cpio")
    try:
        if time.time() - path.stat().st_mtime > IMAGE_TOUCH_SECONDS:
            touch(path)
        return path
    except FileNotFoundError:
        pass
    from vmboot.execute.image import agent_initramfs

    cache_limit()  # a wrong $VMBOOT_CACHE_MAX is refused before anything is stored
    try:
        write_atomically(path, agent_initramfs([], busybox))
    except OSError as e:
        raise FetchError(f"warm exec: cannot store the agent image in {path.parent}: "
                         f"{e.strerror} (free space there, or set ${CACHE_ENV} to another "
                         "directory)") from None
    keep_within_limit(path)
    return path


def warm_config(kernel: Path, initrd: Path, *, memory: str | int, cpuid_policy: str,
                entry: EntryChoice, cpus: int, shares: Sequence[Share] = ()) -> MachineConfig:
    """The warm guest's machine; ``shares`` are saved unused (the command mounts them after
    the restore, served by a fresh virtiofsd)."""
    from vmboot.config import MachineConfig

    return MachineConfig(kernel, initrd=initrd, cmdline=warm_cmdline(), memory=memory,
                         cpuid_policy=cpuid_policy,  # type: ignore[arg-type]
                         entry=entry, cpus=cpus, agent=True, shares=tuple(shares))


def warm_key(config: MachineConfig) -> str:
    """What the saved guest depends on: the kernel file, the initramfs (busybox and agent
    inside), the command line, memory, vCPUs, CPUID policy, entry, the shares, the image
    layout and vmboot's version. The files' digests are remembered in the cache
    (:mod:`vmboot.file_digest`), and the restore checks the same ones."""
    kernel = config.kernel
    initrd = config.initrd
    if not isinstance(kernel, str | os.PathLike) or not isinstance(initrd, str | os.PathLike):
        raise TypeError("warm_key: the warm configuration has a kernel path and an initrd "
                        "path (warm_image)")
    memo = cache_subdir(DIGESTS_SUBDIR)
    h = hashlib.sha256(bytes.fromhex(file_sha256(kernel, memo)))
    h.update(bytes.fromhex(file_sha256(initrd, memo)))
    shares = [[os.path.realpath(s.source), s.tag, s.read_only] for s in config.shares]
    h.update(json.dumps([config.cmdline, str(config.memory_bytes), config.cpus,
                         config.cpuid_policy, config.entry, WARM_IMAGE_VERSION,
                         __version__, shares]).encode())
    return h.hexdigest()[:32]


def warm_snapshot_path(config: MachineConfig) -> Path:
    """Where the cache keeps the warm guest of ``config``."""
    return cache_subdir(SNAPSHOTS_SUBDIR, create=True) / f"exec-{warm_key(config)}.snap"


def warm_snapshot(config: MachineConfig, timeout: float | None, path: Path | None = None
                  ) -> Path:
    """The cached snapshot of the warm guest for ``config`` (at ``path``, by default
    :func:`warm_snapshot_path`), booted and saved now if missing; then the cache is brought
    within its size limit (:func:`~vmboot.execute.cache.keep_within_limit`)."""
    from vmboot.agent.client import AgentError
    from vmboot.vmm.machine import Machine

    if path is None:
        path = warm_snapshot_path(config)
    if path.exists():
        touch(path)
        return path
    cache_limit()  # a wrong $VMBOOT_CACHE_MAX is refused before the boot
    machine = Machine.from_config(config, on_panic=None)
    limit = timeout or WARM_BOOT_TIMEOUT
    with machine:
        try:
            machine.exec(list(READY_PROBE), env={}, ready_timeout=limit, timeout=limit)
        except AgentError as e:
            console = machine.console.text()[-2000:]
            raise GuestError(f"warm exec: the guest agent did not get ready ({e}); console:\n"
                             f"{console}") from None
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        machine.snapshot(tmp)
        os.replace(tmp, path)
    keep_within_limit(path)
    return path


def warm_exec(config: MachineConfig, command: Sequence[str], env: Mapping[str, str], *,
              t0: float, t_initramfs: float, timeout: float | None, console: Any,
              on_stdout: OutputCallback | None, on_stderr: OutputCallback | None,
              stdin: StdinSource = None) -> ExecResult:
    """Run ``command`` in a guest restored from the warm snapshot of ``config``."""
    from vmboot.agent.client import AgentError, CommandResult, ResumeFailed
    from vmboot.execute.agent_run import SIGNAL_STATUS_BASE
    from vmboot.execute.result import ExecReason, ExecResult, ExecTimings
    from vmboot.vmm.machine import Machine

    path = warm_snapshot_path(config)
    in_use = HeldLock(snapshot_locks(path)[0])  # no other process evicts it while it is used
    try:
        snapshot = warm_snapshot(config, timeout, path)
        machine = Machine.from_config(config, console=console, on_panic=None)
    except BaseException:
        in_use.release()
        raise
    result: CommandResult | None = None
    reason, detail = ExecReason.EXITED, ""
    marks = _Marks(t0)
    out, err = bytearray(), bytearray()
    try:
        # the resume message goes with the command (one write; one round trip saved)
        with machine.restore(snapshot, wait_agent=False):
            try:
                result = machine.exec(shell_argv(command), env=dict(env), stdin=stdin,
                                      timeout=timeout, on_stdout=marks.output(on_stdout, out),
                                      on_stderr=marks.output(on_stderr, err))
                marks.exited = time.monotonic()
            except ResumeFailed as e:
                reason, detail = (ExecReason.BOOT_FAILURE,
                                  f"the restored guest was not resumed: {e}")
            except AgentError as e:
                reason, detail = ExecReason.LOST, f"the guest stopped before the command ended: {e}"
            client = machine.agent_client
            if client is not None and machine.vm is not None:
                marks.resumed = client.answered_at
                marks.held = client.held_command_at(machine.vm.tsc_khz())
    except AgentError as e:
        reason, detail = ExecReason.BOOT_FAILURE, f"the restored guest's agent did not answer: {e}"
    finally:
        in_use.release()
    t_end = time.monotonic() - t0
    status: int | None = None
    if result is not None:
        if result.timed_out:
            reason, detail = ExecReason.TIMEOUT, f"the command ran longer than {timeout:g} s"
        else:
            status = (result.exit_status if result.exit_status is not None
                      else SIGNAL_STATUS_BASE + (result.signal or 0))
    resumed = marks.since(marks.resumed)
    return ExecResult(
        stdout=bytes(out),
        stderr=bytes(err),
        exit_status=status,
        reason=reason,
        timings=ExecTimings(initramfs=t_initramfs, kernel_entry=marks.since(machine.loaded_at),
                            first_console_byte=None,
                            command_start=marks.since(None if result is None
                                                      else result.started_at),
                            command_exit=marks.since(marks.exited), total=t_end,
                            restored=marks.since(machine.loaded_at), agent_ready=resumed,
                            command_sent=marks.since(None if result is None
                                                     else result.sent_at),
                            command_held=marks.since(marks.held),
                            first_output=marks.since(marks.first_output), vm_exit=t_end,
                            origin=t0),
        console=bytes(machine.console.data),
        detail=detail,
    )


class _Marks:
    """``time.monotonic()`` at each step of a warm run (None: not reached)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.resumed: float | None = None
        self.held: float | None = None
        self.first_output: float | None = None
        self.exited: float | None = None

    def since(self, mark: float | None) -> float | None:
        """``mark`` in seconds since the run's start."""
        return None if mark is None else mark - self.t0

    def output(self, sink: OutputCallback | None, collected: bytearray) -> OutputCallback:
        """``sink`` (or appending to ``collected``, when None), noting when the first output
        arrived."""
        def noted(data: bytes) -> None:
            if self.first_output is None:
                self.first_output = time.monotonic()
            if sink is not None:
                sink(data)
            else:
                collected.extend(data)

        return noted
