"""Digests of file versions: read once, kept on disk, a changed file is a new version."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmboot import file_digest
from vmboot.file_digest import file_sha256


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No digest remembered in this process; a file changed a second ago counts as old
    (a test cannot set a file's change time back; the racy case has its own test)."""
    file_digest.forget()
    monkeypatch.setattr(file_digest, "RACY_SECONDS", -5.0)
    yield
    file_digest.forget()


def old_file(path: Path, data: bytes) -> Path:
    """A file last modified a minute ago."""
    path.write_bytes(data)
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def test_the_digest_is_the_files(tmp_path: Path) -> None:
    f = old_file(tmp_path / "f", b"x" * 3_000_000)
    assert file_sha256(f) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_a_kept_digest_is_used_without_reading_the_file(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    memo = tmp_path / "memo"
    f = old_file(tmp_path / "f", b"contents")
    first = file_sha256(f, memo)
    assert len(list(memo.iterdir())) == 1
    file_digest.forget()  # as a new process
    monkeypatch.setattr(hashlib, "sha256", _no_hashing_of_files(hashlib.sha256))
    assert file_sha256(f, memo) == first


def _no_hashing_of_files(real: object) -> object:
    def sha256(data: bytes = b"") -> object:
        if not data:
            raise AssertionError("the file was read again")
        return real(data)  # type: ignore[operator]
    return sha256


def test_a_rewritten_file_is_a_new_version_even_with_size_and_mtime_kept(tmp_path: Path) -> None:
    memo = tmp_path / "memo"
    f = old_file(tmp_path / "f", b"one")
    before = os.stat(f)
    assert file_sha256(f, memo) == hashlib.sha256(b"one").hexdigest()
    f.write_bytes(b"two")
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    file_digest.forget()
    assert file_sha256(f, memo) == hashlib.sha256(b"two").hexdigest()


def test_a_just_changed_file_is_not_kept_on_disk(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_digest, "RACY_SECONDS", 2.0)
    memo = tmp_path / "memo"
    f = tmp_path / "f"
    f.write_bytes(b"fresh")
    assert file_sha256(f, memo) == hashlib.sha256(b"fresh").hexdigest()
    assert not memo.exists() or list(memo.iterdir()) == []


def test_a_damaged_memo_is_ignored(tmp_path: Path) -> None:
    memo = tmp_path / "memo"
    f = old_file(tmp_path / "f", b"data")
    file_sha256(f, memo)
    (entry,) = memo.iterdir()
    entry.write_text("not a digest")
    file_digest.forget()
    assert file_sha256(f, memo) == hashlib.sha256(b"data").hexdigest()


def test_a_link_and_its_target_are_one_version(tmp_path: Path) -> None:
    f = old_file(tmp_path / "f", b"data")
    (tmp_path / "link").symlink_to(f)
    assert file_digest.file_version(tmp_path / "link")[0] == file_digest.file_version(f)[0]


def test_a_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "none", tmp_path / "memo")
