"""A socket path left behind by a killed vmboot: the vsock hybrid socket and virtiofsd's
vhost-user socket reuse it when nobody listens there, and refuse it (touching nothing)
when somebody does (:mod:`vmboot.devices.socket_path`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import missing
from vmboot.cli.main import EXIT_ERROR, main
from vmboot.devices.socket_path import PathState, check_socket_path, listen_unix, probe
from vmboot.devices.vhost_user.virtiofsd import SOCKET_FIELD, Virtiofsd, VirtiofsdMissing, find_virtiofsd
from vmboot.devices.virtio.io_thread import IoThread
from vmboot.devices.virtio.vsock import VsockDevice
from vmboot.devices.virtio.vsock_host import VsockConfig
from vmboot.errors import BootConfigError, VmbootError

WAIT = 10.0
LIVE_BACKLOG = 16

KILLED_LISTENER = """
import os, signal, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(1)
os.kill(os.getpid(), signal.SIGKILL)
"""


def leave_stale_socket(path: Path) -> None:
    """What a vmboot killed while it listened leaves: a socket file nobody listens on."""
    proc = subprocess.run([sys.executable, "-c", KILLED_LISTENER, str(path)], check=False,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert probe(str(path)) is PathState.STALE


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A path another program listens on."""
    path = tmp_path / "live.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(LIVE_BACKLOG)  # every probe's connection waits in it, never accepted
    yield path, server
    server.close()


def still_serves(path: Path, server: socket.socket) -> bool:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(WAIT)
    try:
        client.connect(str(path))
        server.settimeout(WAIT)
        accepted, _ = server.accept()
        accepted.close()
        return True
    finally:
        client.close()


def test_probe_tells_every_case_apart(tmp_path: Path, live: tuple[Path, socket.socket]) -> None:
    assert probe(str(tmp_path / "none")) is PathState.FREE
    leave_stale_socket(tmp_path / "stale.sock")
    assert probe(str(live[0])) is PathState.LIVE
    (tmp_path / "file").write_bytes(b"x")
    assert probe(str(tmp_path / "file")) is PathState.NOT_A_SOCKET
    (tmp_path / "dir").mkdir()
    assert probe(str(tmp_path / "dir")) is PathState.NOT_A_SOCKET


def test_listen_unix_reuses_a_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    leave_stale_socket(path)
    server = listen_unix(str(path), "test socket", 1)
    try:
        assert still_serves(path, server)
    finally:
        server.close()


def test_listen_unix_refuses_a_live_socket_and_leaves_it_alone(
        live: tuple[Path, socket.socket]) -> None:
    path, server = live
    with pytest.raises(BootConfigError, match=r"test socket: .*live\.sock' is a socket another "
                                              r"program listens on.*choose another path"):
        listen_unix(str(path), "test socket", 1)
    assert still_serves(path, server)


def test_listen_unix_refuses_a_file(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"keep me")
    with pytest.raises(BootConfigError, match="already exists and is not a socket"):
        check_socket_path(str(path), "test socket")
    assert path.read_bytes() == b"keep me"


def test_a_path_too_long_for_a_unix_socket_is_refused_naming_the_limit(tmp_path: Path) -> None:
    fits = "/" + "p" * 106
    assert check_socket_path(fits, "test socket") is PathState.FREE
    path = str(tmp_path / ("s" * max(1, 108 - len(str(tmp_path)))))
    with pytest.raises(BootConfigError, match=r"test socket: .* is \d+ bytes long, more than "
                                              r"the 107 a UNIX socket path may have; .*TMPDIR"):
        listen_unix(path, "test socket", 1)
    assert not os.path.exists(path)


# -- the vsock hybrid socket -------------------------------------------------------------------
def test_vsock_reuses_a_stale_hybrid_socket(tmp_path: Path) -> None:
    path = tmp_path / "v.sock"
    leave_stale_socket(path)
    config = VsockConfig(uds_path=str(path))
    config.validate()
    device = VsockDevice(config)
    io = IoThread()
    device.attach_io_thread(io)
    try:
        assert probe(str(path)) is PathState.LIVE  # the device listens there now
    finally:
        device.close()
        io.stop()
    assert not path.exists()


def test_vsock_refuses_a_live_hybrid_socket(live: tuple[Path, socket.socket]) -> None:
    path, server = live
    with pytest.raises(BootConfigError, match=r"vsock path: .* another program listens on"):
        VsockConfig(uds_path=str(path)).validate()
    with pytest.raises(BootConfigError, match=r"vsock path: .* another program listens on"):
        VsockDevice(VsockConfig(uds_path=str(path)))
    assert still_serves(path, server)


def test_vsock_device_refuses_a_socket_that_came_alive_after_validation(
        tmp_path: Path) -> None:
    path = tmp_path / "v.sock"
    device = VsockDevice(VsockConfig(uds_path=str(path)))  # free when checked
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    io = IoThread()
    try:
        with pytest.raises(BootConfigError, match="another program listens on"):
            device.attach_io_thread(io)
        assert still_serves(path, server)
    finally:
        device.close()
        io.stop()
        server.close()


def test_cli_refuses_a_live_vsock_socket_before_booting(
        live: tuple[Path, socket.socket], capsys: pytest.CaptureFixture[str]) -> None:
    path, server = live
    assert main(["run", "no-such-kernel", "--vsock", str(path)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "vsock path" in err and "another program listens on" in err, err
    assert still_serves(path, server)


def test_cli_takes_a_stale_vsock_socket(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v.sock"
    leave_stale_socket(path)
    assert main(["run", str(tmp_path / "no-such-kernel"), "--vsock", str(path)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "vsock path" not in err and "cannot read the kernel" in err, err  # past the socket


# -- virtiofsd's vhost-user socket -------------------------------------------------------------
def _virtiofsd() -> None:
    try:
        find_virtiofsd()
    except VirtiofsdMissing as exc:
        missing("virtiofsd", str(exc))


def test_virtiofsd_reuses_a_stale_socket(tmp_path: Path) -> None:
    _virtiofsd()
    path = tmp_path / "fs.sock"
    leave_stale_socket(path)
    shared = tmp_path / "shared"
    shared.mkdir()
    daemon = Virtiofsd.start(shared, socket_path=str(path))
    try:
        assert daemon.socket_path == str(path)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(WAIT)
        client.connect(str(path))  # virtiofsd's listening socket
        client.close()
        assert daemon.failure() is None
    finally:
        daemon.stop()
    assert not path.exists()


def test_virtiofsd_refuses_a_live_socket_before_starting(
        tmp_path: Path, live: tuple[Path, socket.socket]) -> None:
    path, server = live
    shared = tmp_path / "shared"
    shared.mkdir()
    binary = tmp_path / "not-started"
    binary.write_text("#!/bin/sh\ntouch \"$0.ran\"\n")
    binary.chmod(0o755)
    with pytest.raises(VmbootError, match=f"{SOCKET_FIELD}: .* another program listens on"):
        Virtiofsd.start(shared, binary=binary, socket_path=str(path))
    assert not Path(f"{binary}.ran").exists() and still_serves(path, server)
    assert os.path.exists(path)
