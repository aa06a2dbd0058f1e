"""A GDB remote-serial-protocol stub: ``gdb`` attaches to a running guest.

:mod:`~vmboot.gdbstub.packets` frames and checksums packets, :mod:`~vmboot.gdbstub.registers`
describes the x86_64 registers (the target description gdb reads) and encodes them,
:mod:`~vmboot.gdbstub.target` is what the stub needs from a VM, :mod:`~vmboot.gdbstub.session`
answers one connected debugger, and :mod:`~vmboot.gdbstub.server` listens on TCP or a UNIX socket
and serves one debugger after another.
"""

from vmboot.gdbstub.server import GdbServer, parse_listen_address
from vmboot.gdbstub.target import GdbTarget, StopEvent, StopKind

__all__ = ["GdbServer", "GdbTarget", "StopEvent", "StopKind", "parse_listen_address"]
