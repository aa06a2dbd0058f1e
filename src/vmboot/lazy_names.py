"""Names a package re-exports, loaded from their modules on first use (PEP 562).

A package whose ``__init__`` imported every module it re-exports would load them all for
any one of them (``import vmboot.linux`` loaded every kernel loader and decompressor). Such
a package says where each name lives and gets its module ``__getattr__`` from here::

    _HOMES = {"load_kernel": "loader.detect", ...}
    __getattr__ = names_from(__name__, _HOMES)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def names_from(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``name`` is imported from
    ``package.<homes[name]>`` on first use and kept in the package (later uses are plain
    attribute reads); any other name is an AttributeError, as for any module."""
    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
