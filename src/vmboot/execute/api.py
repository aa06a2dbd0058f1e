"""``vmboot.exec_command``: boot a kernel, run one command in it, give back its output and status.

::

    result = vmboot.exec_command(["sh", "-c", "echo hi; exit 3"])   # the shipped kernel
    result.stdout, result.stderr, result.exit_status, result.reason   # b"hi\\n", b"", 3, "exited"

The channel (:mod:`vmboot.execute.channel`, decided from the kernel's symbols before the
boot): by default the guest is the agent image of
:func:`vmboot.execute.image.agent_initramfs` (busybox, the guest agent as ``/init``) and the
command runs through :meth:`vmboot.vmm.machine.Machine.exec` over a named virtio-console port
(or vsock), stdout and stderr apart, stdin fed in, signals forwarded
(:mod:`vmboot.execute.agent_run`). A kernel without the virtio-console driver (and
``warm``) gets the initramfs of :func:`vmboot.execute.image.exec_initramfs` (busybox,
``/init``, the command, the user's files; uncompressed), booted with ``console=ttyS0
8250.nr_uarts=4 reboot=k panic=-1 quiet``, and four emulated 16550A UARTs (see
:mod:`vmboot.execute.image` for the protocol): COM1 is the kernel console, COM2 the
command's stdout, COM3 its stderr, COM4 the status channel. Output is handed to the
``on_stdout`` / ``on_stderr`` callbacks as it arrives. The run ends as soon as the command's
status is known (the guest's own reboot is not waited for).

How a run ended (:attr:`ExecResult.reason`, one of :class:`ExecReason`):

``exited``        the command ran and exited; ``exit_status`` is its status (0-255)
``panic``         the guest kernel panicked (its console shows "Kernel panic")
``timeout``       ``timeout`` seconds passed before the command exited
``boot-failure``  the guest never started the command (no ``VMBOOT-START``): the kernel
                  failed or stopped before it, or the VM itself failed; see ``console``
``guest-error``   the guest's init could not run the command (``VMBOOT-ERROR``) or spoke
                  something that is not the exec protocol
``lost``          the command started but the guest stopped before it reported an exit
                  status (e.g. the command rebooted or powered off the guest)

The kernel (``kernel=None``, :func:`vmboot.execute.discovery.find_kernel`), in this order:

1. ``$VMBOOT_KERNEL``;
2. the kernel vmboot ships (:mod:`vmboot.execute.default_guest`), which boots on every KVM host,
   including those whose ``/dev/kvm`` is PVM;
3. the vmboot cache: the newest ``<cache>/debian-kernels/<ABI>/boot/vmlinuz-*`` that
   ``vmboot fetch kernel`` stored (pass it as ``kernel=`` to use it while the shipped
   kernel is installed: ``vmboot exec --kernel "$(vmboot fetch kernel)"``);
4. ``/boot/vmlinuz-$(uname -r)``, when it is readable.

The busybox: :func:`vmboot.execute.guest_choice.choose_busybox` (the embedded one unless the caller
or ``$VMBOOT_BUSYBOX`` names another). docs/pvm-hosts.md says what changes on hosts whose
``/dev/kvm`` is PVM.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from vmboot.config import DEFAULT_CPUID_POLICY, DEFAULT_ENTRY, DEFAULT_MEMORY, MIN_CPUS, MachineConfig
from vmboot.devices.console import DEFAULT_CAPTURE_LIMIT, ConsoleOutput, ConsoleSink
from vmboot.devices.serial import COM1, COM2, COM3, COM4
from vmboot.errors import BootConfigError, GuestError
from vmboot.execute.layout import AGENT_CMDLINE, EXEC_CMDLINE, EXEC_SERIAL_PORTS
from vmboot.vmm.exits import ExitReason

if TYPE_CHECKING:
    from vmboot.agent.client import StdinSource
    from vmboot.devices.virtio.block import Disk
    from vmboot.devices.virtio.share import Share
    from vmboot.devices.virtio.vsock_host import VsockConfig
    from vmboot.execute.channel import ChannelChoice, ChannelDecision
    from vmboot.execute.result import ExecResult, Outcome, OutputCallback
    from vmboot.hv.kvm.cpuid import CpuidPolicyName
    from vmboot.linux.kernel import Kernel
    from vmboot.linux.options import EntryChoice
    from vmboot.net.config import NetConfig

def classify(vm_exit: ExitReason, vm_detail: str, status: bytes, console: bytes,
             timeout: float | None = None) -> Outcome:
    """How an exec run ended, from why the VM stopped, the status channel and the console."""
    from vmboot.execute.image import parse_status
    from vmboot.execute.result import PANIC_MARKER, ExecReason, Outcome

    try:
        parsed = parse_status(status)
    except GuestError as e:
        return Outcome(ExecReason.GUEST_ERROR, None, str(e))
    if parsed.exit_status is not None:
        return Outcome(ExecReason.EXITED, parsed.exit_status, "")
    panic_at = console.find(PANIC_MARKER)
    if vm_exit is ExitReason.PANIC or panic_at >= 0:
        line = console[panic_at:].split(b"\n", 1)[0].decode("utf-8", "replace").strip() \
            if panic_at >= 0 else vm_detail
        return Outcome(ExecReason.PANIC, None, f"the guest kernel panicked: {line}")
    stage = "while the command ran" if parsed.started else "before the command started"
    if vm_exit is ExitReason.TIMEOUT:
        limit = "" if timeout is None else f" of {timeout:g} s"
        return Outcome(ExecReason.TIMEOUT, None, f"the time limit{limit} passed {stage}")
    how = vm_exit.value + (f" ({vm_detail})" if vm_detail else "")
    if not parsed.started:
        hint = _last_init_note(console)
        return Outcome(ExecReason.BOOT_FAILURE, None,
                       f"the guest stopped ({how}) before starting the command{hint}")
    return Outcome(ExecReason.LOST, None,
                   f"the guest stopped ({how}) while the command ran, before it reported an exit status")


def _last_init_note(console: bytes) -> str:
    notes = [line for line in console.splitlines() if line.startswith(b"vmboot-init:")]
    return f"; last init note: {notes[-1].decode('utf-8', 'replace')}" if notes else ""


# -- the run --------------------------------------------------------------------------------


class _StatusWatch:
    """The status channel's sink: notes when each line arrives, ends the run at VMBOOT-EXIT."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.data = bytearray()
        self.started_at: float | None = None
        self.exited_at: float | None = None
        self.stop: Callable[[ExitReason, str], object] | None = None
        self._lock = threading.Lock()

    def __call__(self, chunk: bytes) -> None:
        from vmboot.execute.image import STATUS_ERROR, STATUS_EXIT, STATUS_START

        with self._lock:
            self.data += chunk
            now = time.monotonic() - self.t0
            lines = bytes(self.data).split(b"\n")[:-1]  # complete lines only
            words = {line.strip().partition(b" ")[0] for line in lines}
        if STATUS_START in words and self.started_at is None:
            self.started_at = now
        if (STATUS_EXIT in words or STATUS_ERROR in words) and self.exited_at is None:
            self.exited_at = now
            if self.stop is not None:
                self.stop(ExitReason.STOPPED, "the command reported its exit status")


def _default_vsock() -> VsockConfig:
    """The vsock device an agent on vsock gets when none is given (loaded only then)."""
    from vmboot.devices.virtio.vsock_host import VsockConfig

    return VsockConfig()


def _channel(callback: OutputCallback | None, capture_limit: int) -> ConsoleOutput:
    sink: ConsoleSink | None = callback
    return ConsoleOutput(sink, capture_limit)


def exec_command(
    command: Sequence[str],
    *,
    kernel: str | Path | None = None,
    memory: str | int = DEFAULT_MEMORY,
    files: Iterable[tuple[str | Path, str]] = (),
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    console: bool | OutputCallback = False,
    on_stdout: OutputCallback | None = None,
    on_stderr: OutputCallback | None = None,
    busybox: str | Path | None = None,
    cpuid_policy: CpuidPolicyName = DEFAULT_CPUID_POLICY,
    capture_limit: int = DEFAULT_CAPTURE_LIMIT,
    entry: EntryChoice = DEFAULT_ENTRY,
    cpus: int = MIN_CPUS,
    warm: bool = False,
    vsock: VsockConfig | None = None,
    shares: Sequence[Share] = (),
    net: NetConfig | None = None,
    disks: Sequence[Disk] = (),
    channel: ChannelChoice = "auto",
    stdin: bytes | BinaryIO | None = None,
) -> ExecResult:
    """Boot ``kernel`` with an initramfs that runs ``command``; its output and exit status.

    ``files``: (host path, guest path) pairs copied into the initramfs (a host directory
    brings its tree). ``env``: the command's whole environment (nothing else is set, not
    even PATH: busybox applets need none). ``console``: True streams the kernel console to
    stderr, a callable receives it; it is captured in :attr:`ExecResult.console` either
    way. ``on_stdout`` / ``on_stderr`` receive the command's output as it arrives.
    ``busybox``: a static x86-64 busybox (default
    :func:`vmboot.execute.guest_choice.choose_busybox`).
    ``entry``: as :class:`~vmboot.linux.options.BootOptions` (``"elf64"`` boots a bzImage's
    payload decompressed on the host, skipping the in-guest decompressor).
    ``cpus``: vCPUs, as :class:`~vmboot.vmm.machine.Machine`.
    ``warm``: resume a guest saved, its agent ready for a command, in the vmboot cache
    (:mod:`vmboot.execute.warm`), and run the command through the agent; the first warm run
    of a kernel boots and saves it. Not with ``files`` (they would have to be in the saved
    guest) nor with vsock, net or disks; with shares (saved before the guest mounts them).
    ``vsock``: a virtio-vsock device for the guest (see :class:`vmboot.vmm.machine.Machine`).
    ``shares``: host directories over virtio-fs (the command mounts one with
    ``mount -t virtiofs TAG DIR``).
    ``net``: a virtio-net device (eth0); with ``kernel_dhcp`` the kernel configures it by DHCP.
    ``disks``: virtio-blk disks (``/dev/vda``, ``/dev/vdb``, ... in order).
    ``channel``: what carries the command (:mod:`vmboot.execute.channel`): ``auto`` (the
    guest agent on a virtio-console port when the kernel has the driver, else the UARTs),
    ``console``, ``vsock`` or ``serial``; :attr:`ExecResult.channel` says which ran.
    ``stdin``: bytes fed to the command, then end of file (agent channels only; the serial
    channel gives it /dev/null), or a binary file read while the command runs, as it takes
    its input (:class:`~vmboot.agent.client.AgentClient`), when the channel is an agent's,
    and left unread when it is the serial one.
    """
    from vmboot.execute.agent_run import STOP_GRACE
    from vmboot.execute.channel import choose_channel
    from vmboot.execute.guest_choice import choose_busybox, choose_kernel
    from vmboot.vmm.machine import Machine

    t0 = time.monotonic()
    # Everything is checked before the initramfs is built: the machine's configuration
    # (memory, CPUID policy, entry, capture limit, timeout, command line, devices), then the
    # channel the kernel's drivers allow, and the configuration for that channel.
    kernel_path = choose_kernel(kernel)
    config = MachineConfig(kernel_path, initrd=None,
                           cmdline=EXEC_CMDLINE, memory=memory, cpuid_policy=cpuid_policy,
                           entry=entry, cpus=cpus, serial_ports=EXEC_SERIAL_PORTS,
                           capture_limit=capture_limit, timeout=timeout,
                           vsock=vsock, shares=tuple(shares), net=net, disks=tuple(disks))
    decision = choose_channel(channel, kernel_path, warm=warm)
    agent = decision.agent
    if agent is None and isinstance(stdin, bytes):
        raise BootConfigError(f"stdin: the serial channel ({decision.reason}) gives the command "
                              "/dev/null; pass stdin=None, or use an agent channel")
    if agent is not None:
        config = dataclasses.replace(
            config, cmdline=AGENT_CMDLINE, serial_ports=(COM1,), agent=agent,
            vsock=_default_vsock() if agent == "vsock" and vsock is None else vsock,
            # the agent kills the command at the time limit; the machine stops a grace later
            timeout=None if timeout is None else timeout + STOP_GRACE)
    pairs = [(Path(host), guest) for host, guest in files]
    if warm:
        if pairs:
            raise BootConfigError("files: a warm exec resumes a saved guest, which cannot take "
                                  "new files; run without warm to add files")
        devices = [name for name, given in (("vsock", vsock is not None),
                                            ("net", net is not None),
                                            ("disks", bool(disks)))
                   if given]
        if devices:
            raise BootConfigError(f"{', '.join(devices)}: a warm exec resumes one saved guest "
                                  "for every run, which has no such device; run without warm "
                                  "to use them")
        if not command:
            raise BootConfigError("command: empty; name the program to run")
    # a warm run reads the kernel only when it boots the guest it saves (a restore needs no
    # kernel image; the snapshot's kernel digest is checked)
    loaded = None
    if not warm:
        from vmboot.linux.loader.detect import load_kernel

        loaded = load_kernel(kernel_path)
    busybox_path = choose_busybox(busybox)
    if warm:
        import sys

        from vmboot.execute.warm import warm_config, warm_exec, warm_image

        warm_machine = warm_config(kernel_path, warm_image(busybox_path),
                                   memory=memory, cpuid_policy=cpuid_policy, entry=entry,
                                   cpus=cpus, shares=shares)
        result = warm_exec(warm_machine, command, dict(env or {}), t0=t0,
                           t_initramfs=time.monotonic() - t0, timeout=timeout,
                           console=sys.stderr if console is True else console or None,
                           stdin=stdin, on_stdout=on_stdout, on_stderr=on_stderr)
        return dataclasses.replace(result, channel=decision.channel,
                                   channel_reason=decision.reason)
    assert loaded is not None
    from vmboot.execute import image
    from vmboot.execute.result import ExecResult, ExecTimings, exec_reading

    if agent is not None:
        return _exec_with_agent(config, decision, image.agent_argv(command, dict(env or {})),
                                dict(env or {}), stdin, pairs, busybox_path, t0=t0,
                                timeout=timeout, console=console, on_stdout=on_stdout,
                                on_stderr=on_stderr, capture_limit=capture_limit, kernel=loaded)
    initrd = image.exec_initramfs(list(command), dict(env or {}), pairs, busybox_path,
                                  compression="none")
    config = dataclasses.replace(config, kernel=loaded, initrd=initrd)
    t_initramfs = time.monotonic() - t0

    console_target = _console_target(console)
    stdout = _channel(on_stdout, capture_limit)
    stderr = _channel(on_stderr, capture_limit)
    status = _StatusWatch(t0)
    status_out = ConsoleOutput(status)

    machine = Machine.from_config(config, console=console_target, on_panic=None, serial_outputs={
        COM2.name: stdout, COM3.name: stderr, COM4.name: status_out})
    status.stop = machine.request_stop
    kernel_entry: float | None = None
    with machine:
        kernel_entry = time.monotonic() - t0
        run = machine.run()
    for out in (stdout, stderr, status_out):
        out.flush()
    vm_exit = run.exit
    outcome = classify(vm_exit.reason, vm_exit.detail, bytes(status.data), run.console, timeout)
    first = machine.console.first_byte_at
    timings = ExecTimings(
        initramfs=t_initramfs,
        kernel_entry=kernel_entry,
        first_console_byte=None if first is None else first - t0,
        command_start=status.started_at,
        command_exit=status.exited_at,
        total=time.monotonic() - t0,
    )
    return ExecResult(
        stdout=bytes(stdout.data),
        stderr=bytes(stderr.data),
        exit_status=outcome.exit_status,
        reason=outcome.reason,
        timings=timings,
        console=run.console,
        detail=outcome.detail,
        vm_exit=vm_exit,
        dropped={"stdout": stdout.dropped, "stderr": stderr.dropped, "console": run.console_dropped},
        reading=exec_reading(run.reading, vm_exit.reason, outcome),
        channel=decision.channel,
        channel_reason=decision.reason,
    )


def _console_target(console: bool | OutputCallback) -> Any:
    import sys

    if console is True:
        return sys.stderr
    if console is False:
        return None
    return console


def _exec_with_agent(config: MachineConfig, decision: ChannelDecision, argv: list[str],
                     env: dict[str, str], stdin: StdinSource, pairs: list[tuple[Path, str]],
                     busybox: Path, *, t0: float, timeout: float | None,
                     console: bool | OutputCallback, on_stdout: OutputCallback | None,
                     on_stderr: OutputCallback | None, capture_limit: int,
                     kernel: Kernel) -> ExecResult:
    """The agent image booted, ``argv`` run through the agent (:mod:`vmboot.execute.agent_run`)."""
    from vmboot.execute import image
    from vmboot.execute.agent_run import AgentCommand, OutputCapture, exec_through_agent
    from vmboot.vmm.machine import Machine

    initrd = image.agent_initramfs(pairs, busybox)
    t_initramfs = time.monotonic() - t0
    config = dataclasses.replace(config, kernel=kernel, initrd=initrd)
    with Machine.from_config(config, console=_console_target(console), on_panic=None) as machine:
        result = exec_through_agent(machine, AgentCommand(argv, env, "", stdin), t0=t0,
                                    timeout=timeout,
                                    stdout=OutputCapture(on_stdout, capture_limit),
                                    stderr=OutputCapture(on_stderr, capture_limit),
                                    initramfs_seconds=t_initramfs)
    result.channel_reason = decision.reason
    return result
