"""``vmboot run KERNEL``: boot a kernel under KVM with a serial console on the terminal."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, TYPE_CHECKING, Any

from vmboot.cli.arguments import (
    FAIL_ON_HELP,
    add_disk_argument,
    add_size_arguments,
    fail_on,
    sample_rate,
    seconds,
    share_argument,
)
from vmboot.cli.gdb_args import add_gdb_arguments, check_gdb_arguments
from vmboot.cli.net_options import add_net_arguments, net_config
from vmboot.cli.terminal import TerminalInput
from vmboot.cli.vsock_args import add_vsock_arguments, vsock_config
from vmboot.config import (
    CPUID_POLICIES,
    DEFAULT_CMDLINE,
    DEFAULT_CONSOLE_DEVICE,
    DEFAULT_CPUID_POLICY,
    DEFAULT_ENTRY,
    DEFAULT_VIRTIO_CMDLINE,
    DEFAULT_VIRTIO_NOTIFICATIONS,
    ENTRIES,
    MachineConfig,
)
from vmboot.devices.virtio.machine_devices import CONSOLE_CHOICES
from vmboot.devices.virtio.setup import NOTIFICATION_CHOICES
from vmboot.errors import UsageError
from vmboot.vmm.dumps import DUMP_TRIGGERS
from vmboot.vmm.exits import ExitReason

if TYPE_CHECKING:
    from vmboot.vmm.console_wait import ConsoleWaiter
    from vmboot.vmm.machine import Machine

DESCRIPTION = """\
Boot a Linux bzImage under KVM, straight into 64-bit mode (no firmware), with a PC's
legacy devices: a 16550A UART on COM1 (ttyS0), the i8042 (for reboot=k), a CMOS RTC,
and KVM's in-kernel PIC, IOAPIC and PIT. The guest's console is streamed to the terminal
as it arrives. The run ends when the guest reboots or powers off (exit status 0), or
when it fails or the time limit passes (non-zero, with a one-line reason on stderr).
"""

EPILOG = """\
exit status:
  0    the guest rebooted or powered off (reboot=k makes a reboot end the run)
  1    the guest failed (triple fault, emulation failure, halted for good, panic)
       or vmboot could not run it (the message says why), or the kernel reported
       a --fail-on verdict
  2    bad arguments
  124  the --timeout passed

examples:
  vmboot run bzImage --initrd initramfs.cpio
      boot with the default command line "console=ttyS0 reboot=k panic=-1"
  vmboot run bzImage --initrd initramfs.cpio -m 64M --append "console=ttyS0 reboot=k panic=-1 quiet"
      less memory and less console output: both make the boot faster
  vmboot run bzImage --initrd initramfs.cpio --profile
      after the run, where the guest spent its time: a sampled profile by kernel function
  vmboot run bzImage --initrd initramfs.cpio --cpus 4
      four vCPUs; the kernel prints "smp: Brought up 1 node, 4 CPUs"
  vmboot run bzImage --initrd initramfs.cpio --append "console=ttyS0 vmboot.shell=1" \\
      --snapshot shell.snap --snapshot-when "/ # "
      boot once and save the guest at its shell prompt; then, in milliseconds:
  vmboot run bzImage --initrd initramfs.cpio --append "console=ttyS0 vmboot.shell=1" \\
      --restore shell.snap
      the same guest, at that prompt (same kernel, initrd, command line and -m)
  vmboot run bzImage --disk rootfs.ext4 --append "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw"
      boot a root file system image (a raw ext4 file) as virtio-blk /dev/vda
  vmboot run bzImage --initrd initramfs.cpio --disk data.img,ro --disk scratch.img,throwaway --rng -v
      a read-only disk, a disk whose writes are thrown away, /dev/hwrng; -v lists the devices
  vmboot run bzImage --initrd initramfs.cpio --share ./src:src --share /usr/share/doc:doc,ro
      two host directories over virtio-fs (needs virtiofsd); in the guest:
      mount -t virtiofs src /mnt
  vmboot run bzImage --initrd initramfs.cpio --gdb localhost:1234
      then: gdb -ex 'target remote localhost:1234' vmlinux (KASLR slide applied for you)
  vmboot run bzImage --timeout 60 --json > result.json
      a JSON summary on stdout (the console goes to stderr), for scripts:
      {"exit": "reset", "detail": ..., "clean": true, "summary": ...,
       "timings": {"load": s, "first_instruction": s, "first_console_byte": s, "exit": s},
       "console_bytes": n, "console_dropped": n, "vcpu": i, "cpus": n,
       "cpuid_hidden": [features of this host the CPUID policy hides], "verdict": "ok",
       "reports": [{"type", "title", "first_line", "last_line", "frames"}, ...], ...}
  vmboot run bzImage --initrd initramfs.cpio --fail-on warning,oops,bug
      exit 1 when the kernel printed a WARNING, an oops or a BUG, even if it rebooted
      cleanly (the verdicts are those of `vmboot report`)

notes:
  When standard input is a terminal, what you type goes to the guest's serial console
  (ttyS0), a key at a time; Ctrl-C stops vmboot (status 130) and restores the terminal.
  A kernel panic ends the run with status 1: with panic=-1 at the reset the panicking
  kernel asks for, with panic=0 at its last panic line. With --trace, vmboot then
  prints every vCPU's registers and symbolised stack trace (also on --timeout, and at
  each oops even when the kernel goes on), using --vmlinux or --system-map when given,
  else the kallsyms inside the kernel image; the KASLR offset is found by itself. On
  --timeout it also samples the vCPUs a few more times and says whether the guest is
  idle, locked up on a CPU (with that CPU's trace) or running. --tasks adds the guest's
  task list with each task's kernel stack, read from guest memory with the kernel's BTF
  (or, without BTF, the DWARF of a debug --vmlinux) (SysRq-t from the host);
  --blocked shows only tasks in uninterruptible sleep (SysRq-w).
  --dump-on panic,oops,timeout --dump-dir DIR writes vmcores that crash and drgn open
  (crash vmlinux DIR/vmcore.1.panic; drgn -c DIR/vmcore.1.panic -s vmlinux), and
  `kill -USR2 PID` writes one on demand; `vmboot trace CORE --kernel IMAGE` reads one back.
  Under a nested or emulated KVM, an uncompressed initramfs boots much faster than a
  gzip one, and 64-128 MiB of memory is cheapest.
"""

def render_virtio(report: dict[str, Any]) -> str:
    """The ``-v`` listing of the virtio devices."""
    path = report["notification_path"] or "(not wired: the VM was never started)"
    lines = [f"virtio: notifications through {path}"]
    for d in report["devices"]:
        what = d.get("path") or ",".join(d.get("ports", [])) or _share_text(d)
        error = d["error"] or d.get("backend_error")
        lines.append(f"  {d['name']:<16} {d['base']} irq {d['irq']:<2} requests {d['requests']}"
                     f"{'  ' + what if what else ''}{'  ERROR: ' + error if error else ''}")
    return "\n".join(lines) + "\n"


def _share_text(device: dict[str, Any]) -> str:
    """``TAG=SOURCE[,ro]`` of a virtio-fs device (empty for other devices)."""
    if "tag" not in device:
        return ""
    return f"{device['tag']}={device['source']}{',ro' if device['read_only'] else ''}"


EXIT_OK = 0
EXIT_GUEST_FAILED = 1
EXIT_TIMEOUT = 124
DEFAULT_PROFILE_HZ = 100
DEFAULT_SNAPSHOT_WHEN = "/ # "
PROFILE_TOP = 25
"""Functions listed by --profile's text output (--json has them all)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="boot a kernel under KVM with its console on the terminal",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kernel", metavar="KERNEL",
                   help="a bzImage (arch/x86/boot/bzImage) or an ELF vmlinux (booted via PVH)")
    p.add_argument("--initrd", metavar="FILE", help="an initramfs (cpio; uncompressed is fastest)")
    p.add_argument("--append", metavar="CMDLINE", default=DEFAULT_CMDLINE,
                   help=f'the kernel command line (default: "{DEFAULT_CMDLINE}")')
    add_size_arguments(p)
    p.add_argument("--timeout", metavar="SECONDS", type=seconds, default=None,
                   help="stop the guest after this many seconds (default: no limit)")
    p.add_argument("--cpuid", choices=CPUID_POLICIES, default=DEFAULT_CPUID_POLICY,
                   help="CPUID the guest sees: what KVM supports (host), a conservative "
                        "subset, or auto (host minus what this KVM cannot run; default)")
    p.add_argument("--entry", choices=ENTRIES, default=DEFAULT_ENTRY,
                   help="how to enter the kernel. bzimage64: a bzImage's 64-bit boot "
                        "protocol entry; the kernel decompresses itself in the guest. elf64: "
                        "the ELF e_entry (startup_64) in 64-bit mode with a zero page in RSI. "
                        "pvh: the Xen PVH entry note, 32-bit, hvm_start_info in EBX. elf64 and "
                        "pvh also work on a bzImage: vmboot decompresses its payload on the "
                        "host (much faster under an emulating hypervisor; no KASLR, the "
                        "kernel runs at its link address). auto: bzimage64 for a bzImage; "
                        "for a vmlinux PVH when it has the note, else elf64")
    p.add_argument("--trace", action="store_true",
                   help="on a kernel panic or --timeout, print the guest's registers and "
                        "symbolised kernel stack trace to stderr")
    p.add_argument("--tasks", action="store_true",
                   help="with --trace: also list the guest's tasks (PID, comm, state, CPU) "
                        "with their kernel stacks, as SysRq-t")
    p.add_argument("--blocked", action="store_true",
                   help="with --tasks: only tasks in uninterruptible sleep, as SysRq-w")
    p.add_argument("--vmlinux", metavar="FILE",
                   help="symbols for --trace and emulation failures (default: the kernel "
                        "image's own kallsyms)")
    p.add_argument("--system-map", metavar="FILE", help="a System.map for the same purpose")
    p.add_argument("--profile", action="store_true",
                   help="sample the guest's RIP while it runs and print, at the end, the "
                        "functions it spent its time in, the split by vCPU and the busiest "
                        "function in each second (symbols as for --trace; user mode is one "
                        "bucket)")
    p.add_argument("--profile-hz", metavar="HZ", type=sample_rate, default=DEFAULT_PROFILE_HZ,
                   help=f"samples a second for --profile (default: {DEFAULT_PROFILE_HZ}; each "
                        "costs one exit from the guest)")
    add_gdb_arguments(p)
    p.add_argument("--fail-on", metavar="VERDICTS", type=fail_on, default=frozenset(),
                   help=FAIL_ON_HELP)
    p.add_argument("--dump-on", metavar="TRIGGERS", default=None,
                   help="write a vmcore (ELF, for crash and drgn) into --dump-dir on these "
                        f"comma-separated triggers: {', '.join(DUMP_TRIGGERS)}")
    p.add_argument("--dump-dir", metavar="DIR", default=None,
                   help="where vmcores go (vmcore.N.TRIGGER); with it, SIGUSR2 to vmboot "
                        "writes one (vmcore.N.demand) while the guest runs on")
    p.add_argument("--restore", metavar="SNAPSHOT",
                   help="resume the guest saved in SNAPSHOT instead of booting; KERNEL, "
                        "--initrd, --append and -m must be those it was taken with")
    p.add_argument("--snapshot", metavar="FILE",
                   help="save the running guest to FILE once --snapshot-when's text appears "
                        "on its console, then stop (exit status 0)")
    p.add_argument("--snapshot-when", metavar="TEXT", default=DEFAULT_SNAPSHOT_WHEN,
                   help=f"console text that triggers --snapshot (default: {DEFAULT_SNAPSHOT_WHEN!r},"
                        " a busybox root prompt)")
    add_disk_argument(p)
    p.add_argument("--share", metavar="HOST_DIR[:TAG][,ro]", action="append", default=[],
                   type=share_argument,
                   help="share a host directory over virtio-fs, served by the host's virtiofsd "
                        "(repeatable); the guest mounts it with `mount -t virtiofs TAG DIR`. "
                        "TAG defaults to the directory's name; ro: the guest cannot write")
    p.add_argument("--console", choices=CONSOLE_CHOICES, default=DEFAULT_CONSOLE_DEVICE,
                   help=f"the console device: serial (ttyS0, the default) or virtio (hvc0; "
                        f'the default command line becomes "{DEFAULT_VIRTIO_CMDLINE}")')
    p.add_argument("--rng", action="store_true",
                   help="a virtio-rng device (/dev/hwrng) fed from the host's getrandom")
    p.add_argument("--virtio-notify", choices=NOTIFICATION_CHOICES,
                   default=DEFAULT_VIRTIO_NOTIFICATIONS,
                   help="how virtio queue notifications and interrupts travel: ioeventfd "
                        "(KVM ioeventfd and irqfd, no exit to vmboot), exits (an MMIO exit "
                        "each), or auto (ioeventfd when KVM has it; the default)")
    add_vsock_arguments(p)
    add_net_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="after the run, list the virtio devices and the notification path")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object at the end (the console goes to stderr)")
    p.set_defaults(func=run)


def exit_status(reason: ExitReason) -> int:
    if reason in (ExitReason.RESET, ExitReason.POWEROFF):
        return EXIT_OK
    if reason is ExitReason.TIMEOUT:
        return EXIT_TIMEOUT
    return EXIT_GUEST_FAILED


def run(args: argparse.Namespace) -> int:
    from vmboot.cli.dump_signal import dump_on_signal
    from vmboot.vmm.machine import Machine

    console: IO[str] = sys.stderr if args.json else sys.stdout
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout: {args.timeout} is not a positive number of seconds")
    if args.tasks and not args.trace:
        raise UsageError("--tasks: the task list is taken with the trace; add --trace")
    if args.blocked and not args.tasks:
        raise UsageError("--blocked: filters the task list; add --trace --tasks")
    check_gdb_arguments(args)
    config = MachineConfig(args.kernel, initrd=args.initrd, cmdline=args.append,
                           memory=args.memory, cpus=args.cpus, cpuid_policy=args.cpuid,
                           entry=args.entry, timeout=args.timeout, vmlinux=args.vmlinux,
                           system_map=args.system_map, dump_on=args.dump_on or (),
                           dump_dir=args.dump_dir, disks=tuple(args.disk),
                           console_device=args.console, virtio_rng=args.rng,
                           virtio_notifications=args.virtio_notify,
                           vsock=vsock_config(args), shares=tuple(args.share),
                           net=net_config(args))
    waiter = None
    if args.snapshot is not None:
        from vmboot.devices.console import stream_sink
        from vmboot.vmm.console_wait import ConsoleWaiter

        waiter = ConsoleWaiter(echo=stream_sink(sys.stderr if args.json else sys.stdout))
    machine = Machine.from_config(config, console=console if waiter is None else waiter,
                                  on_timeout="trace" if args.trace else None,
                                  on_panic="trace" if args.trace else None,
                                  trace_tasks=args.tasks, gdb=args.gdb, gdb_wait=args.gdb_wait)
    if args.restore is not None:
        machine.restore(args.restore)
    with machine, TerminalInput(machine.push_input), dump_on_signal(machine):
        if machine.gdb_server is not None:
            where = machine.gdb_server.bound
            print(f"vmboot run: gdb stub on {where}: gdb -ex 'target remote {where}' "
                  f"VMLINUX" + (" (the guest waits for it)" if args.gdb_wait else ""),
                  file=sys.stderr)
        if waiter is not None:
            return _run_to_snapshot(machine, waiter, args)
        profiler = None
        if args.profile:
            from vmboot.vmm.profile import GuestProfiler

            profiler = GuestProfiler(machine, args.profile_hz)
        if profiler is None:
            result = machine.run()
        else:
            with profiler:
                result = machine.run()
            profile = profiler.profile(machine.symbolize)
    status = exit_status(result.exit.reason)
    reading = result.read_console()
    failed_on = reading.triggered(args.fail_on)
    if failed_on and status == EXIT_OK:
        status = EXIT_GUEST_FAILED
    if args.json:
        summary = result.as_dict()
        summary["exit_status"] = status
        summary["stack_trace"] = result.stack_trace_text
        if args.blocked:
            summary["tasks"] = [t.as_dict() for t in result.tasks if t.blocked]
        if profiler is not None:
            summary["profile"] = profile.as_dict()
        print(json.dumps(summary, sort_keys=True))
        return status
    if args.verbose and result.virtio is not None:
        print(render_virtio(result.virtio), file=sys.stderr, end="")
    if profiler is not None:
        print(profile.render(PROFILE_TOP), file=sys.stderr, end="")
    if status != EXIT_OK:
        print(f"vmboot run: {result.exit.one_line()}", file=sys.stderr)
    if failed_on:
        titles = [r.title for r in reading.reports]
        print(f"vmboot run: --fail-on {','.join(v.value for v in failed_on)}: "
              f"{'; '.join(titles) or reading.verdict.value}", file=sys.stderr)
    for message, trace in result.oopses:
        print(f"vmboot run: oops: {message}\n{trace}", file=sys.stderr, end="")
    if result.stack_trace_text:
        print(result.stack_trace_text, file=sys.stderr, end="")
    if result.hang is not None:
        print(result.hang.render(), file=sys.stderr, end="")
    if args.tasks and result.tasks:
        from vmboot.debug.tasks import render_tasks

        print(render_tasks(result.tasks, blocked_only=args.blocked), file=sys.stderr, end="")
    for note in result.notes:
        print(f"vmboot run: {note}", file=sys.stderr)
    return status


def _run_to_snapshot(machine: Machine, waiter: ConsoleWaiter, args: argparse.Namespace) -> int:
    """--snapshot: run until the console shows --snapshot-when, then save the guest."""
    waiter.attach(machine)
    waiter.run_until(args.snapshot_when.encode(), args.timeout)
    report = machine.snapshot(args.snapshot)
    if args.json:
        print(json.dumps({"snapshot": str(args.snapshot), "exit_status": EXIT_OK,
                          "memory_bytes_written": report.memory_bytes_written}, sort_keys=True))
    else:
        print(f"\nvmboot run: saved the guest to {args.snapshot} "
              f"({report.memory_bytes_written / 2**20:.1f} MiB of memory stored)", file=sys.stderr)
    return EXIT_OK
