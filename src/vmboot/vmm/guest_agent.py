"""The guest agent of a running machine: commands run in the guest while the vCPU runs.

The agent reaches the host over one of two links (``MachineConfig.agent``,
:data:`vmboot.config.AGENT_TRANSPORTS`):

- ``console``: :class:`AgentBridge` joins the virtio-console port the agent opens (named
  :data:`AGENT_PORT`, the agent's default channel; the guest sees ``/dev/vportNpM``, not a
  tty) to one end of a socket pair. Two more ports carry each command's stdout and stderr
  (:func:`~vmboot.agent.protocol.output_port_names`): the agent hands them to the command
  as its fd 1 and 2, and the bridge frames what they carry as the agent would (STDOUT,
  STDERR), taking every buffer already queued on them before each message of the control
  port, so a command's last output always comes before its exit status. Every command on
  this link writes to the ports: the agent runs one command at a time and the host has
  taken all of a command's output when it reports the exit, so none is in flight when the
  next starts (a background process the command left behind keeps the ports, and what it
  writes later joins the output of the command running then; with pipes it would get
  EPIPE instead);
- ``vsock``: :class:`VsockAgentLink` listens on host port :data:`AGENT_VSOCK_PORT` of the
  machine's vsock device; the agent connects there (``vmboot.agent=vsock:PORT`` on the
  kernel command line).

Either way :class:`~vmboot.agent.client.AgentClient` speaks to the guest exactly as it speaks
to an agent on a socket. :class:`GuestAgent` runs the machine's vCPU on a thread of its own
and hands out the client; the machine's :meth:`~vmboot.vmm.machine.Machine.exec` uses it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from vmboot.agent import protocol
from vmboot.agent.client import AgentClient, AgentError
from vmboot.devices.virtio.console import ConsolePort
from vmboot.vmm.running import RunEnd, RunsGuest

if TYPE_CHECKING:
    from vmboot.config import AgentTransport
    from vmboot.devices.virtio.vsock import VsockDevice
    from vmboot.devices.virtio.vsock_host import VsockListener

AGENT_PORT = "vmboot.agent"
"""The name of the virtio-console port the agent talks on (its default channel)."""
AGENT_VSOCK_PORT = 1025
"""The host vsock port the agent connects to with ``agent="vsock"``."""
AGENT_CMDLINE_KEY = "vmboot.agent"
"""The kernel parameter that names the agent's channel (``port:NAME``, ``vsock:PORT``)."""
PUSH_RETRY_SECONDS = 0.005
"""How long the bridge waits when the port's input buffer is full (the guest reads slower)."""
RECEIVE_BYTES = 1 << 16
READY_TIMEOUT = 600.0
"""Seconds to wait for the agent's greeting by default (a boot under emulation is slow)."""
RESUME_TIMEOUT = 120.0
"""Seconds a restored guest's agent has to answer the resume message (it answers in
milliseconds; a host shared by many busy guests can be far slower)."""
PARK_TIMEOUT = 10.0
"""Seconds a ready agent has to answer the park message before a snapshot (it answers in
milliseconds; without an answer the guest is saved unparked)."""
PARK_SETTLE = 0.2
"""Seconds the guest runs on between the agent's park answer and the save: the kernel's
deferred work (RCU grace periods, workqueues) ends meanwhile, so a restored guest has none
to do before its agent sees the mailbox (measured on a PVM host: the agent held the command
3.7 ms after the restored guest started with 0.15 s of this, 8 ms with 0.05 s)."""
PARK_WAIT = 2.0
"""Seconds the agent waits in its mailbox at most (well beyond :data:`PARK_SETTLE` and the
save's pause; the host releases it after the save)."""
ACCEPT_POLL_SECONDS = 0.2
"""How often waiting for the agent's vsock connection checks that the guest still runs."""


class AgentLink(Protocol):
    """The host's end of the agent's channel."""

    transport: AgentTransport
    console_ports: tuple[ConsolePort, ...]
    """The virtio-console ports the machine must offer (none: the link needs none)."""

    def cmdline(self) -> str:
        """Kernel parameters that tell the agent where its channel is ("" for its default)."""
        ...

    def connect(self, timeout: float, running: Callable[[], bool]) -> socket.socket:
        """A stream socket to the agent; waits at most ``timeout`` seconds, and gives up
        as soon as ``running()`` turns false (the guest stopped)."""
        ...

    def disconnect(self) -> None:
        """The guest is gone: the client's next read ends at once (no waiting for a timeout)."""
        ...

    def close(self) -> None: ...


class AgentBridge:
    """The agent's virtio-console ports on one side (control, stdout, stderr), a stream
    socket on the other.

    Everything the ports carry is handed over on the virtio I/O thread. When the socket's
    reader falls behind, that thread waits in ``sendall``: the guest's output queues fill
    and the command's writes block until the host reads again (nothing is dropped)."""

    transport: AgentTransport = "console"

    def __init__(self) -> None:
        self.client_end, self._port_end = socket.socketpair()
        stdout_name, stderr_name = protocol.output_port_names(AGENT_PORT)
        self.stdout_port = ConsolePort(stdout_name, self._output(protocol.Frame.STDOUT))
        self.stderr_port = ConsolePort(stderr_name, self._output(protocol.Frame.STDERR))
        self.port = ConsolePort(AGENT_PORT, self._from_guest,
                                drain_first=(self.stdout_port, self.stderr_port))
        """The control port (the agent's channel)."""
        # the output ports first: their names reach the guest before the control port's
        self.console_ports: tuple[ConsolePort, ...] = (self.stdout_port, self.stderr_port,
                                                       self.port)
        self._control = protocol.FrameCutter()
        self._thread: threading.Thread | None = None

    def cmdline(self) -> str:
        return ""  # the agent's default channel is this port's name

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the host side is gone: the bytes have no reader
            self._port_end.sendall(data)

    def _from_guest(self, data: bytes) -> None:
        whole = self._control.feed(data)  # output frames may only go between whole frames
        if whole:
            self._send(whole)

    def _output(self, kind: protocol.Frame) -> Callable[[bytes], None]:
        def sink(data: bytes) -> None:
            for chunk in protocol.data_frames(kind, data):
                self._send(chunk)
        return sink

    def connect(self, timeout: float, running: Callable[[], bool]) -> socket.socket:
        self.start()
        return self.client_end

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
        with contextlib.suppress(OSError):
            self._port_end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.disconnect()
        self._port_end.close()
        self.client_end.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class VsockAgentLink:
    """The agent's vsock connection to host port :data:`AGENT_VSOCK_PORT`."""

    transport: AgentTransport = "vsock"
    console_ports: tuple[ConsolePort, ...] = ()

    def __init__(self, vsock: VsockDevice, port: int = AGENT_VSOCK_PORT) -> None:
        self.port = port
        self._listener: VsockListener = vsock.listen(port)
        self._sock: socket.socket | None = None

    def cmdline(self) -> str:
        return f"{AGENT_CMDLINE_KEY}=vsock:{self.port}"

    def connect(self, timeout: float, running: Callable[[], bool]) -> socket.socket:
        from vmboot.devices.virtio.vsock_host import VsockError

        if self._sock is not None:
            return self._sock
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock = self._listener.accept(ACCEPT_POLL_SECONDS)
                return self._sock
            except VsockError:
                if not running():
                    raise AgentError("agent: the guest stopped before the agent connected "
                                     f"to vsock port {self.port}") from None
                if time.monotonic() >= deadline:
                    raise AgentError(f"agent: no connection on vsock port {self.port} within "
                                     f"{timeout:g} s") from None

    def disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.disconnect()
        if self._sock is not None:
            self._sock.close()
        self._listener.close()


def agent_link(transport: AgentTransport, vsock: VsockDevice | None) -> AgentLink:
    """The link for ``transport`` (``MachineConfig`` checked that vsock has its device)."""
    if transport == "vsock":
        assert vsock is not None
        return VsockAgentLink(vsock)
    return AgentBridge()


EndT = TypeVar("EndT", bound=RunEnd)


class GuestAgent(Generic[EndT]):
    """The machine's vCPU on a background thread, and a client of the agent in the guest."""

    def __init__(self, machine: RunsGuest[EndT], link: AgentLink,
                 on_end: Callable[[EndT], object] | None = None) -> None:
        self.machine = machine
        self.link = link
        self.client: AgentClient | None = None
        """The client, once the agent's channel is connected."""
        self.result: EndT | None = None
        """How the run ended (None while the guest runs)."""
        self._on_end = on_end
        self._thread: threading.Thread | None = None
        self._start_on_send = False
        """The vCPU thread starts when the client's first message is sent (resume)."""
        self._ended = threading.Event()
        self._stopping = False

    def start(self, ready_timeout: float = READY_TIMEOUT) -> AgentClient:
        """Run the guest in the background and wait for the agent's greeting."""
        return self._begin(ready_timeout, AgentClient.wait_ready)

    def resume(self, timeout: float = RESUME_TIMEOUT, wait: bool = True,
               deliver_first: Callable[[bytes], bool] | None = None) -> AgentClient:
        """Run a guest restored from a snapshot in the background and send the agent the
        resume message (fresh entropy, the host's wall time); wait for its answer. With
        ``wait`` False the message goes with the first command
        (:meth:`AgentClient.send_resumed`). Over the console port the guest starts running
        only once the message is on its way (with the command, when not waiting): it
        resumes with them in its queue, or in the agent's mailbox when ``deliver_first``
        put them there (:attr:`AgentClient.deliver_first`), and no vCPU thread competes
        with this one until then."""
        if self.link.transport != "console":
            return self._begin(timeout, AgentClient.resumed if wait else AgentClient.send_resumed)
        try:
            client = self._connect(timeout)  # the bridge: no guest needed to connect
            client.deliver_first = deliver_first
            self._start_on_send = True
            if wait:
                client.resumed(timeout, on_sent=self._start_deferred)
            else:
                client.send_resumed(timeout, on_sent=self._start_deferred)
        except AgentError as e:
            raise AgentError(f"{e}{self._why_stopped()}") from None
        return client

    def _start_deferred(self) -> None:
        self._start_on_send = False
        self._start_thread()

    def _begin(self, timeout: float, first: Callable[[AgentClient, float], object]
               ) -> AgentClient:
        """Start the vCPU thread (unless it starts with the first message), connect the
        agent's channel and do ``first`` (wait for the greeting, or resume), all within
        ``timeout`` seconds."""
        if not self._start_on_send:
            self._start_thread()
        deadline = time.monotonic() + timeout
        try:
            client = self._connect(timeout)
            first(client, max(deadline - time.monotonic(), 0.001))
        except AgentError as e:
            raise AgentError(f"{e}{self._why_stopped()}") from None
        return client

    def _connect(self, timeout: float) -> AgentClient:
        if self.client is None:
            sock = self.link.connect(timeout, lambda: not self._ended.is_set())
            self.client = AgentClient(sock)
        return self.client

    def _start_thread(self) -> None:
        from vmboot.vmm.runner import install_kick_handler

        if self._thread is None:
            install_kick_handler()  # from this (main) thread: the vCPU thread can be stopped
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
                self._ended.set()
                self.link.disconnect()
            if self._on_end is not None and self.result is not None:
                self._on_end(self.result)

    def _why_stopped(self) -> str:
        if self.result is None:
            return ""
        return f" (the guest stopped: {self.result.exit.one_line()})"

    def stop(self, timeout: float = 10.0) -> EndT | None:
        """End the run and wait for the vCPU thread; how the run ended (None: it has not).
        The agent's connection stays for a later :meth:`start` or :meth:`resume` (a pause)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return self.result
        self._stopping = True
        try:
            self.machine.request_stop()
            thread.join(timeout)
        finally:
            self._stopping = False
        result, self.result = self.result, None
        return result
