"""``vmboot demo``: the README's first command. Runs the bundled bzImage probe under KVM and
prints every check; without KVM it fails with what is missing and how to fix it."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, requires_kvm
from vmboot.cli.demo import SAMPLE_CMDLINE, sample_initrd
from vmboot.cli.main import main
from vmboot.initramfs import read_cpio
from vmboot.probes import PROBE_FILES, probe_path
from vmboot.probes.build import IMAGES


def test_demo_without_kvm_says_what_is_missing(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    code = main(["demo", "--kvm-device", str(tmp_path / "no-kvm")])
    out, err = capsys.readouterr()
    assert code != 0
    assert "needs KVM" in err and "does not exist" in err and "modprobe" in err
    assert out == ""


def test_demo_without_kvm_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["demo", "--json", "--kvm-device", str(tmp_path / "no-kvm")])
    out, _ = capsys.readouterr()
    assert code != 0
    data = json.loads(out)
    assert data["ok"] is False and "does not exist" in data["error"]


@requires_kvm
@pytest.mark.kvm
def test_demo_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["ok"] is True and data["exit"]["reason"] == "poweroff"
    assert data["checks"] and all(c["ok"] for c in data["checks"])
    checks = {c["name"]: c for c in data["checks"]}
    # the expected side is the demo's own sample input, the observed side what the guest saw
    assert checks["cmdline length"]["expected"] == str(len(SAMPLE_CMDLINE.encode()))
    assert checks["initrd size (ramdisk_size)"]["observed"] == str(len(sample_initrd()))
    assert data["cmdline"] == SAMPLE_CMDLINE and data["initrd_size"] == len(sample_initrd())
    assert set(data["timings"]) == {"setup", "run", "verify"}


@requires_kvm
@pytest.mark.kvm
def test_demo_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("check "))
    rows = [line for line in lines[header + 2 :] if line and not line.startswith("    ")]
    table = rows[: rows.index(next(r for r in rows if "checks passed" in r))]
    assert table and all(r.rstrip().endswith("ok") for r in table)
    assert f"{len(table)} of {len(table)} checks passed" in out
    assert "timings:" in out


def test_sample_initrd_is_a_cpio_archive() -> None:
    names = {e.path for e in read_cpio(sample_initrd())}
    assert {"init", "etc/motd"} <= names


def test_prebuilt_probes_are_package_data() -> None:
    """`pip install .` ships the images `vmboot demo` boots (and the sources to rebuild them)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["vmboot"]
    shipped = [*PROBE_FILES.values(), *{s for i in IMAGES.values() for s in i.sources},
               *{i.linker_script for i in IMAGES.values()}]
    for name in shipped:
        assert any(fnmatch.fnmatch(f"probes/{name}", p) for p in patterns), name
        assert (probe_path("bzimage").parent / name).is_file(), name
