"""What an exec guest boots with, and where its image keeps its programs: the kernel command
lines, the serial ports, the image's paths. Constants only, so that a warm run (which boots
nothing and builds no image) needs no more than these of :mod:`vmboot.execute.image`."""

from __future__ import annotations

from vmboot.devices.serial import COM1, COM2, COM3, COM4

EXEC_KERNEL_ARGS = ("console=ttyS0", "8250.nr_uarts=4")
"""Kernel command-line options the exec image needs (add reboot=k panic=-1 as usual)."""
EXEC_CMDLINE = " ".join(("console=ttyS0", *(a for a in EXEC_KERNEL_ARGS if a != "console=ttyS0"),
                         "reboot=k", "panic=-1", "quiet"))
"""The kernel command line of an exec boot."""
EXEC_SERIAL_PORTS = (COM1, COM2, COM3, COM4)
"""COM1 the console, COM2 the command's stdout, COM3 its stderr, COM4 the status channel."""
AGENT_CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet"
"""The kernel command line of an agent-image boot (the UART console only)."""

BUSYBOX_PATH = "bin/busybox"
SHELL_PATH = "bin/sh"
INIT_PATH = "init"
"""Where the images keep busybox, its shell and ``/init`` (paths in the archive)."""
