"""``vmboot exec -- CMD [ARGS...]``: boot a kernel, run one command in it, exit with its status."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from vmboot.cli.arguments import (
    FAIL_ON_HELP,
    add_disk_argument,
    add_size_arguments,
    fail_on,
    seconds,
    share_argument,
)
from vmboot.cli.net_options import add_net_arguments, net_config
from vmboot.cli.vsock_args import add_vsock_arguments, vsock_config
from vmboot.config import DEFAULT_ENTRY, ENTRIES
from vmboot.errors import UsageError
from vmboot.execute.channel import AUTO, CHANNEL_CHOICES

if TYPE_CHECKING:
    from vmboot.execute import ExecResult

DESCRIPTION = """\
Boot a Linux kernel under KVM with a small busybox initramfs that runs CMD, and behave
like CMD: its stdout and stderr appear on ours as it runs, and vmboot exits with its exit
status. The command runs as root in the guest's initramfs, with exactly the environment
given with --env (no PATH: busybox applets such as ls, cat, sh need none). Files and
directories from the host are copied in with --add.

The command runs through the guest agent, the initramfs's init, over a virtio-console port:
stdin is piped in when it is not a terminal, and Ctrl-C reaches the command. A kernel
without the virtio-console driver (vmboot reads its symbols before the boot) runs it over
16550A UARTs instead, with stdin from /dev/null; --channel chooses, -v and --json say which.

The kernel is --kernel, else $VMBOOT_KERNEL, else the kernel vmboot ships (Linux 6.1,
which boots on every KVM host), else the newest kernel `vmboot fetch kernel` stored in the
vmboot cache, else /boot/vmlinuz-$(uname -r). busybox is --busybox, else $VMBOOT_BUSYBOX, else the one vmboot
ships, else one on this host; when none is there, Debian's is fetched into the cache once.
"""

EPILOG = """\
exit status:
  0-255  the command's own exit status (128+N: it was killed by signal N;
         126/127: it could not be run / was not found in the guest)
  123    the guest kernel panicked
  124    the --timeout passed before the command exited
  125    the guest never started the command (the boot failed or stopped early),
         or its init could not run it
  122    the guest stopped while the command ran, before it reported a status
  121    the command exited 0 but the kernel reported a --fail-on verdict
  1      vmboot could not run the guest at all (the message says why); 2: bad arguments
  vmboot's own statuses can collide with the command's: --json says which it was.

examples:
  vmboot exec -- uname -a
      the kernel and busybox vmboot ships: nothing else needed but /dev/kvm
  vmboot exec --kernel bzImage -- sh -c 'echo out; echo err >&2; exit 7'; echo $?
      prints "out" on stdout, "err" on stderr, then 7
  vmboot exec --add data.bin:/data.bin -- md5sum /data.bin
      copy a host file into the guest (HOST alone puts it at /<its name>)
  vmboot exec --add ./tests:/t --env PATH=/bin --env LANG=C -- sh /t/run.sh
      a directory tree, and the command's environment
  vmboot exec --timeout 60 --json -- sleep 1000
      stop after 60 s (exit status 124); one JSON object on stdout at the end:
      {"reason": "timeout", "exit_status": null, "detail": ..., "stdout": ..., "stderr": ...,
       "timings": {...}, ...}   reasons: exited, panic, timeout, boot-failure, guest-error, lost
  vmboot exec --fail-on warning,oops,bug -- sh /t/stress.sh
      exit 121 when the command succeeded but the kernel printed a WARNING, an oops
      or a BUG (--json has "verdict" and the kernel's "reports" either way)
  vmboot exec --console -- dmesg
      the kernel's console (boot messages) on stderr as well
  vmboot exec --kernel bzImage --rootfs / -- python3 -c 'print(6*7)'
      the host's own root as the guest's (read-only), the command from the host's PATH,
      run in the current directory; stdin is piped in: `echo hi | vmboot exec ... -- cat`
  vmboot exec --share ./data:data -- sh -c 'mount -t virtiofs data /mnt && ls /mnt'
      a host directory over virtio-fs
  vmboot exec --disk data.ext4,ro -- sh -c 'mount -o ro /dev/vda /mnt && cat /mnt/f'
      a raw disk image as /dev/vda (same syntax as vmboot run --disk)
  echo hello | vmboot exec -v -- sh -c 'cat; exit 3'
      stdin piped in; -v says which channel ran (console, vsock or serial) and why

notes:
  On a host whose /dev/kvm emulates guest ring-0 code (the "PVM" software hypervisor) a
  run takes tens of seconds and only a kernel built for it boots, such as the one vmboot
  ships; see docs/pvm-hosts.md.
"""

EXIT_PANIC = 123
EXIT_TIMEOUT = 124
EXIT_NOT_STARTED = 125
EXIT_LOST = 122
EXIT_FAIL_ON = 121
EXIT_ERROR = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "exec",
        usage="%(prog)s [--kernel KERNEL] [-m SIZE] [--cpus N] [--add HOST[:GUEST]]... "
              "[--env NAME=VALUE]... [--timeout SECONDS] [--console] [--json] [--rootfs /] "
              "[--share HOST_DIR[:TAG][,ro]]... [--disk PATH[,ro]]... [--channel C] [-v] "
              "-- CMD [ARGS...]",
        help="boot a kernel, run one command in it, exit with its status",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--kernel", metavar="KERNEL", default=None,
                   help="a bzImage (default: $VMBOOT_KERNEL, else the kernel vmboot ships: see above)")
    add_size_arguments(p)
    p.add_argument("--add", metavar="HOST[:GUEST]", action="append", default=[], type=add_spec,
                   help="copy a host file or directory into the guest at GUEST "
                        "(default: /<its name>); repeatable")
    p.add_argument("--env", metavar="NAME=VALUE", action="append", default=[], type=env_spec,
                   help="an environment variable of the command; repeatable")
    p.add_argument("--timeout", metavar="SECONDS", type=seconds, default=None,
                   help="stop the guest after this many seconds (exit status 124; default: no limit)")
    p.add_argument("--console", action="store_true",
                   help="also stream the kernel's console (boot messages) to stderr")
    p.add_argument("--busybox", metavar="FILE", default=None,
                   help="a static x86-64 busybox for the guest (default: $VMBOOT_BUSYBOX, else the one "
                        "vmboot ships)")
    p.add_argument("--entry", choices=ENTRIES, default=DEFAULT_ENTRY,
                   help="how to enter the kernel, as for `vmboot run --entry` (elf64 on a "
                        "bzImage: decompress it on the host, faster under emulation)")
    p.add_argument("--fail-on", metavar="VERDICTS", type=fail_on, default=frozenset(),
                   help=FAIL_ON_HELP + f"; status {EXIT_FAIL_ON}")
    p.add_argument("--warm", action="store_true",
                   help="resume a guest saved ready for a command in the vmboot cache instead "
                        "of booting (the first --warm run of a kernel boots once and saves "
                        "it, with its --share directories unmounted); not with --add, "
                        "--rootfs, --vsock, --net or --disk; its channel is the agent's "
                        "virtio-console port")
    add_vsock_arguments(p)
    add_net_arguments(p)
    add_disk_argument(p)
    p.add_argument("--channel", choices=CHANNEL_CHOICES, default=AUTO,
                   help="what carries the command: the guest agent over a virtio-console port "
                        "(console) or vsock (vsock), or the UARTs (serial, stdin /dev/null); "
                        "auto (the default): console when the kernel has its driver, else serial")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr which channel carried the command, and why")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object at the end instead of streaming the output")
    p.add_argument("--rootfs", metavar="DIR", default=None,
                   help="only '/': boot on the host's own root (read-only over virtio-fs, "
                        "tmpfs on /tmp /run /var/tmp) and run CMD from the host's PATH in the "
                        "current directory with this environment (plus --env), its stdin "
                        "piped in, through the guest agent; needs virtiofsd")
    p.add_argument("--share", metavar="HOST_DIR[:TAG][,ro]", action="append", default=[],
                   type=share_argument,
                   help="share a host directory over virtio-fs (repeatable); in the guest: "
                        "mount -t virtiofs TAG DIR")
    p.add_argument("command", metavar="CMD", nargs=argparse.REMAINDER,
                   help="the command and its arguments (after --)")
    p.set_defaults(func=run)


def add_spec(text: str) -> tuple[str, str]:
    """``HOST[:GUEST]`` -> (host, guest). A HOST that exists as given is never split (so a
    host path may contain ':'); otherwise the text is split at its last ':'. GUEST defaults
    to ``/`` + HOST's name."""
    if not text:
        raise argparse.ArgumentTypeError("'' is not HOST[:GUEST] (valid: data.bin, data.bin:/x/data.bin)")
    host, guest = text, ""
    if not os.path.lexists(text) and ":" in text:
        host, _, guest = text.rpartition(":")
        if not host:
            raise argparse.ArgumentTypeError(
                f"{text!r}: the HOST part before ':' is empty (valid: HOST or HOST:GUEST)")
        if not guest:
            raise argparse.ArgumentTypeError(
                f"{text!r}: the GUEST part after ':' is empty (valid: HOST or HOST:GUEST)")
    if not guest:
        name = Path(host.rstrip("/")).name
        if not name or name in (".", ".."):
            raise argparse.ArgumentTypeError(
                f"{text!r}: cannot name a guest path after {host!r}; give one as HOST:GUEST")
        guest = "/" + name
    return host, guest


def env_spec(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> (name, value); NAME as a shell variable name."""
    from vmboot.execute.image import ENV_NAME_RE

    name, eq, value = text.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(f"{text!r} has no '=' (valid: NAME=VALUE, e.g. PATH=/bin)")
    if not ENV_NAME_RE.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"{name!r} is not a variable name (valid: letters, digits and '_', not starting with a digit)")
    return name, value


def exit_status_for(result_reason: str, exit_status: int | None) -> int:
    """Our exit status for an exec result (see the epilog)."""
    from vmboot.execute.result import ExecReason

    reason = ExecReason(result_reason)
    if reason is ExecReason.EXITED and exit_status is not None:
        return exit_status
    return {
        ExecReason.PANIC: EXIT_PANIC,
        ExecReason.TIMEOUT: EXIT_TIMEOUT,
        ExecReason.BOOT_FAILURE: EXIT_NOT_STARTED,
        ExecReason.GUEST_ERROR: EXIT_NOT_STARTED,
        ExecReason.LOST: EXIT_LOST,
    }.get(reason, EXIT_ERROR)


def _binary_writer(stream: TextIO) -> Callable[[bytes], object]:
    from vmboot.devices.console import stream_sink

    return stream_sink(stream)


def command_words(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given (valid: vmboot exec [OPTIONS] -- CMD [ARGS...])")
    return command


def _host_root(args: argparse.Namespace, command: list[str]) -> ExecResult:
    from vmboot.execute.host_exec import exec_on_host_root

    env = dict(os.environ)
    env.update(dict(args.env))
    stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer
    return exec_on_host_root(
        command, kernel=args.kernel, memory=args.memory, env=env, stdin=stdin,
        timeout=args.timeout,
        console=_binary_writer(sys.stderr) if args.console else None,
        on_stdout=None if args.json else _binary_writer(sys.stdout),
        on_stderr=None if args.json else _binary_writer(sys.stderr),
        shares=args.share, entry=args.entry, cpus=args.cpus)


def run(args: argparse.Namespace) -> int:
    from vmboot.execute.api import exec_command

    command = command_words(args)
    env: dict[str, str] = {}
    for name, value in args.env:
        env[name] = value
    if args.rootfs is not None:
        if args.add:
            raise UsageError("--add cannot be used with --rootfs (the guest sees the host's "
                             "files already)")
        if args.warm:
            raise UsageError("--warm cannot be used with --rootfs (the guest boots on the "
                             "host's root; there is no saved guest to resume)")
        if args.disk or args.channel != AUTO:
            raise UsageError("--disk and --channel cannot be used with --rootfs (the guest "
                             "boots on the host's root with the agent on virtio-console)")
        result = _host_root(args, command)
    else:
        result = exec_command(
            command,
            kernel=args.kernel,
            memory=args.memory,
            files=list(args.add),
            env=env,
            timeout=args.timeout,
            console=_binary_writer(sys.stderr) if args.console else False,
            on_stdout=None if args.json else _binary_writer(sys.stdout),
            on_stderr=None if args.json else _binary_writer(sys.stderr),
            busybox=args.busybox,
            entry=args.entry,
            cpus=args.cpus,
            warm=args.warm,
            shares=args.share,
            vsock=vsock_config(args),
            net=net_config(args),
            disks=args.disk,
            channel=args.channel,
            stdin=None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer,
        )
    status = exit_status_for(result.reason.value, result.exit_status)
    reading = result.read_console()
    failed_on = reading.triggered(args.fail_on)
    if failed_on and status == 0:
        status = EXIT_FAIL_ON
    if args.verbose:
        print(f"vmboot exec: channel: {result.channel} ({result.channel_reason})",
              file=sys.stderr)
    if args.json:
        summary = result.as_dict()
        summary["vmboot_exit_status"] = status
        print(json.dumps(summary, sort_keys=True))
    elif result.exit_status is None:
        print(f"vmboot exec: {result.one_line()}", file=sys.stderr)
    if failed_on and not args.json:
        titles = [r.title for r in reading.reports]
        print(f"vmboot exec: --fail-on {','.join(v.value for v in failed_on)}: "
              f"{'; '.join(titles) or reading.verdict.value}", file=sys.stderr)
    return status
