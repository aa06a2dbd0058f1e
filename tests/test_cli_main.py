"""The ``vmboot`` command as a whole: examples in --help, a closed pipe, errors, --version."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from vmboot import __version__
from vmboot.cli.main import EPILOG, EXIT_BROKEN_PIPE, VERB_MODULES, build_parser, main
from vmboot.execute.default_guest import GUEST_IMAGE_DIR

GUEST_KERNEL = GUEST_IMAGE_DIR / "bzImage"
VERBS = [name.rsplit(".", 1)[1] for name in VERB_MODULES]


def vmboot(*argv: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "vmboot", *argv], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=120)


@pytest.mark.parametrize("verb", VERBS)
def test_top_level_help_has_an_example_of_every_verb(verb: str) -> None:
    examples = EPILOG.split("examples:", 1)[1]
    assert any(line.split("|")[-1].split()[:2] == ["vmboot", verb] for line in examples.splitlines()), verb


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_help_has_an_example(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([verb, "--help"])
    text = capsys.readouterr().out
    examples = text.split("examples:", 1)
    assert len(examples) == 2, f"vmboot {verb} --help has no examples section"
    assert f"vmboot {verb}" in examples[1]


def test_a_named_verb_builds_its_parser_alone_and_anything_else_all() -> None:
    from vmboot.cli.main import verb_modules

    assert verb_modules(["-v", "exec", "--warm", "--", "run"]) == ("vmboot.cli.exec",)
    for argv in (None, [], ["--help"], ["nosuch", "x"], ["-v"]):
        assert verb_modules(argv) == VERB_MODULES, argv
    code = ("import sys\nfrom vmboot.cli.main import build_parser\n"
            "build_parser(['exec', '--', 'true'])\n"
            "print(sorted(m for m in sys.modules if m.startswith('vmboot.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    loaded = set(ast.literal_eval(out.stdout))
    assert "vmboot.cli.exec" in loaded and not loaded & {"vmboot.cli.inspect", "vmboot.cli.trace",
                                                          "vmboot.cli.demo"}, loaded


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before vmboot writes a byte
    try:
        done = vmboot("inspect", str(GUEST_KERNEL), stdout=write_end)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == EXIT_BROKEN_PIPE


def test_output_piped_into_head_ends_quietly() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    # one output line per input address: 100k lines overflow the pipe before head exits
    script = (f"yes ffffffff81000000 | head -n 100000 | {sys.executable} -m vmboot symbolize "
              f"--kernel {GUEST_KERNEL} | head -n 1; echo \"status=${{PIPESTATUS[2]}}\"")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.splitlines() == ["ffffffff81000000 startup_64+0x0/0x60", f"status={EXIT_BROKEN_PIPE}"]
    assert done.stderr == ""


@pytest.mark.parametrize("argv", [["inspect"], ["run"], ["exec", "--kernel"]])
def test_an_error_names_the_path_once(argv: list[str], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "no-such-kernel")
    command = [*argv, missing] + (["--", "true"] if argv[0] == "exec" else [])
    assert main(command) == 1
    err = capsys.readouterr().err
    assert err.count(missing) == 1, err


def test_a_bad_busybox_is_named_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "busybox"
    text.write_text("#!/bin/sh\n")
    assert main(["exec", "--busybox", str(text), "--", "true"]) == 1
    err = capsys.readouterr().err
    assert err.count(str(text)) == 1 and "bad ELF magic" in err, err


def test_version_is_the_package_version() -> None:
    done = vmboot("--version")
    assert done.stdout.strip() == f"vmboot {__version__}"


def test_symbols_without_lz4_name_the_kernel_once(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import builtins

    from conftest import shared_kernel_file
    from vmboot.debug import clear_symbol_cache

    kernel = str(shared_kernel_file("tiny-bzImage-lz4"))
    real_import = builtins.__import__

    def no_lz4(name: str, *args: object, **kwargs: object) -> object:
        if name == "lz4" or name.startswith("lz4."):
            raise ImportError("no lz4")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    clear_symbol_cache()
    monkeypatch.setattr(builtins, "__import__", no_lz4)
    assert main(["symbolize", "--kernel", kernel, "ffffffff81000000"]) == 1
    clear_symbol_cache()
    err = capsys.readouterr().err
    assert err.count(kernel) == 1 and "needs the Python module 'lz4'" in err, err
