"""vmboot: boot Linux x86_64 kernels straight into 64-bit mode under KVM, from Python."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
