"""The bounded CI run of every fuzz target (fuzz/), and tests of the harness itself.

Each target runs a fixed number of inputs from a fixed seed (deterministic: the same
inputs every time) in a child process under RLIMIT_AS, through ``fuzz/run.py``. The test
fails on any exception other than VmbootError that is not a known, reported bug
(fuzz/known_bugs.py, each with a strict-xfail test in test_fuzz_regressions.py). All
targets together stay well under a minute on a 2-core machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fuzz_support  # noqa: F401  (puts the repository root on sys.path for ``fuzz``)
from conftest import missing

# isort: split
from fuzz.harness import Target, classify, known_bug, run_builtin
from fuzz.known_bugs import KNOWN_BUGS
from fuzz.targets import TARGET_NAMES, load_target

from vmboot.errors import KernelFormatError, VmbootError

REPO = Path(__file__).resolve().parent.parent
CI_RUNS: dict[str, int] = {
    "bzimage": 1500,
    "boot_options": 1500,
    "guest_memory": 3000,
    "elf": 3000,
    "elf_symtab": 3000,
    "system_map": 2000,
    "kallsyms": 1500,
    "orc": 2000,
    "btf": 2000,
    "dwarf": 1500,
    "page_walk": 4000,
    "cpio": 1500,
    "decompress": 1500,
    "sizes": 600,
    "port_io": 1500,
    "report": 1500,
    "core": 1500,
    "snapshot": 1500,
    "virtio_block": 1500,
    "virtio_console": 1500,
    "virtio_rng": 1500,
    "virtio_vsock": 1500,
    "virtio_net": 1500,
}
"""Inputs per target in CI (about 1-2 s each here, plus the child's start-up)."""


def test_every_target_has_a_ci_budget() -> None:
    assert set(CI_RUNS) == set(TARGET_NAMES)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_fuzz_target_ci_run(name: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    runs = CI_RUNS[name]
    proc = subprocess.run(
        [sys.executable, str(REPO / "fuzz" / "run.py"), "--targets", name, "--runs", str(runs),
         "--seed", "0", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    summary = json.loads(out.read_text())
    (result,) = summary["targets"]
    assert result["executions"] == runs, proc.stdout + proc.stderr
    new = [f for f in result["findings"] if not f["known"]]
    assert not new, "non-VmbootError escaped:\n" + "\n\n".join(
        f"{f['signature']}: {f['message']}\ninput: {f['input_hex'][:512]}\n{f['traceback']}" for f in new)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_seeds_reach_past_the_parser(name: str) -> None:
    """The seeds are valid inputs: the target runs each to the end without any error, so
    mutants start deep inside the format rather than at its magic number."""
    target = load_target(name)
    seeds = target.seeds()
    assert seeds, f"{name} has no seeds"
    refused = []
    for data in seeds:
        try:
            target.one_input(data)
        except VmbootError as exc:
            refused.append(f"{data[:16].hex()}...: {exc}")
        except Exception as exc:  # only a known, reported bug may show up here
            finding = classify(name, data, exc)
            assert known_bug(finding), finding.traceback
    # A few seeds deliberately hit refusal paths (a placeholder System.map; guest-memory
    # operations at invalid edges are caught inside the target): allow some, not most.
    assert len(refused) <= len(seeds) // 3, refused


def test_real_kernel_seeds_are_cut_down_real_images() -> None:
    from fuzz.seeds import bzimage_seeds, shared

    from vmboot.linux import BzImage, load_kernel

    real = shared("tiny-bzImage")
    if real is None:
        missing("shared test kernel tiny-bzImage", "../shared/kernels/tiny-bzImage is missing")
    seeds = bzimage_seeds()
    kernel = load_kernel(seeds[0])
    assert isinstance(kernel, BzImage)
    assert len(seeds[0]) < 64 << 10 < len(real)
    assert kernel.kernel_version == load_kernel(real).kernel_version
    reference = load_kernel(real)
    assert isinstance(reference, BzImage)
    assert kernel.compression == reference.compression


# -- the harness itself ---------------------------------------------------------------------------
def _planted(data: bytes) -> None:
    if data[:1] == b"\x00":
        raise KernelFormatError("refused: a VmbootError is the allowed outcome")
    if len(data) > 3 and data[3] == 0xFF:
        raise IndexError("planted bug")


def test_harness_reports_non_vmboot_errors_and_keeps_going() -> None:
    target = Target("planted", _planted, lambda: [b"\x00abc", b"abcd"], lambda: [0, 3])
    result = run_builtin(target, runs=3000, seed=1)
    assert result.executions == 3000
    assert [f.exc_type for f in result.findings] == ["IndexError"]
    (finding,) = result.findings
    assert bytes.fromhex(finding.input_hex)[3] == 0xFF
    assert finding.location.endswith(f"test_fuzz_ci.py:{_planted.__code__.co_firstlineno + 4}")


def _spin(data: bytes) -> None:
    if data == b"hang":
        while True:
            pass


def test_harness_turns_a_hang_into_a_finding() -> None:
    target = Target("spin", _spin, lambda: [b"ok", b"hang"])
    result = run_builtin(target, runs=2, input_timeout=0.2)
    assert [f.exc_type for f in result.findings] == ["fuzz.harness.Hang"]


def test_same_seed_same_inputs() -> None:
    from itertools import islice

    from fuzz.harness import inputs

    target = load_target("bzimage")
    assert list(islice(inputs(target, 7), 200)) == list(islice(inputs(target, 7), 200))
    assert list(islice(inputs(target, 7), 200)) != list(islice(inputs(target, 8), 200))


def test_known_bugs_name_existing_regression_tests() -> None:
    text = (REPO / "tests" / "test_fuzz_regressions.py").read_text()
    for bug in KNOWN_BUGS:
        path, _, func = bug.test.partition("::")
        assert path == "tests/test_fuzz_regressions.py"
        assert f"def {func}(" in text, bug
