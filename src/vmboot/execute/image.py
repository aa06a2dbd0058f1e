"""The initramfs ``vmboot exec`` boots, and the host/guest protocol it speaks.

Two images (the channel is chosen by :mod:`vmboot.execute.channel`):

- the agent image (:func:`agent_initramfs`): busybox, and the guest agent
  (:mod:`vmboot.agent`) as ``/init``; the command travels over the agent's channel and runs
  as ``/bin/busybox env -- argv...`` (:func:`agent_argv`) with exactly the given environment,
  so a name is found as on the serial path. The one builder of "agent as init + busybox"
  images: ``vmboot exec``'s, the warm guest's (:mod:`vmboot.execute.warm`) and the pytest
  plugin's (:mod:`vmboot.testing`, with a link per busybox applet);
- the serial image (:func:`exec_initramfs`), below, for kernels without virtio-console.

What the serial image runs
--------------------------
``/init`` (``vmboot/execute/guest/init.sh``, busybox ash as PID 1) mounts /proc, /sys and
devtmpfs on /dev, puts ttyS1..ttyS3 in raw mode (``stty raw -echo``: no ``\\n`` ->
``\\r\\n``, 8-bit clean), then sources ``/vmboot/run.sh`` (``vmboot/execute/guest/run.sh``),
which reads the command from ``/vmboot/command``, runs it as
``busybox env -i -- NAME=value... argv...`` with stdin ``/dev/null``, and reports how it
ended. Then ``/init`` runs ``reboot -f``; with ``reboot=k`` on the command line the
kernel leaves by writing 0xFE to port 0x64.

The command travels in a file, not on the kernel command line, so arguments and values
may hold any bytes but NUL (spaces, quotes, newlines, non-UTF-8 as surrogate escapes).
``/vmboot/command`` is a POSIX sh fragment, ``set -- 'NAME=value' ... 'argv0' ...``,
every word single-quoted (a ``'`` inside becomes ``'\\''``): the shell can read it with
builtins only, no parsing of NUL-separated data (which a POSIX shell cannot do).
Because ``env`` takes leading ``NAME=value`` words as the environment, variable names
must be ``[A-Za-z_][A-Za-z0-9_]*`` and ``argv[0]`` must not contain ``=``. The
environment is exactly ``env``: no PATH is added (busybox runs its own applets, such
as ``ls``, without one; give ``PATH`` for anything else found by name).

Channels, and why
-----------------
The tiny kernels (the test kernels and the embedded guest's) have no PCI, no DEVMEM and so no
``/dev/port`` (DEVPORT needs DEVMEM), which rules out a dedicated I/O port written from
user space. VIRTIO_CONSOLE over virtio-mmio exists, but needs a virtio device model on
the host. The 8250 driver is there with SERIAL_8250_NR_UARTS=4 but
SERIAL_8250_RUNTIME_UARTS=1: it registers only ttyS0 unless the command line says
``8250.nr_uarts=4``. That parameter exists in this build: the ``__param`` table of
``tiny-vmlinux`` holds the string ``8250.nr_uarts`` (module name ``8250``, from
``8250-y := 8250_core.o``; ``8250_core.nr_uarts`` only with SERIAL_8250_DEPRECATED_OPTIONS,
which is off). The ports come from the kernel's legacy table ``old_serial_port``
(read from ``tiny-vmlinux``): COM1..COM4 at 0x3F8/IRQ4, 0x2F8/IRQ3, 0x3E8/IRQ4,
0x2E8/IRQ3, 115200 baud base. So the channels are four 16550 UARTs:

====== ====== ===== ==== =============================================================
tty    port   IRQ        carries
====== ====== ===== ==== =============================================================
ttyS0  0x3F8  4          kernel console (``console=ttyS0``) and ``vmboot-init:`` notes
ttyS1  0x2F8  3          the command's stdout, raw bytes
ttyS2  0x3E8  4          the command's stderr, raw bytes
ttyS3  0x2E8  3          status lines (below)
====== ====== ===== ==== =============================================================

Host side, for the engineer implementing ``vmboot exec``:

- kernel command line: ``console=ttyS0 8250.nr_uarts=4 reboot=k panic=-1`` (plus
  ``quiet`` to keep ttyS0 short); :data:`~vmboot.execute.layout.EXEC_KERNEL_ARGS` holds
  the vmboot-specific part.
- emulate all four UARTs. COM1..COM3 have UPF_SKIP_TEST; COM4 (0x2E8) does not, so the
  driver's loopback test runs on it: with MCR=0x1A (LOOP|OUT2|RTS), MSR bits 7:4 must
  read 0x9 (DCD|CTS). Output only flows with the THRE interrupt working (as for ttyS0).
  IRQ4 is shared by COM1 and COM3, IRQ3 by COM2 and COM4: drive each line as the OR of
  its two UARTs' pending interrupts (the driver's handler polls both ports on a line).
- bytes written to THR of ttyS1 / ttyS2 are the command's stdout / stderr, unchanged.
- ttyS3 carries ASCII lines: ``VMBOOT-START``, then ``VMBOOT-EXIT <n>`` (decimal 0-255,
  as the shell reports: 128+N when killed by signal N, 126/127 when the command could
  not be run / was not found), or ``VMBOOT-ERROR <text>`` instead. :func:`parse_status`
  decodes them. The status is written after the command exited and after the last
  close of ttyS1/ttyS2 drained them, so all output of the command precedes it (output of
  background processes the command left running may be cut off by the reboot).
- no status line at all means the guest never got that far: look at ttyS0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmboot.agent import agent_binary
from vmboot.errors import GuestError, InitramfsError
from vmboot.execute.guest import INIT_SCRIPT, RUN_SCRIPT, guest_file
from vmboot.execute.layout import BUSYBOX_PATH, INIT_PATH, SHELL_PATH

if TYPE_CHECKING:
    from vmboot.initramfs.entry import Entry

# -- channels -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SerialChannel:
    """One 16550 UART as the guest kernel numbers it."""

    tty: str
    io_port: int
    irq: int


@dataclass(frozen=True, slots=True)
class ExecChannels:
    """The four serial ports of the exec protocol (see the module docstring)."""

    console: SerialChannel
    stdout: SerialChannel
    stderr: SerialChannel
    status: SerialChannel


EXEC_CHANNELS = ExecChannels(
    console=SerialChannel("ttyS0", 0x3F8, 4),
    stdout=SerialChannel("ttyS1", 0x2F8, 3),
    stderr=SerialChannel("ttyS2", 0x3E8, 4),
    status=SerialChannel("ttyS3", 0x2E8, 3),
)

STATUS_START = b"VMBOOT-START"
STATUS_EXIT = b"VMBOOT-EXIT"
STATUS_ERROR = b"VMBOOT-ERROR"
EXIT_STATUS_MAX = 255

# -- image layout ---------------------------------------------------------------------------

PROTOCOL_DIR = "vmboot"
RUN_PATH = f"{PROTOCOL_DIR}/run.sh"
COMMAND_PATH = f"{PROTOCOL_DIR}/command"
CONSOLE_PATH = "dev/console"
CONSOLE_MAJOR, CONSOLE_MINOR = 5, 1
"""/dev/console: the kernel opens it for init's stdin/stdout/stderr before devtmpfs is mounted.
The kernel's built-in initramfs (usr/default_cpio_list) has it too; this copy keeps the
image self-contained for kernels built with another CONFIG_INITRAMFS_SOURCE."""
MOUNT_POINTS = ("dev", "proc", "sys")
AGENT_MOUNT_POINTS = (*MOUNT_POINTS, "mnt")
"""The agent image also has an empty /mnt, for a --share or a --disk."""
TMP_DIR, TMP_MODE = "tmp", 0o1777
RESERVED_PATHS = (BUSYBOX_PATH, SHELL_PATH, INIT_PATH, RUN_PATH, COMMAND_PATH, CONSOLE_PATH)
AGENT_RESERVED_PATHS = (BUSYBOX_PATH, SHELL_PATH, INIT_PATH, CONSOLE_PATH)

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
COMMAND_HEADER = b"# vmboot exec command, sourced by /vmboot/run.sh: environment words, then argv\n"


def shell_quote(word: bytes) -> bytes:
    """``word`` as one single-quoted POSIX sh word (any bytes but NUL)."""
    return b"'" + word.replace(b"'", b"'\\''") + b"'"


def _word(text: str, what: str) -> bytes:
    raw = os.fsencode(text)
    if b"\0" in raw:
        raise InitramfsError(f"{what} {text!r} contains a NUL byte (valid: any bytes but NUL)")
    return raw


def check_command(command: Sequence[str], env: Mapping[str, str]) -> list[bytes]:
    """The environment words and then the arguments, each checked (as ``busybox env`` takes
    them: ``NAME=value`` words first, so argv[0] cannot hold ``=``)."""
    if not command:
        raise InitramfsError("exec command is empty (valid: at least argv[0], the program to run)")
    if command[0] == "" or "=" in command[0]:
        raise InitramfsError(
            f"exec command argv[0] {command[0]!r} is empty or contains '=', which env(1) would take "
            "as a variable assignment (valid: a program name or path without '=')"
        )
    words: list[bytes] = []
    for name, value in env.items():
        if not ENV_NAME_RE.fullmatch(name):
            raise InitramfsError(
                f"exec environment variable name {name!r} is not usable "
                "(valid: letters, digits and '_', not starting with a digit)"
            )
        words.append(_word(f"{name}={value}", f"exec environment variable {name}, value"))
    words += [_word(arg, f"exec command argv[{i}]") for i, arg in enumerate(command)]
    return words


def command_file(command: Sequence[str], env: Mapping[str, str]) -> bytes:
    """The contents of ``/vmboot/command`` (see the module docstring for the format)."""
    words = check_command(command, env)
    return COMMAND_HEADER + b"set -- " + b" ".join(shell_quote(w) for w in words) + b"\n"


def _base_entries(busybox: Path, command: Sequence[str], env: Mapping[str, str]
                  ) -> list[Entry]:
    from vmboot.initramfs.entry import DEFAULT_EXECUTABLE_MODE, DEFAULT_FILE_MODE, Entry

    entries = [
        *(Entry.directory(d) for d in MOUNT_POINTS),
        Entry.directory(TMP_DIR, TMP_MODE),
        Entry.char_device(CONSOLE_PATH, CONSOLE_MAJOR, CONSOLE_MINOR),
        Entry.host_file(BUSYBOX_PATH, busybox, DEFAULT_EXECUTABLE_MODE),
        Entry.symlink(SHELL_PATH, "busybox"),
        Entry.file(INIT_PATH, guest_file(INIT_SCRIPT), DEFAULT_EXECUTABLE_MODE),
        Entry.file(RUN_PATH, guest_file(RUN_SCRIPT), DEFAULT_FILE_MODE),
    ]
    entries.append(Entry.file(COMMAND_PATH, command_file(command, env), DEFAULT_FILE_MODE))
    return entries


def exec_entries(command: Sequence[str], env: Mapping[str, str],
                 files: Iterable[tuple[Path, str]], busybox: Path) -> list[Entry]:
    """The entries of the exec image: busybox, /init, the command, and the user's ``files``.

    ``files`` are (host path, guest path) pairs, as for
    :func:`~vmboot.initramfs.builders.entries_from_files`; they may add to the image's
    directories but not replace its own files (:data:`RESERVED_PATHS`).
    """
    return _with_user_files(_base_entries(busybox, command, env), files, RESERVED_PATHS)


def _with_user_files(base: list[Entry], files: Iterable[tuple[Path, str]],
                     reserved: Sequence[str]) -> list[Entry]:
    """``base`` plus the user's ``files``, which may add to its directories only."""
    from vmboot.initramfs.builders import complete_tree, entries_from_files
    from vmboot.initramfs.entry import EntryKind

    user = entries_from_files(files)
    base_paths = {e.path: e for e in base}
    merged = list(base)
    for entry in user:
        mine = base_paths.get(entry.path)
        if mine is None:
            merged.append(entry)
        elif not (mine.kind is EntryKind.DIRECTORY and entry.kind is EntryKind.DIRECTORY):
            raise InitramfsError(
                f"exec file for guest path {entry.path!r} clashes with the image's own "
                f"{mine.kind.name.lower()} there (reserved: {', '.join(reserved)})"
            )
    return complete_tree(merged)


# -- the agent image ------------------------------------------------------------------------


def agent_entries(files: Iterable[tuple[Path, str]], busybox: Path, *,
                  applets: Iterable[str] = (), directories: Iterable[str] = ()) -> list[Entry]:
    """The entries of the agent image: busybox, the agent as ``/init``, a link to busybox in
    ``/bin`` for each of ``applets`` (``sh`` always), the empty ``directories``, the user's
    ``files``."""
    from vmboot.initramfs.entry import DEFAULT_EXECUTABLE_MODE, Entry

    bin_dir = BUSYBOX_PATH.rsplit("/", 1)[0]
    busybox_name = BUSYBOX_PATH.rsplit("/", 1)[1]
    links = {SHELL_PATH} | {f"{bin_dir}/{name}" for name in applets if name != busybox_name}
    base = [
        *(Entry.directory(d) for d in AGENT_MOUNT_POINTS),
        Entry.directory(TMP_DIR, TMP_MODE),
        *(Entry.directory(d.strip("/")) for d in directories),
        Entry.char_device(CONSOLE_PATH, CONSOLE_MAJOR, CONSOLE_MINOR),
        Entry.host_file(BUSYBOX_PATH, busybox, DEFAULT_EXECUTABLE_MODE),
        *(Entry.symlink(link, busybox_name) for link in sorted(links)),
        Entry.host_file(INIT_PATH, agent_binary(), DEFAULT_EXECUTABLE_MODE),
    ]
    return _with_user_files(base, files, AGENT_RESERVED_PATHS)


def agent_initramfs(files: Iterable[tuple[Path, str]], busybox: Path, *,
                    applets: Iterable[str] = (), directories: Iterable[str] = (),
                    compression: str = "none") -> bytes:
    """The agent image (the same for every command: the command is not in it); the same
    inputs give the same bytes. ``busybox`` must be a static x86-64 busybox; ``applets``
    and ``directories`` as :func:`agent_entries`."""
    from vmboot.execute.discovery import check_static_busybox
    from vmboot.initramfs.builders import build_initramfs

    check_static_busybox(busybox)
    return build_initramfs(agent_entries(files, busybox, applets=applets,
                                         directories=directories), compression=compression)


def agent_argv(command: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """What the agent runs for ``command``: ``busybox env`` finds a name as the serial image
    does (busybox applets first, then the default search path), and execs it."""
    check_command(command, env)
    return [f"/{BUSYBOX_PATH}", "env", "--", *command]


def exec_initramfs(command: list[str], env: dict[str, str], files: list[tuple[Path, str]],
                   busybox: Path, *, compression: str = "none") -> bytes:
    """The ``vmboot exec`` initramfs for ``command`` (uncompressed by default: fastest to boot).

    ``busybox`` must be a static x86-64 busybox (:func:`vmboot.execute.discovery.find_busybox`).
    """
    from vmboot.execute.discovery import check_static_busybox
    from vmboot.initramfs.builders import build_initramfs

    check_static_busybox(busybox)
    return build_initramfs(exec_entries(command, env, files, busybox), compression=compression)


# -- host side: the status channel ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecStatus:
    """What the status channel said."""

    started: bool
    exit_status: int | None
    """The command's exit status, or ``None`` if no ``VMBOOT-EXIT`` line arrived."""


def parse_status(data: bytes) -> ExecStatus:
    """Decode the bytes received on the status channel (ttyS3).

    Raises :class:`~vmboot.errors.GuestError` for a ``VMBOOT-ERROR`` line or a line that
    is not part of the protocol.
    """
    started = False
    exit_status: int | None = None
    for raw in data.splitlines():
        line = raw.strip()
        if not line:
            continue
        word, _, rest = line.partition(b" ")
        if word == STATUS_START:
            started = True
        elif word == STATUS_EXIT and rest.isdigit() and int(rest) <= EXIT_STATUS_MAX:
            exit_status = int(rest)
        elif word == STATUS_ERROR:
            raise GuestError(f"guest init: {rest.decode(errors='replace')}")
        else:
            raise GuestError(
                f"status channel line {raw[:80]!r} is not part of the exec protocol "
                f"(valid: {STATUS_START.decode()}, {STATUS_EXIT.decode()} <0-255>, "
                f"{STATUS_ERROR.decode()} <text>)"
            )
    return ExecStatus(started, exit_status)
