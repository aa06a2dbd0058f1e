"""User-mode networking through ``passt`` (Debian and Ubuntu package ``passt``), the backend
libkrun and podman use, in its QEMU socket mode: frames travel over a UNIX stream socket,
each as a 4-byte big-endian length and the Ethernet frame.

passt gives the guest an address by DHCP (the host's own address, as passt sees it), maps
the gateway address to the host's loopback, and forwards the host ports given with
``-t HOSTPORT:GUESTPORT`` into the guest. Started by root, passt switches to ``nobody`` and
its socket is then out of reach; vmboot therefore starts it as ``nobody`` itself
(``setpriv``) in a private directory that user owns.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmboot.net.backend import Chunk, FrameDropped, NetBackendDown, NetBackendError
from vmboot.net.frame_stream import FrameStream

PASST_PACKAGE = "passt"
NOBODY = 65534
USER_MTU = 65520
"""The MTU the device announces with passt: passt's own, which its DHCP server offers too.
Big frames mean few of them, and where the guest kernel is emulated each frame costs it
thousands of instructions: 1 MiB arrives in 43 frames instead of 764 at 1500."""
START_TIMEOUT = 10.0
"""Seconds passt may take to open its socket."""


@dataclass(frozen=True)
class PortForward:
    """``--publish HOSTPORT:GUESTPORT``: TCP connections to the host's port go to the guest's."""

    host: int
    guest: int

    @classmethod
    def parse(cls, text: str) -> PortForward:
        host, _sep, guest = text.partition(":")
        try:
            ports = (int(host), int(guest or host))
        except ValueError:
            ports = (0, 0)
        if not all(1 <= p <= 65535 for p in ports):
            raise NetBackendError(f"--publish: {text!r} is not HOSTPORT:GUESTPORT with ports "
                                  "in 1..65535 (e.g. 8080:80)")
        return cls(*ports)

    def __str__(self) -> str:
        return f"{self.host}:{self.guest}"


def passt_command(passt: str, socket_path: Path, publish: Sequence[PortForward],
                  as_root: bool) -> list[str]:
    """The command line that starts passt in the foreground on ``socket_path``."""
    tcp = ",".join(str(p) for p in publish)
    command = [passt, "--foreground", "--quiet", "--one-off", "--socket", str(socket_path),
               "--tcp-ports", tcp or "none"]
    if as_root:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise NetBackendError("--net user: running as root, vmboot starts passt as nobody "
                                  "with setpriv, which is missing (package util-linux)")
        command = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                   *command]
    return command


class PasstBackend:
    kind = "user"
    vnet_hdr = False
    offload_features = 0
    mtu = USER_MTU

    def __init__(self, publish: Sequence[PortForward] = (), passt: str | None = None) -> None:
        binary = passt or shutil.which("passt")
        if binary is None:
            raise NetBackendError("--net user: the passt program is not installed (it is in "
                                  f"the Debian and Ubuntu package '{PASST_PACKAGE}': "
                                  f"apt-get install {PASST_PACKAGE})")
        self.publish = tuple(publish)
        self._dir = Path(tempfile.mkdtemp(prefix="vmboot-passt-"))
        as_root = os.geteuid() == 0
        if as_root:
            os.chown(self._dir, NOBODY, NOBODY)
        self.socket_path = self._dir / "passt.sock"
        self._log = self._dir / "passt.log"
        self._stream: FrameStream | None = None
        self._process: subprocess.Popen[bytes] | None = None
        try:
            command = passt_command(binary, self.socket_path, self.publish, as_root)
            with open(self._log, "wb") as log:
                self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                                 stdout=log, stderr=log, close_fds=True)
            self._stream = FrameStream(self._connect())
        except BaseException:
            self.close()
            raise

    def _connect(self) -> socket.socket:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise NetBackendError(f"--net user: passt exited with status "
                                      f"{self._process.returncode} before opening its socket: "
                                      f"{self._log_tail()}")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise NetBackendError(f"--net user: passt did not open its socket "
                                          f"{self.socket_path.name} within {START_TIMEOUT:.0f} s: "
                                          f"{self._log_tail()}") from None
                time.sleep(0.01)
                continue
            return s

    def _log_tail(self) -> str:
        try:
            text = self._log.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return " / ".join(text.splitlines()[-3:]) or "(it printed nothing)"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def fileno(self) -> int:
        return -1 if self._stream is None else self._stream.fileno()

    def set_offloads(self, features: int) -> None:
        """passt takes plain frames: there is nothing to offload."""

    def _down(self, why: str) -> NetBackendDown:
        status = None if self._process is None else self._process.poll()
        exited = f" (passt exited with status {status})" if status is not None else ""
        return NetBackendDown(f"passt: {why}{exited}")

    def recv(self) -> bytes | None:
        if self._stream is None:
            return None
        try:
            return self._stream.recv()
        except NetBackendDown as e:
            raise self._down(str(e)) from None

    def send(self, parts: Sequence[Chunk]) -> bool:
        if self._stream is None:
            raise FrameDropped("passt: closed")
        try:
            return self._stream.send(parts)
        except NetBackendDown as e:
            raise self._down(str(e)) from None

    def flush(self) -> bool:
        if self._stream is None:
            return True
        try:
            return self._stream.flush()
        except NetBackendDown as e:
            raise self._down(str(e)) from None

    def describe(self) -> dict[str, object]:
        return {"backend": "user", "publish": [str(p) for p in self.publish]}

    def close(self) -> None:
        """Disconnect and stop passt (idempotent)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
