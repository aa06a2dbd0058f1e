"""tests/conftest.py's require(): a missing prerequisite skips, and fails under CI."""

from __future__ import annotations

import pytest

import conftest


def test_missing_prerequisite_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="missing prerequisite GNU cpio: not on PATH"):
        conftest.require(False, "GNU cpio", "not on PATH")
    conftest.require(True, "GNU cpio")  # present: nothing happens


def test_missing_prerequisite_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match=r"missing prerequisite /dev/kvm: .*CI=true"):
        conftest.require(False, "/dev/kvm", "it does not exist")


def test_a_missing_tool_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "IN_CI", False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.skip.Exception, match=r"qemu-system-x86_64: not on PATH \(apt-get install"):
        conftest.require_tool("qemu-system-x86_64", "qemu-system-x86")


def test_requires_kvm_is_the_kvm_marker() -> None:
    """So that -m "not kvm" deselects every test that needs /dev/kvm."""
    assert conftest.requires_kvm.mark.name == "kvm"
