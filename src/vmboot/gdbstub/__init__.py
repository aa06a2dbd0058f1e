"""A GDB remote-serial-protocol stub: ``gdb`` attaches to a running guest.

:mod:`~vmboot.gdbstub.packets` frames and checksums packets, :mod:`~vmboot.gdbstub.registers`
describes the x86_64 registers (the target description gdb reads) and encodes them,
:mod:`~vmboot.gdbstub.target` is what the stub needs from a VM, :mod:`~vmboot.gdbstub.session`
answers one connected debugger, and :mod:`~vmboot.gdbstub.server` listens on TCP or a UNIX socket
and serves one debugger after another; :mod:`~vmboot.gdbstub.address` parses where it
listens. (Nothing is imported here, so checking an address loads nothing else.)
"""
