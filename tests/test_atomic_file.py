"""A file written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmboot.atomic_file import write_atomically


def test_the_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    write_atomically(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["f"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    (tmp_path / f".f.{os.getpid()}.tmp").mkdir()  # the temporary name cannot be written
    with pytest.raises(IsADirectoryError):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
