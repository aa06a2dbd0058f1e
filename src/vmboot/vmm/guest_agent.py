"""The guest agent of a running machine: commands run in the guest while the vCPU runs.

:class:`AgentBridge` joins the virtio-console port the agent opens (named
:data:`AGENT_PORT`, the agent's default channel) to one end of a socket pair, so that
:class:`~vmboot.agent.client.AgentClient` speaks to the guest exactly as it speaks to an
agent on a socket. :class:`GuestAgent` runs the machine's vCPU on a thread of its own and
hands out the client; the machine's :meth:`~vmboot.vmm.machine.Machine.exec` uses it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from vmboot.agent.client import AgentClient, AgentError
from vmboot.devices.virtio.console import ConsolePort

if TYPE_CHECKING:
    from vmboot.vmm.machine import Machine, RunResult

AGENT_PORT = "vmboot.agent"
"""The name of the virtio-console port the agent talks on (its default channel)."""
PUSH_RETRY_SECONDS = 0.005
"""How long the bridge waits when the port's input buffer is full (the guest reads slower)."""
RECEIVE_BYTES = 1 << 16
READY_TIMEOUT = 600.0
"""Seconds to wait for the agent's greeting by default (a boot under emulation is slow)."""
RESUME_TIMEOUT = 120.0
"""Seconds a restored guest's agent has to answer the resume message (it answers in
milliseconds; a host shared by many busy guests can be far slower)."""


class AgentBridge:
    """A virtio-console port on one side, a stream socket on the other."""

    def __init__(self) -> None:
        self.client_end, self._port_end = socket.socketpair()
        self.port = ConsolePort(AGENT_PORT, self._from_guest)
        self._thread: threading.Thread | None = None

    def _from_guest(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the host side is gone: the bytes have no reader
            self._port_end.sendall(data)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._to_guest, name="vmboot-agent-bridge",
                                            daemon=True)
            self._thread.start()

    def _to_guest(self) -> None:
        while True:
            try:
                data = self._port_end.recv(RECEIVE_BYTES)
            except OSError:
                return
            if not data:
                return
            while data:
                taken = self.port.push(data)
                data = data[taken:]
                if data:
                    time.sleep(PUSH_RETRY_SECONDS)

    def disconnect(self) -> None:
        """The guest is gone: the client's next read ends at once (no waiting for a timeout)."""
        with contextlib.suppress(OSError):
            self._port_end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.disconnect()
        self._port_end.close()
        self.client_end.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class GuestAgent:
    """The machine's vCPU on a background thread, and a client of the agent in the guest."""

    def __init__(self, machine: Machine, bridge: AgentBridge,
                 on_end: Callable[[RunResult], object] | None = None) -> None:
        self.machine = machine
        self.bridge = bridge
        self.client = AgentClient(bridge.client_end)
        self.result: RunResult | None = None
        """How the run ended (None while the guest runs)."""
        self._on_end = on_end
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self, ready_timeout: float = READY_TIMEOUT) -> None:
        """Run the guest in the background and wait for the agent's greeting."""
        self._start_thread()
        try:
            self.client.wait_ready(ready_timeout)
        except AgentError as e:
            raise AgentError(f"{e}{self._why_stopped()}") from None

    def resume(self, timeout: float = RESUME_TIMEOUT) -> None:
        """Run a guest restored from a snapshot in the background and send the agent the
        resume message (fresh entropy, the host's wall time); wait for its answer."""
        self._start_thread()
        try:
            self.client.resumed(timeout)
        except AgentError as e:
            raise AgentError(f"{e}{self._why_stopped()}") from None

    def _start_thread(self) -> None:
        from vmboot.vmm.runner import install_kick_handler

        if self._thread is None:
            install_kick_handler()  # from this (main) thread: the vCPU thread can be stopped
            self.bridge.start()
            self._thread = threading.Thread(target=self._run, name="vmboot-vcpu", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """The guest runs on the background thread."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.result = self.machine.run()
        finally:
            if not self._stopping:  # a pause (stop) keeps the connection for the next run
                self.bridge.disconnect()
            if self._on_end is not None and self.result is not None:
                self._on_end(self.result)

    def _why_stopped(self) -> str:
        if self.result is None:
            return ""
        return f" (the guest stopped: {self.result.exit.one_line()})"

    def stop(self, timeout: float = 10.0) -> None:
        """End the run and wait for the vCPU thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        try:
            self.machine.request_stop()
            thread.join(timeout)
        finally:
            self._stopping = False
        self.result = None
