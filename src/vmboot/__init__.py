"""vmboot: boot Linux x86_64 kernels straight into 64-bit mode under KVM, from Python."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, tuple[str, str]] = {
    "__version__": ("vmboot.version", "__version__"),
    "ExecResult": ("vmboot.execute", "ExecResult"),
    "exec_command": ("vmboot.execute", "exec_command"),
    "exec": ("vmboot.execute", "exec_command"),
    "Machine": ("vmboot.vmm.machine", "Machine"),
    "RunResult": ("vmboot.vmm.machine", "RunResult"),
}
"""Public names imported on first use (name -> (module, attribute)), so that ``import vmboot``
stays cheap. ``vmboot.exec(...)`` is ``vmboot.execute.exec_command(...)``."""

__all__ = ["ExecResult", "Machine", "RunResult", "__version__", "exec", "exec_command"]

if TYPE_CHECKING:
    from vmboot.execute import ExecResult, exec_command
    from vmboot.execute import exec_command as exec
    from vmboot.version import __version__
    from vmboot.vmm.machine import Machine, RunResult


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'vmboot' has no attribute {name!r}")
    module, attribute = target
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
