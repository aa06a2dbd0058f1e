"""Private temporary directories that outlive a killed owner are removed by the next one
(:mod:`vmboot.devices.owned_dir`), and virtiofsd's directory is one of them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import missing
from vmboot.devices.owned_dir import LOCK_NAME, OwnedDir, remove_stale
from vmboot.devices.vhost_user.virtiofsd import (
    TMPDIR_PREFIX,
    Virtiofsd,
    VirtiofsdMissing,
    find_virtiofsd,
)

PREFIX = "vmboot-test-owned-"
WAIT = 60.0
"""Seconds a child process may take to start (never a timing assertion)."""

_OWNER = """
import sys
from vmboot.devices.owned_dir import OwnedDir
d = OwnedDir(sys.argv[1], parent=sys.argv[2])
open(d.path + "/left-behind", "w").write("x")
print(d.path, flush=True)
sys.stdin.read()
"""


def _owner(parent: Path, prefix: str = PREFIX) -> tuple[subprocess.Popen[str], Path]:
    """A process that makes an owned directory and waits (until stdin closes)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _OWNER, prefix, str(parent)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, "the owner process made no directory"
    return proc, Path(line)


def _killed_owner(parent: Path, prefix: str = PREFIX) -> Path:
    proc, path = _owner(parent, prefix)
    proc.send_signal(signal.SIGKILL)
    proc.wait(WAIT)
    return path


def test_the_lock_file_is_inside_and_close_removes_it(tmp_path: Path) -> None:
    d = OwnedDir(PREFIX, parent=str(tmp_path))
    path = Path(d.path)
    assert path.parent == tmp_path and path.name.startswith(PREFIX)
    assert (path / LOCK_NAME).is_file()
    d.close()
    assert not path.exists()
    d.close()  # idempotent


def test_a_directory_whose_owner_was_killed_is_removed_by_the_next(tmp_path: Path) -> None:
    stale = _killed_owner(tmp_path)
    assert (stale / "left-behind").exists()  # what SIGKILL leaves
    with OwnedDir(PREFIX, parent=str(tmp_path)) as d:
        assert not stale.exists()
        assert Path(d.path).exists()


def test_a_directory_whose_owner_runs_is_kept(tmp_path: Path) -> None:
    proc, live = _owner(tmp_path)
    try:
        with OwnedDir(PREFIX, parent=str(tmp_path)) as d:
            assert live.exists() and (live / "left-behind").exists()
            assert remove_stale(PREFIX, str(tmp_path)) == []
            assert Path(d.path).exists()  # ours is live too
    finally:
        proc.communicate(timeout=WAIT)  # stdin closed: the owner exits and removes nothing
    assert remove_stale(PREFIX, str(tmp_path)) == [live]  # now its owner is gone


def test_directories_not_made_here_are_left_alone(tmp_path: Path) -> None:
    foreign = tmp_path / f"{PREFIX}12345-abc"  # same prefix, no lock file
    foreign.mkdir()
    (tmp_path / f"{PREFIX}a-file").write_text("not a directory")
    other_prefix = _killed_owner(tmp_path, "vmboot-other-")
    assert remove_stale(PREFIX, str(tmp_path)) == []
    assert foreign.exists() and other_prefix.exists()


def test_virtiofsd_removes_what_a_killed_vmboot_left(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        find_virtiofsd()
    except VirtiofsdMissing as exc:
        missing("virtiofsd", str(exc))
    top = Path(tempfile.mkdtemp(prefix="vo-"))  # short: the socket path must fit sun_path
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(top))
        stale = _killed_owner(top, TMPDIR_PREFIX)
        share = tmp_path / "share"
        share.mkdir()
        daemon = Virtiofsd.start(share)
        try:
            assert not stale.exists()
            own = Path(daemon.socket_path).parent
            assert own.parent == top and own.name.startswith(TMPDIR_PREFIX)
            assert (own / LOCK_NAME).is_file()
        finally:
            daemon.stop()
        assert not own.exists()
    finally:
        shutil.rmtree(top, ignore_errors=True)
