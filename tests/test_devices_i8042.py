"""i8042: the reset path Linux's reboot=k takes, and the controller commands."""

from __future__ import annotations

from vmboot.devices import i8042 as k
from vmboot.devices.bus import PortBus
from vmboot.devices.i8042 import I8042


def make() -> tuple[I8042, PortBus, list[str]]:
    stops: list[str] = []
    dev = I8042(on_reset=stops.append)
    bus = PortBus()
    bus.attach(k.DATA_PORT, 1, dev.data, "data")
    bus.attach(k.COMMAND_PORT, 1, dev.command, "command")
    return dev, bus, stops


def test_linux_reboot_k_sequence_stops_with_reset() -> None:
    _, bus, stops = make()
    polls = 0
    for _ in range(0x10000):  # kb_wait()
        polls += 1
        if not bus.read(k.COMMAND_PORT, 1) & k.STATUS_INPUT_FULL:
            break
    assert polls == 1
    bus.write(k.COMMAND_PORT, 1, k.CMD_RESET_CPU)
    assert len(stops) == 1
    assert "0xfe" in stops[0]


def test_reset_through_output_port() -> None:
    dev, bus, stops = make()
    bus.write(k.COMMAND_PORT, 1, k.CMD_READ_OUTPUT_PORT)
    assert bus.read(k.COMMAND_PORT, 1) & k.STATUS_OUTPUT_FULL
    assert bus.read(k.DATA_PORT, 1) == k.OUTPUT_PORT_DEFAULT
    bus.write(k.COMMAND_PORT, 1, k.CMD_WRITE_OUTPUT_PORT)
    bus.write(k.DATA_PORT, 1, 0x02)  # reset line low
    assert len(stops) == 1 and "reset line low" in stops[0]
    assert dev.resets == 1


def test_config_byte_round_trip_and_self_test() -> None:
    _, bus, stops = make()
    bus.write(k.COMMAND_PORT, 1, k.CMD_WRITE_CONFIG)
    bus.write(k.DATA_PORT, 1, 0x47)
    bus.write(k.COMMAND_PORT, 1, k.CMD_READ_CONFIG)
    assert bus.read(k.DATA_PORT, 1) == 0x47
    assert not bus.read(k.COMMAND_PORT, 1) & k.STATUS_OUTPUT_FULL
    bus.write(k.COMMAND_PORT, 1, k.CMD_SELF_TEST)
    assert bus.read(k.DATA_PORT, 1) == k.SELF_TEST_PASSED
    bus.write(k.COMMAND_PORT, 1, 0xFF)  # pulse no line: not a reset
    assert stops == []


def test_reset_without_a_reset_hook_is_counted() -> None:
    dev = I8042()
    dev.write_command(k.CMD_RESET_CPU)
    assert dev.resets == 1
