"""Build a guest test tool (C, no libc) at test time with the agent's build recipe
(:func:`vmboot.agent.build.compile_static`: static x86_64 against the kernel's nolibc from
``$VMBOOT_NOLIBC`` or Debian's linux-source-6.1). Without a compiler or nolibc the test that
needs the tool skips, naming why (under CI it fails)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmboot.agent.build import compile_static
from vmboot.errors import FetchError

GUEST_SOURCES = Path(__file__).parent / "guest"


def build_tool(source_name: str, out_dir: Path) -> Path:
    """Compile ``tests/guest/<source_name>`` into ``out_dir``; the binary's path."""
    try:
        return compile_static(GUEST_SOURCES / source_name, out_dir / Path(source_name).stem,
                              extra_flags=("-Werror",))
    except FetchError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
