"""The vmboot cache: its entries, its size limit with least-recently-used eviction, its locks,
and `vmboot cache ls|clear`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmboot.cli.main import main
from vmboot.errors import UsageError
from vmboot.execute.cache import (
    CACHE_MAX_ENV,
    DEFAULT_CACHE_MAX,
    CacheEntry,
    EntryKind,
    HeldLock,
    cache_entries,
    cache_limit,
    clear_cache,
    enforce_limit,
    file_lock,
    in_use,
    snapshot_locks,
    touch,
)
from vmboot.units import GiB, MiB

BLOCK = 1 << 16
"""Test files are written in whole blocks, so that their size on disk is their length."""


def _write(path: Path, size: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(size // BLOCK):
            f.write(b"\x5a" * BLOCK)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache with, oldest first: a kernel (2 MiB), snapshot a (1 MiB), busybox (1 MiB),
    snapshot b (1 MiB)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("VMBOOT_CACHE", str(root))
    monkeypatch.delenv(CACHE_MAX_ENV, raising=False)
    _write(root / "debian-kernels" / "6.1.0-57" / "boot" / "vmlinuz", 2 * MiB, 1000)
    os.utime(root / "debian-kernels" / "6.1.0-57" / "boot", (1000, 1000))
    os.utime(root / "debian-kernels" / "6.1.0-57", (1000, 1000))
    _write(root / "snapshots" / "pytest-a.snap", MiB, 2000)
    _write(root / "busybox" / "busybox", MiB, 3000)
    os.utime(root / "busybox", (3000, 3000))
    _write(root / "snapshots" / "pytest-b.snap", MiB, 4000)
    return root


def _names(entries: list[CacheEntry]) -> list[str]:
    return [e.path.name for e in entries]


def test_entries_are_listed_least_recently_used_first_with_disk_sizes(cache: Path) -> None:
    entries = cache_entries()
    assert _names(entries) == ["6.1.0-57", "pytest-a.snap", "busybox", "pytest-b.snap"]
    assert [e.kind for e in entries] == [EntryKind.KERNEL, EntryKind.SNAPSHOT, EntryKind.BUSYBOX,
                                         EntryKind.SNAPSHOT]
    sizes = [e.size for e in entries]
    assert sizes[0] >= 2 * MiB and all(MiB <= s < 2 * MiB for s in sizes[1:])


def test_a_snapshots_locks_belong_to_it(cache: Path) -> None:
    use, make = snapshot_locks(cache / "snapshots" / "pytest-a.snap")
    use.write_bytes(b"")
    make.write_bytes(b"")
    (cache / "snapshots" / "pytest-gone.lock").write_bytes(b"")
    entries = cache_entries()
    assert _names(entries).count("pytest-a.snap") == 1
    assert "pytest-a.lock" not in _names(entries) and "pytest-a.make.lock" not in _names(entries)
    assert "pytest-gone.lock" in _names(entries)  # a lock without its snapshot is listed
    clear_cache(kinds=frozenset({EntryKind.SNAPSHOT}))
    assert not use.exists() and not make.exists()


def test_eviction_removes_the_least_recently_used_until_the_cache_fits(cache: Path) -> None:
    removed = enforce_limit(3 * MiB + MiB // 2)
    assert _names(removed) == ["6.1.0-57"]
    assert _names(cache_entries()) == ["pytest-a.snap", "busybox", "pytest-b.snap"]
    removed = enforce_limit(2 * MiB + MiB // 2)
    assert _names(removed) == ["pytest-a.snap"]
    assert not (cache / "snapshots" / "pytest-a.snap").exists()


def test_a_used_entry_moves_to_the_back(cache: Path) -> None:
    touch(cache / "snapshots" / "pytest-a.snap")
    removed = enforce_limit(2 * MiB + MiB // 2)
    assert _names(removed) == ["6.1.0-57", "busybox"]


def test_eviction_spares_kept_entries_and_those_in_use(cache: Path) -> None:
    a = cache / "snapshots" / "pytest-a.snap"
    held = HeldLock(snapshot_locks(a)[0])
    try:
        removed = enforce_limit(MiB + MiB // 2, keep=frozenset({cache / "busybox"}))
    finally:
        held.release()
    assert _names(removed) == ["6.1.0-57", "pytest-b.snap"]
    assert a.exists() and (cache / "busybox").exists()


def test_a_snapshot_being_made_is_in_use(cache: Path) -> None:
    entry = next(e for e in cache_entries() if e.path.name == "pytest-b.snap")
    assert not in_use(entry)
    with file_lock(snapshot_locks(entry.path)[1], exclusive=True):
        assert in_use(entry)
    assert not in_use(entry)


def test_another_process_holding_the_lock_blocks_eviction(cache: Path) -> None:
    a = cache / "snapshots" / "pytest-a.snap"
    use = snapshot_locks(a)[0]
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys
            fd = os.open({str(use)!r}, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_SH)
            print("held", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        removed = enforce_limit(0)
    finally:
        holder.communicate("")
    assert a.exists() and "pytest-a.snap" not in _names(removed)
    assert cache_entries() == [e for e in cache_entries() if e.path == a]


def test_the_limit_comes_from_the_environment() -> None:
    assert cache_limit({}) == 4 * GiB and DEFAULT_CACHE_MAX == "4G"
    assert cache_limit({CACHE_MAX_ENV: "512M"}) == 512 * MiB
    assert cache_limit({CACHE_MAX_ENV: "unlimited"}) is None
    with pytest.raises(UsageError, match=r"\$VMBOOT_CACHE_MAX: 'lots' is not a size.*unlimited"):
        cache_limit({CACHE_MAX_ENV: "lots"})


def test_an_unlimited_cache_keeps_everything(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_MAX_ENV, "unlimited")
    assert enforce_limit() == []
    monkeypatch.setenv(CACHE_MAX_ENV, "1M")
    assert len(enforce_limit()) == 3


def test_an_empty_or_missing_cache_lists_nothing(tmp_path: Path) -> None:
    assert cache_entries(tmp_path / "nothing") == []
    assert enforce_limit(0, tmp_path / "nothing") == []


def test_cli_ls_json_and_clear(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "ls", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["cache"] == str(cache) and listing["limit"] == 4 * GiB
    assert [Path(e["path"]).name for e in listing["entries"]] == [
        "6.1.0-57", "pytest-a.snap", "busybox", "pytest-b.snap"]
    assert listing["total"] == sum(e["size"] for e in listing["entries"])
    assert main(["cache", "ls"]) == 0
    text = capsys.readouterr().out
    assert "snapshot" in text and "pytest-b.snap" in text and "4 entries" in text
    assert main(["cache", "clear", "--kind", "snapshot"]) == 0
    assert capsys.readouterr().out.startswith("removed 2 entries")
    assert _names(cache_entries()) == ["6.1.0-57", "busybox"]
    assert main(["cache", "clear", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["removed"]) == 2
    assert cache_entries() == []


def test_cli_help_states_the_default_limit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["cache", "--help"])
    out = capsys.readouterr().out
    assert f"default {DEFAULT_CACHE_MAX}" in out and "VMBOOT_CACHE_MAX" in out


# -- every store keeps the cache within its limit ---------------------------------------------


def test_a_stored_entry_is_kept_and_marked_used_and_the_rest_evicted(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmboot.execute.cache import keep_within_limit

    a = cache / "snapshots" / "pytest-a.snap"  # old, but just stored
    held = HeldLock(snapshot_locks(cache / "snapshots" / "pytest-b.snap")[0])
    try:
        removed = keep_within_limit(a)
    finally:
        held.release()
    # 5 MiB in all, 4 GiB allowed: nothing goes; a is now the most recently used
    assert removed == [] and _names(cache_entries())[-1] == "pytest-a.snap"
    monkeypatch.setenv(CACHE_MAX_ENV, "1M")
    held = HeldLock(snapshot_locks(cache / "snapshots" / "pytest-b.snap")[0])
    try:
        removed = keep_within_limit(a)
    finally:
        held.release()
    assert _names(removed) == ["6.1.0-57", "busybox"]  # b is in use, a was stored
    assert sorted(_names(cache_entries())) == ["pytest-a.snap", "pytest-b.snap"]


class _FakeMachine:
    """Stands in for a booted warm guest: its snapshot is a small file."""

    saved: list[Path] = []

    @classmethod
    def from_config(cls, config: object, **kwargs: object) -> _FakeMachine:
        return cls()

    def __enter__(self) -> _FakeMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def exec(self, *args: object, **kwargs: object) -> None:
        pass

    def snapshot(self, path: Path) -> None:
        _write(path, MiB, 5000)
        self.saved.append(path)


def _warm_config(tmp_path: Path, busybox: Path) -> object:
    from vmboot.execute.warm import warm_config, warm_image

    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"a kernel")
    return warm_config(kernel, warm_image(busybox), memory="64M", cpuid_policy="auto",
                       entry="bzimage64", cpus=1)


def test_warm_exec_stores_its_snapshot_within_the_limit(
        cache: Path, busybox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmboot.execute.warm import warm_snapshot

    monkeypatch.setattr("vmboot.vmm.machine.Machine", _FakeMachine)
    monkeypatch.setenv(CACHE_MAX_ENV, "2M")
    held = HeldLock(snapshot_locks(cache / "snapshots" / "pytest-a.snap")[0])
    try:
        path = warm_snapshot(_warm_config(tmp_path, busybox), None)  # type: ignore[arg-type]
    finally:
        held.release()
    assert path.name.startswith("exec-") and path.exists()
    # 6 MiB, 2 allowed: the kernel, busybox and b go; a is in use, the new one was stored
    assert sorted(_names(cache_entries())) == [path.name, "pytest-a.snap"]


def test_a_wrong_limit_is_refused_before_the_warm_boot(
        cache: Path, busybox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmboot.execute.warm import warm_snapshot

    _FakeMachine.saved = []
    monkeypatch.setattr("vmboot.vmm.machine.Machine", _FakeMachine)
    monkeypatch.setenv(CACHE_MAX_ENV, "lots")
    with pytest.raises(UsageError, match=r"\$VMBOOT_CACHE_MAX"):
        warm_snapshot(_warm_config(tmp_path, busybox), None)  # type: ignore[arg-type]
    assert _FakeMachine.saved == []


def test_fetch_stores_its_download_within_the_limit(
        cache: Path, busybox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from vmboot.execute import fetch

    def download(package: str, into: Path) -> Path:
        deb = into / f"{package}_1_amd64.deb"
        deb.write_bytes(b"!<arch>\n")
        return deb

    def unpack(cmd: list[str], *, cwd: Path | None = None, what: str) -> str:
        root = Path(cmd[-1])  # dpkg-deb -x DEB ROOT
        (root / "bin").mkdir(parents=True)
        shutil.copyfile(busybox, root / "bin" / "busybox")
        return ""

    monkeypatch.setattr(fetch, "apt_download", download)
    monkeypatch.setattr(fetch, "_run", unpack)
    monkeypatch.setenv(CACHE_MAX_ENV, "3M")
    held = HeldLock(snapshot_locks(cache / "snapshots" / "pytest-a.snap")[0])
    try:
        path = fetch.fetch_busybox(force=True)
    finally:
        held.release()
    assert path == cache / "busybox" / "busybox" and path.stat().st_size == busybox.stat().st_size
    # the new busybox (~2 MiB) stays, a is in use; the kernel and b go
    assert sorted(_names(cache_entries())) == ["busybox", "pytest-a.snap"]
    monkeypatch.setenv(CACHE_MAX_ENV, "-1")
    monkeypatch.setattr(fetch, "apt_download", lambda package, into: pytest.fail("downloaded"))
    with pytest.raises(UsageError, match=r"\$VMBOOT_CACHE_MAX"):
        fetch.fetch_busybox(force=True)
