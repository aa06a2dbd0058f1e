"""A read-only share (``--share DIR:TAG,ro``) started by a user without privileges.

vmboot serves a read-only share from a read-only bind mount of the directory that only
virtiofsd sees, made in a private mount namespace; without privileges that namespace is
inside a new user namespace (``unshare --user --map-root-user``). The test runs the start
as uid 65534 (``setpriv``, so it needs root to switch user) and drives virtiofsd's queue
itself, as a guest would (no boot): reads work, a MKDIR fails with ``EROFS``, and the
same share started writable takes the MKDIR, so the refusal comes from ``ro``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmboot
from conftest import missing, require
from test_vhost_user import virtiofsd_or_skip
from vmboot.devices.vhost_user import virtiofsd as virtiofsd_module
from vmboot.devices.vhost_user.virtiofsd import Virtiofsd, user_namespace_problem
from vmboot.errors import UsageError

NOBODY = 65534
EROFS = 30
TIMEOUT = 120

PROBE = r"""
import json, struct, sys
from pathlib import Path
from vhost_user_support import (ATTR, ENTRY_OUT, FUSE_INIT, FUSE_LOOKUP, OUT_HEADER,
                                QueueDriver, fuse_request, start_queue)
from vmboot.devices.vhost_user.frontend import VhostUserFrontend
from vmboot.devices.vhost_user.virtiofsd import Virtiofsd
from vmboot.hv.guest_memory import GuestMemory

FUSE_MKDIR = 9
share, read_only = Path(sys.argv[1]), sys.argv[2] == "ro"
daemon = Virtiofsd.start(share, read_only=read_only)
mem = GuestMemory(32 << 20, shared=True)
driver = QueueDriver(mem)
front = VhostUserFrontend.connect(daemon.socket_path, "virtio-fs")
try:
    start_queue(front, mem, driver)
    driver.request(fuse_request(FUSE_INIT, 1, 0, struct.pack("<IIII", 7, 31, 0, 0)))
    entry = driver.request(fuse_request(FUSE_LOOKUP, 2, 1, b"hello.txt\0"))
    lookup_error = OUT_HEADER.unpack_from(entry)[1]
    size = ATTR.unpack_from(entry, OUT_HEADER.size + ENTRY_OUT.size)[1] if not lookup_error else -1
    made = driver.request(fuse_request(FUSE_MKDIR, 3, 1,
                                       struct.pack("<II", 0o755, 0) + b"made\0"))
    print(json.dumps({"lookup_error": lookup_error, "size": size,
                      "mkdir_error": OUT_HEADER.unpack_from(made)[1],
                      "failure": daemon.failure()}))
finally:
    front.close()
    driver.close()
    mem.close()
    daemon.stop()
"""


@pytest.fixture
def share() -> Iterator[Path]:
    """A directory uid 65534 owns and could write to: only ``ro`` may stop a write."""
    top = Path(tempfile.mkdtemp(prefix="vmboot-ro-share-"))
    top.chmod(0o755)
    root = top / "share"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n" * 10)
    for path in (root, root / "hello.txt"):
        os.chown(path, NOBODY, NOBODY)
    yield root
    shutil.rmtree(top)


def _as_nobody(share: Path, mode: str) -> dict[str, object]:
    setpriv = shutil.which("setpriv")
    require(setpriv, "setpriv", "apt-get install util-linux")
    assert setpriv is not None
    src = Path(vmboot.__file__).resolve().parent.parent
    tests = Path(__file__).resolve().parent
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(share.parent),
           "PYTHONPATH": f"{src}{os.pathsep}{tests}", "TMPDIR": str(share.parent)}
    proc = subprocess.run([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-c", PROBE, str(share), mode],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False,
                          cwd=share.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_read_only_share_as_an_unprivileged_user(share: Path) -> None:
    if os.geteuid() != 0:
        missing("root", "the test switches to uid 65534 with setpriv")
    virtiofsd_or_skip()
    problem = user_namespace_problem()
    if problem is not None:
        missing("unprivileged user namespaces", problem)
    result = _as_nobody(share, "ro")
    assert result == {"lookup_error": 0, "size": 60, "mkdir_error": -EROFS, "failure": None}
    assert sorted(p.name for p in share.iterdir()) == ["hello.txt"]

    writable = _as_nobody(share, "rw")  # the control: without ro the same MKDIR is taken
    assert writable["mkdir_error"] == 0 and (share / "made").is_dir()


@pytest.mark.parametrize(("read_only", "why"), [
    (True, "a read-only share (',ro') run without root needs a user namespace"),
    (False, "QEMU's C virtiofsd needs root for its sandbox"),
])
def test_no_user_namespaces_is_refused_before_anything_starts(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, read_only: bool, why: str) -> None:
    binary = tmp_path / "virtiofsd"
    binary.write_text('#!/bin/sh\n[ "$1" = --help ] && exit 0\ntouch "$0.ran"\n')
    binary.chmod(0o755)
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)
    monkeypatch.setattr(virtiofsd_module, "user_namespace_problem",
                        lambda: "this host does not allow it (unshare: Operation not permitted)")
    with pytest.raises(UsageError) as err:
        Virtiofsd.start(tmp_path, binary=binary, read_only=read_only)
    message = str(err.value)
    assert why in message and "Operation not permitted" in message, message
    assert "run vmboot as root" in message and "unprivileged_userns_clone" in message
    assert not Path(f"{binary}.ran").exists()
