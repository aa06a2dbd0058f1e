"""Which channel a ``vmboot exec`` command runs over, decided from the kernel before the boot.

``agent`` channels (:data:`vmboot.config.AGENT_TRANSPORTS`) run the command through the guest
agent (:mod:`vmboot.agent`) as the initramfs's init: ``console``, a named virtio-console port
(``/dev/vportNpM``), or ``vsock``. ``serial`` is the shell-script init of
:mod:`vmboot.execute.image`, which carries stdout, stderr and the status over 16550A UARTs
(one VM exit per byte): it needs nothing from the kernel but the 8250 driver.

``auto`` (the default) reads the kernel image's own symbols (its kallsyms, as
``vmboot symbolize`` does) and takes ``console`` when the kernel has the drivers that channel
needs (:data:`REQUIRED_SYMBOLS`), else ``serial``; a kernel whose symbols cannot be read
(no kallsyms) gets ``serial`` too. ``--warm`` restores a guest whose agent talks over
virtio-console, so it takes ``console`` (refused, naming the symbol, on a kernel without it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from vmboot.config import AGENT_TRANSPORTS, AgentTransport
from vmboot.errors import UsageError, VmbootError

ExecChannel = AgentTransport | Literal["serial"]
SERIAL: ExecChannel = "serial"
EXEC_CHANNELS: tuple[ExecChannel, ...] = (*AGENT_TRANSPORTS, SERIAL)
"""The channels a command can run over."""
ChannelChoice = ExecChannel | Literal["auto"]
AUTO: ChannelChoice = "auto"
CHANNEL_CHOICES: tuple[ChannelChoice, ...] = (AUTO, *EXEC_CHANNELS)
"""What ``channel=`` (``vmboot exec --channel``) accepts."""
AUTO_AGENT: AgentTransport = "console"
"""The agent channel ``auto`` prefers when the kernel has its drivers."""

VIRTIO_MMIO_CMDLINE = "vm_cmdline_set"
"""virtio-mmio devices announced on the command line (VIRTIO_MMIO_CMDLINE_DEVICES)."""
REQUIRED_SYMBOLS: dict[ExecChannel, tuple[str, ...]] = {
    "console": (VIRTIO_MMIO_CMDLINE, "virtcons_probe"),   # VIRTIO_CONSOLE
    "vsock": (VIRTIO_MMIO_CMDLINE, "virtio_vsock_probe"),  # VIRTIO_VSOCKETS
    "serial": (),
}
"""Kernel functions each channel needs, as the kernel names them."""

SymbolNames = Callable[[Path], Collection[str]]
DRIVERS_SUBDIR = "kernel-drivers"
"""Where the cache keeps which drivers each kernel file has (:func:`kernel_function_names`)."""


@dataclass(frozen=True)
class ChannelDecision:
    """The channel a run uses, and why (for ``-v`` and ``--json``)."""

    channel: ExecChannel
    reason: str

    @property
    def agent(self) -> AgentTransport | None:
        """The agent's transport, or None for the serial channel."""
        return None if self.channel == SERIAL else cast("AgentTransport", self.channel)


def kernel_function_names(kernel: Path) -> Collection[str]:
    """Which of the :data:`REQUIRED_SYMBOLS` the kernel image's kallsyms hold.

    Decoding kallsyms takes a few hundred milliseconds, more than a whole exec on a fast
    host, so the answer is kept in the vmboot cache (``<cache>/kernel-drivers/``), keyed by
    the file's version (:func:`vmboot.file_digest.file_version`) and by the names asked
    about.
    """
    import hashlib
    import json

    from vmboot.atomic_file import write_atomically
    from vmboot.execute.cache import cache_subdir
    from vmboot.file_digest import file_version

    wanted = sorted({name for names in REQUIRED_SYMBOLS.values() for name in names})
    key = json.dumps([*file_version(kernel)[0], wanted])
    entry = cache_subdir(DRIVERS_SUBDIR) / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
    try:
        return frozenset(json.loads(entry.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    from vmboot.debug.symbol_sources import load_kernel_symbols  # numpy: only on a miss

    names = frozenset(load_kernel_symbols(kernel).names())
    found = [name for name in wanted if name in names]
    try:  # best effort: an unwritable cache only costs the next run the same decoding
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(entry, json.dumps(found).encode())
    except OSError:
        pass
    return frozenset(found)


def check_channel_choice(choice: str) -> ChannelChoice:
    if choice not in CHANNEL_CHOICES:
        raise UsageError(f"channel: {choice!r} is not one of {', '.join(CHANNEL_CHOICES)}")
    return choice


def choose_channel(choice: ChannelChoice, kernel: Path, *, warm: bool = False,
                   symbol_names: SymbolNames = kernel_function_names) -> ChannelDecision:
    """The channel for ``choice`` on ``kernel`` (validated; nothing is booted).

    A channel named explicitly is refused when the kernel's symbols show it lacks a driver
    the channel needs (the message names the symbol); when they cannot be read, it is
    taken as asked.
    """
    check_channel_choice(choice)
    if warm:
        if choice not in (AUTO, AUTO_AGENT):
            raise UsageError(f"channel: {choice!r} with warm: a warm exec restores a guest whose "
                             f"agent talks over virtio-console; use channel {AUTO_AGENT!r} or "
                             f"'auto' with warm, or drop warm")
        choice = AUTO_AGENT  # checked against the kernel's symbols below, like any choice
    try:
        names = symbol_names(kernel)
    except (OSError, VmbootError) as e:
        if choice == AUTO:
            return ChannelDecision(SERIAL, f"the kernel's symbols cannot be read ({e}), so "
                                           "the UARTs, which every kernel with 8250 has")
        return ChannelDecision(cast("ExecChannel", choice),
                               f"asked for; the kernel's symbols cannot be read ({e})")
    chosen: ExecChannel = AUTO_AGENT if choice == AUTO else cast("ExecChannel", choice)
    missing = [s for s in REQUIRED_SYMBOLS[chosen] if s not in names]
    if choice == AUTO:
        if missing:
            return ChannelDecision(SERIAL, f"the kernel lacks {', '.join(missing)} "
                                           f"(no {AUTO_AGENT} channel), so the UARTs")
        return ChannelDecision(chosen, f"the kernel has {', '.join(REQUIRED_SYMBOLS[chosen])}")
    if missing:
        raise UsageError(f"channel: {choice!r} needs kernel functions {', '.join(missing)}, which "
                         f"{kernel} lacks (its driver is not built in); use channel 'auto' or "
                         "'serial', or a kernel with that driver")
    return ChannelDecision(chosen, "asked for")
