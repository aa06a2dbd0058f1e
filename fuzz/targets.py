"""The registry of fuzz targets: name -> module ``fuzz.fuzz_<name>``."""

from __future__ import annotations

import importlib

from fuzz.harness import Target

TARGET_NAMES: tuple[str, ...] = (
    "bzimage",
    "boot_options",
    "guest_memory",
    "elf",
    "elf_symtab",
    "system_map",
    "kallsyms",
    "orc",
    "btf",
    "dwarf",
    "page_walk",
    "cpio",
    "decompress",
    "sizes",
    "port_io",
    "report",
    "core",
    "snapshot",
    "virtio_block",
    "virtio_console",
    "virtio_rng",
    "virtio_vsock",
    "virtio_net",
)


def module_name(name: str) -> str:
    return f"fuzz.fuzz_{name}"


def load_target(name: str) -> Target:
    if name not in TARGET_NAMES:
        raise KeyError(f"unknown fuzz target {name!r}; known: {', '.join(TARGET_NAMES)}")
    target: Target = importlib.import_module(module_name(name)).TARGET
    return target
