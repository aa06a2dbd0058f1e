"""vmboot: boot Linux x86_64 kernels straight into 64-bit mode under KVM, from Python."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "ExecResult": "vmboot.exec",
    "exec_command": "vmboot.exec",
    "Machine": "vmboot.vmm.machine",
    "RunResult": "vmboot.vmm.machine",
}
"""Public names imported on first use, so that ``import vmboot`` stays cheap."""

__all__ = ["ExecResult", "Machine", "RunResult", "__version__", "exec_command"]

if TYPE_CHECKING:
    from vmboot.exec import ExecResult, exec_command
    from vmboot.vmm.machine import Machine, RunResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vmboot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
