"""The i8042 keyboard controller, as far as a kernel uses it to reset the machine.

Ports: 0x60 (data) and 0x64 (status on read, command on write). Linux's ``reboot=k``
polls the status register until the input buffer is empty (bit 1 = 0), then writes
command 0xFE, "pulse the CPU reset line". Here the input buffer is always empty, so the
poll ends at its first read, and a reset pulse calls the reset hook the VMM connected
(which ends the run with ``ExitReason.RESET``).

The few controller commands a kernel or firmware may issue get their documented answer
(read/write the configuration byte and the output port, self-tests); there is no
keyboard or mouse behind the controller.
"""

from __future__ import annotations

from collections.abc import Mapping

from vmboot.devices.state import DeviceState, field_bool, field_int, field_optional_int
from vmboot.devices.wiring import ResetHook

DATA_PORT = 0x60
COMMAND_PORT = 0x64

# Status register bits.
STATUS_OUTPUT_FULL = 0x01
STATUS_INPUT_FULL = 0x02
"""Never set: the controller takes every byte at once."""
STATUS_SYSTEM = 0x04
"""The system flag: set once the machine passed its power-on self-test."""
STATUS_LAST_WAS_COMMAND = 0x08

# Controller commands (written to 0x64).
CMD_READ_CONFIG = 0x20
CMD_WRITE_CONFIG = 0x60
CMD_SELF_TEST = 0xAA
CMD_KBD_INTERFACE_TEST = 0xAB
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_PULSE_FIRST = 0xF0
"""0xF0..0xFF pulse the output lines whose bit is 0 in the low nibble; bit 0 is CPU reset."""
CMD_RESET_CPU = 0xFE

SELF_TEST_PASSED = 0x55
INTERFACE_TEST_PASSED = 0x00
KEYBOARD_ACK = 0xFA
OUTPUT_PORT_RESET_LINE = 0x01
"""Output port bit 0: the CPU reset line (active low)."""
OUTPUT_PORT_DEFAULT = 0x03
"""Reset line high (not resetting), A20 gate enabled."""
CONFIG_DEFAULT = 0x00


class I8042:
    """The controller. Attach :attr:`data` at 0x60 and :attr:`command` at 0x64 (1 port each)."""

    def __init__(self, on_reset: ResetHook | None = None) -> None:
        self._on_reset = on_reset
        self.config = CONFIG_DEFAULT
        self.output_port = OUTPUT_PORT_DEFAULT
        self.output: int | None = None
        self.last_was_command = False
        self.expecting: int | None = None
        """The command whose data byte is due on port 0x60."""
        self.resets = 0
        self.data = _DataPort(self)
        self.command = _CommandPort(self)

    def connect_reset(self, on_reset: ResetHook) -> None:
        self._on_reset = on_reset

    def state(self) -> DeviceState:
        return {"config": self.config, "output_port": self.output_port, "output": self.output,
                "last_was_command": self.last_was_command, "expecting": self.expecting}

    def restore(self, state: Mapping[str, object]) -> None:
        name = "i8042"
        config = field_int(name, state, "config", 0xFF)
        output_port = field_int(name, state, "output_port", 0xFF)
        output = field_optional_int(name, state, "output", 0xFF)
        last_was_command = field_bool(name, state, "last_was_command")
        expecting = field_optional_int(name, state, "expecting", 0xFF)
        self.config, self.output_port, self.output = config, output_port, output
        self.last_was_command, self.expecting = last_was_command, expecting

    def status(self) -> int:
        value = STATUS_SYSTEM
        if self.output is not None:
            value |= STATUS_OUTPUT_FULL
        if self.last_was_command:
            value |= STATUS_LAST_WAS_COMMAND
        return value

    def read_data(self) -> int:
        value = self.output if self.output is not None else 0
        self.output = None
        return value

    def write_data(self, value: int) -> None:
        self.last_was_command = False
        pending, self.expecting = self.expecting, None
        if pending == CMD_WRITE_CONFIG:
            self.config = value
        elif pending == CMD_WRITE_OUTPUT_PORT:
            self.output_port = value
            if not value & OUTPUT_PORT_RESET_LINE:
                self._reset(f"i8042 output port write {value:#04x} (reset line low)")
        else:
            self.output = KEYBOARD_ACK  # a byte for the keyboard: it acknowledges everything

    def write_command(self, value: int) -> None:
        self.last_was_command = True
        if value == CMD_READ_CONFIG:
            self.output = self.config
        elif value in (CMD_WRITE_CONFIG, CMD_WRITE_OUTPUT_PORT):
            self.expecting = value
        elif value == CMD_SELF_TEST:
            self.output = SELF_TEST_PASSED
        elif value == CMD_KBD_INTERFACE_TEST:
            self.output = INTERFACE_TEST_PASSED
        elif value == CMD_READ_OUTPUT_PORT:
            self.output = self.output_port
        elif value >= CMD_PULSE_FIRST and not value & OUTPUT_PORT_RESET_LINE:
            self._reset(f"i8042 command {value:#04x} (pulse CPU reset)")

    def _reset(self, detail: str) -> None:
        self.resets += 1
        if self._on_reset is not None:
            self._on_reset(detail)


class _DataPort:
    def __init__(self, controller: I8042) -> None:
        self._c = controller

    def port_read(self, offset: int, size: int) -> int:
        return self._c.read_data()

    def port_write(self, offset: int, size: int, value: int) -> None:
        self._c.write_data(value & 0xFF)


class _CommandPort:
    def __init__(self, controller: I8042) -> None:
        self._c = controller

    def port_read(self, offset: int, size: int) -> int:
        return self._c.status()

    def port_write(self, offset: int, size: int, value: int) -> None:
        self._c.write_command(value & 0xFF)
