"""virtiofsd, the virtio-fs back end: found on the host, started per share, stopped with the VM.

vmboot makes the listening socket itself and hands it to virtiofsd with ``--fd``, so there
is no window in which vmboot could connect before virtiofsd listens (the race that makes
other tools wait for a socket file to appear): the connection is queued on a socket that
already listens. Both virtiofsd implementations take ``--fd``: the C one shipped with QEMU up
to 7.2 (``-o source=DIR``) and the Rust one (``--shared-dir DIR``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmboot.devices.owned_dir import OwnedDir
from vmboot.devices.socket_path import check_socket_path, listen_unix
from vmboot.errors import UsageError

log = logging.getLogger("vmboot.virtiofsd")

ENV_VAR = "VMBOOT_VIRTIOFSD"
KNOWN_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd", "/usr/lib/virtiofsd")
"""Where Fedora and the standalone package, Debian/Ubuntu's QEMU 7.x, and others put it."""
PACKAGE_HINT = ("install virtiofsd (Debian 12 and Ubuntu 22.04: package qemu-system-common; "
                "newer Debian and Ubuntu, Fedora: package virtiofsd), or set $VMBOOT_VIRTIOFSD")
STOP_SECONDS = 5.0
LOG_NAME = "virtiofsd.log"
LOG_TAIL_BYTES = 4096
READ_ONLY_WRAPPER = (
    'set -e; mount --rbind "$0" "$1"; '
    'findmnt -R -n -r -o TARGET "$1" | while read -r m; do mount -o remount,bind,ro "$m"; done; '
    'shift; exec "$@"')
"""Run by ``sh -c SCRIPT SOURCE MOUNTPOINT VIRTIOFSD...`` in a private mount namespace: the
shared tree, with the file systems mounted below it, is bind-mounted at MOUNTPOINT and each
of those mounts made read-only, seen only by virtiofsd, which then replaces the shell and
serves MOUNTPOINT: no write of the guest can reach the host tree (the C virtiofsd has no
read-only option). Any step that fails stops the start (``set -e``)."""
RO_MOUNTPOINT = "source"
USER_NAMESPACE = ("--user", "--map-root-user")
"""``unshare`` options of a new user namespace in which the calling user is root."""
USERNS_TRIAL_SECONDS = 10.0
USERNS_HINT = ("run vmboot as root, or allow unprivileged user namespaces (sysctl "
               "kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0; on "
               "Ubuntu 24.04 also kernel.apparmor_restrict_unprivileged_userns=0)")
SOCKET_FIELD = "virtiofsd socket"
TMPDIR_PREFIX = "vmboot-virtiofs-"
"""The private temporary directory of each virtiofsd (its socket and log)."""


class VirtiofsdMissing(UsageError):
    """No virtiofsd binary was found."""


def find_virtiofsd() -> Path:
    """``$VMBOOT_VIRTIOFSD``, then the known install paths, then ``$PATH``."""
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise VirtiofsdMissing(f"${ENV_VAR}={override}: not an executable file")
        return path
    for candidate in KNOWN_PATHS:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    found = shutil.which("virtiofsd")
    if found:
        return Path(found)
    raise VirtiofsdMissing(f"virtiofsd not found (looked in {', '.join(KNOWN_PATHS)} and $PATH): "
                           f"{PACKAGE_HINT}")


def _is_rust(binary: Path) -> bool:
    try:
        out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--shared-dir" in out.stdout + out.stderr


def _namespaces(read_only: bool, runs_unprivileged: bool) -> list[str]:
    """What virtiofsd is started under. As root: nothing, or ``unshare`` into a private
    mount namespace for a read-only share. Without root: a new user namespace in which this
    user is root (``unshare --user --map-root-user``) wherever root is needed, that is for
    a read-only share's mount and for a virtiofsd that cannot run unprivileged (QEMU's C
    one: its sandbox unshares namespaces); refused here, with the reason and what to do,
    when the host does not allow it."""
    as_root = os.geteuid() == 0
    if not read_only and (as_root or runs_unprivileged):
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        raise UsageError("virtiofsd needs unshare(1) (package util-linux) here, to make a "
                         "private mount namespace for a read-only share or a user namespace "
                         "without root; install it")
    mount = ["--mount", "--propagation", "private"] if read_only else []
    if as_root:
        return [unshare, *mount]
    problem = user_namespace_problem()
    if problem is not None:
        why = ("a read-only share (',ro') run without root needs a user namespace in which "
               "virtiofsd's read-only bind mount is made" if read_only else
               "QEMU's C virtiofsd needs root for its sandbox; without root vmboot starts it "
               "in a user namespace")
        raise UsageError(f"{why}, and {problem}; {USERNS_HINT}")
    return [unshare, *USER_NAMESPACE, *mount]


@functools.cache
def user_namespace_problem() -> str | None:
    """Why this user cannot be root in a new user namespace and make the read-only mount of
    :data:`READ_ONLY_WRAPPER` there (None: it can). Tried once per process, on two empty
    directories."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare(1) is missing (package util-linux)"
    with tempfile.TemporaryDirectory(prefix="vmboot-userns-") as top:
        source, target = Path(top, "source"), Path(top, "target")
        source.mkdir()
        target.mkdir()
        try:
            trial = subprocess.run(
                [unshare, *USER_NAMESPACE, "--mount", "--propagation", "private", "sh", "-c",
                 READ_ONLY_WRAPPER, str(source), str(target), "true"],
                capture_output=True, text=True, timeout=USERNS_TRIAL_SECONDS, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"the trial in a user namespace failed: {exc}"
    if trial.returncode == 0:
        return None
    last = (trial.stderr.strip().splitlines() or [f"exit status {trial.returncode}"])[-1]
    return f"this host does not allow it ({last})"


@dataclass
class Virtiofsd:
    """A running virtiofsd serving ``source`` on a socket vmboot listens on."""

    process: subprocess.Popen[bytes]
    socket_path: str
    source: Path
    _tmpdir: OwnedDir
    _own_path: bool = False
    """The socket is at a path the caller chose, outside the temporary directory: removed
    by :meth:`stop`."""

    @classmethod
    def start(cls, source: Path, binary: Path | None = None, cache: str = "auto",
              extra_args: tuple[str, ...] = (), read_only: bool = False,
              socket_path: str | None = None) -> Virtiofsd:
        """Start virtiofsd on ``source``. ``socket_path``: where its vhost-user socket is
        (default: in a private temporary directory, :data:`TMPDIR_PREFIX`; those a killed
        vmboot left are removed here, :mod:`vmboot.devices.owned_dir`); a stale socket file an earlier run
        left there is replaced, a live one refused (:mod:`vmboot.devices.socket_path`)."""
        if not source.is_dir():
            raise UsageError(f"share {source}: not a directory")
        if socket_path is not None:
            check_socket_path(socket_path, SOCKET_FIELD)
        exe = binary or find_virtiofsd()
        rust = _is_rust(exe)
        wrapper = _namespaces(read_only, runs_unprivileged=rust)
        tmpdir = OwnedDir(TMPDIR_PREFIX)
        path = socket_path or os.path.join(tmpdir.path, "vhost-user.sock")
        served = source
        if read_only:
            served = Path(tmpdir.path, RO_MOUNTPOINT)
            served.mkdir()
        try:
            listener = listen_unix(path, SOCKET_FIELD, 1)
        except BaseException:
            tmpdir.close()
            raise
        try:
            fd = listener.fileno()
            if rust:
                args = [str(exe), f"--fd={fd}", f"--shared-dir={served}", f"--cache={cache}",
                        "--sandbox=none"]
            else:
                args = [str(exe), f"--fd={fd}", "-o", f"source={served}", "-o", f"cache={cache}",
                        "-o", "sandbox=chroot" if os.geteuid() == 0 else "sandbox=namespace"]
            args += list(extra_args)
            if read_only:
                args = ["sh", "-c", READ_ONLY_WRAPPER, str(source), str(served), *args]
            args = [*wrapper, *args]
            log.info("starting %s", " ".join(args))
            # A file, not a pipe: nobody reads virtiofsd's log while it runs, and a full
            # pipe would stall it. Its own session: a Ctrl-C at the terminal is for the
            # command in the guest, not for the file server under it (vmboot stops it).
            with open(os.path.join(tmpdir.path, LOG_NAME), "wb") as log_file:
                process = subprocess.Popen(args, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=log_file,
                                           start_new_session=True)
        except OSError as exc:
            tmpdir.close()
            if socket_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(socket_path)
            raise UsageError(f"cannot start virtiofsd ({exe}): {exc.strerror or exc}") from None
        finally:
            listener.close()  # virtiofsd holds its own copy of the listening socket
        return cls(process, path, source, tmpdir, socket_path is not None)

    def failure(self) -> str | None:
        """One line naming why virtiofsd ended, if it has."""
        code = self.process.poll()
        if code is None:
            return None
        if code < 0:
            with contextlib.suppress(ValueError):
                return (f"virtiofsd for {self.source} exited with status {code} "
                        f"(killed by {signal.Signals(-code).name})")
        err = b""
        with contextlib.suppress(OSError):
            err = Path(self._tmpdir.path, LOG_NAME).read_bytes()[-LOG_TAIL_BYTES:]
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return f"virtiofsd for {self.source} exited with status {code}: {last[0]}".rstrip(": ")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._tmpdir.close()
        if self._own_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
