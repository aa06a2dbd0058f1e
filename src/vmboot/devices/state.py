"""The plain-data state protocol of devices: ``state() -> dict`` and ``restore(state)``.

A device that can be saved in a snapshot returns its registers and queues as a JSON-ready
``dict`` (ints, bools, lists of ints, None) and takes the same back. What is attached to it
(interrupt line, console output, clock, stop hook) is not state: the machine wires it as
for a boot, and :meth:`restore` only sets registers. :func:`field_int` and friends check a
saved value before anything is set, so a bad state changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from vmboot.errors import DeviceStateError

DeviceState = dict[str, object]
"""A device's state: field name -> JSON-ready value."""


@runtime_checkable
class SavesState(Protocol):
    """A device whose state a snapshot saves and restores."""

    def state(self) -> DeviceState: ...

    def restore(self, state: Mapping[str, object]) -> None: ...


def field_int(device: str, state: Mapping[str, object], name: str, limit: int) -> int:
    """``state[name]`` as an int in ``0..limit``, else :class:`DeviceStateError` naming it."""
    value = state.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise DeviceStateError(
            f"{device} state: {name} = {value!r} is not an integer in 0..{limit:#x}; the "
            "snapshot was written for another device model or is damaged"
        )
    return value


def field_optional_int(device: str, state: Mapping[str, object], name: str, limit: int) -> int | None:
    if state.get(name) is None:
        return None
    return field_int(device, state, name, limit)


def field_bool(device: str, state: Mapping[str, object], name: str) -> bool:
    value = state.get(name)
    if not isinstance(value, bool):
        raise DeviceStateError(f"{device} state: {name} = {value!r} is not true or false")
    return value


def field_bytes(device: str, state: Mapping[str, object], name: str, max_length: int) -> bytes:
    """A list of byte values (at most ``max_length``) as bytes."""
    value = state.get(name)
    if isinstance(value, list) and len(value) <= max_length:
        try:
            return bytes(value)  # checks each is an int in 0..255
        except (TypeError, ValueError):
            pass
    raise DeviceStateError(
        f"{device} state: {name} is not a list of at most {max_length} byte values (0..255)"
    )
