"""The guest agent, run here on the host over a socket pair: the same binary a guest runs,
the same protocol, with the host's /bin/sh and coreutils as the commands."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import require
from endless_pipe import endless_pipe
from vmboot.agent import agent_binary
from vmboot.agent import protocol as p
from vmboot.agent.build import LINUX_SOURCE_TARBALL, build
from vmboot.agent.client import AgentClient, AgentError
from vmboot.vmm.guest_agent import AGENT_PORT, AgentBridge

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


@contextlib.contextmanager
def running_agent(preexec_fn: Callable[[], object] | None = None) -> Iterator[AgentClient]:
    """The agent binary on the host, talking over a socket pair; stopped afterwards."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([str(agent_binary()), "--fd", str(theirs.fileno())],
                            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                            preexec_fn=preexec_fn)
    theirs.close()
    client = AgentClient(ours)
    try:
        yield client
    finally:
        client.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def agent() -> Iterator[AgentClient]:
    with running_agent() as client:
        yield client


def test_greets_with_its_version(agent: AgentClient) -> None:
    assert agent.wait_ready(10) == p.AGENT_VERSION


def test_the_resumed_frame_carries_wall_time_and_seed() -> None:
    raw = p.resumed_frame(1_700_000_000_123_456_789, b"\x01" * p.SEED_BYTES)
    (length,) = p.LENGTH.unpack_from(raw)
    assert raw[4:5] == p.Frame.RESUMED.value and length == 1 + p.RESUMED_HEAD.size + p.SEED_BYTES
    assert p.RESUMED_HEAD.unpack_from(raw, 5) == (1_700_000_000, 123_456_789)
    with pytest.raises(p.AgentProtocolError, match="random bytes"):
        p.resumed_frame(0, b"")
    with pytest.raises(p.AgentProtocolError, match="random bytes"):
        p.resumed_frame(0, bytes(p.SEED_MAX + 1))


def test_a_malformed_resumed_frame_changes_nothing_and_is_answered(agent: AgentClient) -> None:
    """Only a malformed frame is sent here: a real one would set this host's clock."""
    agent.wait_ready(10)
    agent.sock.sendall(p.frame(p.Frame.RESUMED, b"short"))
    msg = agent._read(None)
    assert msg is not None and msg.kind is p.Frame.RESUMED_DONE
    answer = p.resumed_answer(msg.payload)
    assert answer.errnos == (22, 22, 22)  # EINVAL, nothing done
    assert answer.version == p.AGENT_VERSION
    assert answer.behind == 0 and answer.held_cycles is not None
    assert agent.run(["/bin/true"], ENV, timeout=30).exit_status == 0


def test_the_resume_answer_says_what_came_with_the_message_and_how_long_it_was_held(
        agent: AgentClient) -> None:
    """The bytes read with the resume message (here a stdin frame, which the agent
    acknowledges) are counted, and the time from that read to the answer is given (in TSC
    cycles)."""
    agent.wait_ready(10)
    behind = p.frame(p.Frame.STDIN, b"x" * 100)
    before = time.monotonic()
    agent.sock.sendall(p.frame(p.Frame.RESUMED, b"short") + behind)
    msg = agent._read(None)
    elapsed = time.monotonic() - before
    assert msg is not None and msg.kind is p.Frame.RESUMED_DONE
    answer = p.resumed_answer(msg.payload)
    assert answer.behind == len(behind)
    # TSC cycles: fewer than a 10 GHz counter would count in the round trip
    assert answer.held_cycles is not None and 0 < answer.held_cycles < elapsed * 10e9
    taken = agent._read(None)
    assert taken is not None and taken.kind is p.Frame.STDIN_TAKEN


def test_fifty_commands_in_one_session_each_status_right(agent: AgentClient) -> None:
    for n in range(50):
        result = agent.run(["/bin/sh", "-c", f"echo run {n}; exit {n % 7}"], ENV, timeout=30)
        assert (result.exit_status, result.stdout) == (n % 7, f"run {n}\n".encode())


def test_stdout_and_stderr_stay_separate(agent: AgentClient) -> None:
    result = agent.run(["/bin/sh", "-c", "echo out; echo err >&2; echo out2"], ENV, timeout=30)
    assert result.stdout == b"out\nout2\n" and result.stderr == b"err\n"


def test_streaming_sinks_get_the_output_as_it_comes(agent: AgentClient) -> None:
    got: list[bytes] = []
    result = agent.run(["/bin/sh", "-c", "head -c 300000 /dev/zero"], ENV, on_stdout=got.append,
                       timeout=60)
    assert result.stdout == b"" and sum(map(len, got)) == 300000 and len(got) > 1


def test_stdin_reaches_the_command_and_large_input_is_flow_controlled(agent: AgentClient) -> None:
    assert agent.run(["/bin/cat"], ENV, stdin=b"hello\n", timeout=30).stdout == b"hello\n"
    data = os.urandom(3 << 20)  # well past the agent's 256 KiB buffer
    result = agent.run(["/usr/bin/sha256sum"], ENV, stdin=data, timeout=60)
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_a_command_that_writes_before_it_reads_does_not_deadlock(agent: AgentClient) -> None:
    data = os.urandom(1 << 20)
    result = agent.run(["/bin/sh", "-c", "head -c 2000000 /dev/zero; wc -c"], ENV, stdin=data,
                       timeout=60)
    assert result.stdout[:2000000] == bytes(2000000)
    assert result.stdout[2000000:].strip() == str(len(data)).encode()


def test_a_command_starts_with_default_signal_actions() -> None:
    """Started by a process that ignores SIGINT (a background job), the agent still gives
    its commands SIGINT's default action, so a shell's trap fires."""
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    with running_agent(ignore_sigint) as client:
        def on_stdout(data: bytes) -> None:
            if b"ready" in data:
                client.signal(signal.SIGINT)

        result = client.run(["/bin/sh", "-c", 'trap "exit 42" INT; echo ready; '
                             'while :; do sleep 0.1; done'], ENV, on_stdout=on_stdout, timeout=60)
        assert result.exit_status == 42 and not result.timed_out


def test_unread_stdin_is_dropped_and_the_next_command_is_clean(agent: AgentClient) -> None:
    result = agent.run(["/bin/true"], ENV, stdin=os.urandom(1 << 20), timeout=30)
    assert result.exit_status == 0
    assert agent.run(["/bin/cat"], ENV, stdin=b"next", timeout=30).stdout == b"next"


def test_cwd_and_exactly_the_given_environment(agent: AgentClient, tmp_path: Path) -> None:
    assert agent.run(["/bin/pwd"], ENV, cwd=str(tmp_path), timeout=30).stdout == f"{tmp_path}\n".encode()
    env = agent.run(["/usr/bin/env"], {"A": "1", "B": "two words"}, timeout=30).stdout
    assert sorted(env.decode().splitlines()) == ["A=1", "B=two words"]
    with pytest.raises(AgentError, match="No such file"):
        agent.run(["/bin/pwd"], ENV, cwd=str(tmp_path / "absent"), timeout=30)


def test_a_program_that_does_not_exist(agent: AgentClient) -> None:
    with pytest.raises(AgentError, match=r"cannot run '/no/such/program'.*No such file"):
        agent.run(["/no/such/program"], ENV, timeout=30)
    assert agent.run(["/bin/true"], ENV, timeout=30).exit_status == 0


def test_timeout_kills_the_command_and_the_agent_stays_usable(agent: AgentClient) -> None:
    result = agent.run(["/bin/sh", "-c", "sleep 1000"], ENV, timeout=1)
    assert result.timed_out and result.signal == signal.SIGKILL and result.returncode == -9
    assert agent.run(["/bin/echo", "alive"], ENV, timeout=30).stdout == b"alive\n"


def test_signals_reach_the_command(agent: AgentClient) -> None:
    def on_stdout(data: bytes) -> None:
        if b"ready" in data:
            agent.signal(signal.SIGINT)

    result = agent.run(["/bin/sh", "-c", 'trap "exit 42" INT; echo ready; while :; do sleep 0.1; done'],
                       ENV, on_stdout=on_stdout, timeout=60)
    assert result.exit_status == 42 and not result.timed_out


def test_death_by_signal_is_reported_as_such(agent: AgentClient) -> None:
    result = agent.run(["/bin/sh", "-c", "kill -TERM $$"], ENV, timeout=30)
    assert (result.exit_status, result.signal) == (None, signal.SIGTERM)


def test_protocol_refuses_what_cannot_be_sent() -> None:
    with pytest.raises(p.AgentProtocolError, match="argv is empty"):
        p.exec_frame([], {})
    with pytest.raises(p.AgentProtocolError, match="NUL"):
        p.exec_frame(["/bin/echo", "a\0b"], {})
    with pytest.raises(p.AgentProtocolError, match="at most 256"):
        p.exec_frame(["x"] * 300, {})
    reader = p.FrameReader()
    with pytest.raises(p.AgentProtocolError, match="frame length"):
        list(reader.feed(b"\xff\xff\xff\xff"))
    with pytest.raises(p.AgentProtocolError, match="unknown frame type"):
        list(p.FrameReader().feed(p.LENGTH.pack(1) + b"?"))
    frames = list(p.FrameReader().feed(p.frame(p.Frame.READY, b"v") + p.frame(p.Frame.STDOUT, b"x")[:3]))
    assert [f.kind for f in frames] == [p.Frame.READY]


def test_the_guest_closing_the_connection_is_one_line(agent: AgentClient) -> None:
    agent.wait_ready(10)
    agent.signal(signal.SIGINT)  # no command: ignored
    agent.sock.shutdown(socket.SHUT_WR)  # the agent sees end of file and exits
    with pytest.raises(AgentError, match="closed the connection"):
        agent.run(["/bin/true"], ENV, timeout=30)


def test_committed_agent_rebuilds_byte_identical(tmp_path: Path) -> None:
    require(LINUX_SOURCE_TARBALL.is_file(), "linux-source-6.1",
            f"{LINUX_SOURCE_TARBALL} is missing (apt-get install linux-source-6.1)")
    rebuilt = build(tmp_path)
    assert rebuilt.read_bytes() == agent_binary().read_bytes()


def test_many_connections_in_turn() -> None:
    for _ in range(20):
        ours, theirs = socket.socketpair()
        proc = subprocess.Popen([str(agent_binary()), "--fd", str(theirs.fileno())],
                                pass_fds=(theirs.fileno(),))
        theirs.close()
        client = AgentClient(ours)
        assert client.run(["/bin/true"], ENV, timeout=30).exit_status == 0
        client.close()
        assert proc.wait(timeout=10) == 0



def test_without_output_ports_output_takes_the_pipes(agent: AgentClient) -> None:
    """An agent on an fd has no virtio-console ports: its commands write to pipes."""
    result = agent.run(["/bin/sh", "-c", "echo out; echo err >&2"], ENV, timeout=30)
    assert result.output is p.OutputPath.PIPES
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")


def test_stdin_from_a_pipe_that_never_closes_ends_with_the_command(agent: AgentClient) -> None:
    """``yes | vmboot exec -- head -n 3``: stdin is read as the command takes it, and the
    run ends when the command does although the pipe stays open and full."""
    with endless_pipe() as stdin:
        result = agent.run(["/usr/bin/head", "-n", "3"], ENV, stdin=stdin, timeout=60)
    assert result.exit_status == 0 and result.stdout == b"y\n" * 3 and not result.timed_out


def test_stdin_from_a_file_descriptor_streams_exactly(agent: AgentClient) -> None:
    """Stdin written into a pipe while the command runs (more than the agent's window),
    then closed: the command reads all of it, and end of file."""
    data = os.urandom(300_000)
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as w:
            for start in range(0, len(data), 7000):
                w.write(data[start:start + 7000])
                w.flush()

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        with os.fdopen(read_end, "rb", buffering=0) as stdin:
            result = agent.run(["/usr/bin/md5sum"], ENV, stdin=stdin, timeout=60)
    finally:
        writer.join(timeout=30)
    assert result.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


def test_frame_cutter_passes_whole_frames_only() -> None:
    cutter = p.FrameCutter()
    whole = p.frame(p.Frame.STARTED, p.STARTED.pack(7, 1)) + p.frame(p.Frame.EXITED, bytes(8))
    assert cutter.feed(whole[:3]) == b""
    assert cutter.feed(whole[3:12]) == b""  # STARTED is 4 + 1 + 8 bytes
    assert cutter.feed(whole[12:15]) == whole[:13]
    assert cutter.feed(whole[15:]) == whole[13:]
    broken = p.FrameCutter()
    assert broken.feed(b"\xff\xff\xff\xffjunk") == b"\xff\xff\xff\xffjunk"
    assert broken.feed(b"more") == b"more"  # passed on for the reader to refuse


def test_the_bridge_puts_output_between_whole_control_frames() -> None:
    """What the output ports carry is framed as STDOUT/STDERR and never lands inside a
    control frame that arrived in pieces."""
    bridge = AgentBridge()
    try:
        started = p.frame(p.Frame.STARTED, p.STARTED.pack(7, p.OutputPath.PORTS))
        exited = p.frame(p.Frame.EXITED, p.U32_PAIR.pack(0, 3))
        assert bridge.port.sink is not None and bridge.stdout_port.sink is not None
        assert bridge.stderr_port.sink is not None
        bridge.port.sink(started[:6])
        bridge.stdout_port.sink(b"out")
        bridge.port.sink(started[6:] + exited[:2])
        bridge.stderr_port.sink(b"e" * (p.DATA_MAX + 1))
        bridge.port.sink(exited[2:])
        bridge.client_end.settimeout(10)
        reader = p.FrameReader()
        got: list[p.Message] = []
        while len(got) < 5:
            got.extend(reader.feed(bridge.client_end.recv(1 << 17)))
        assert [(m.kind, len(m.payload)) for m in got] == [
            (p.Frame.STDOUT, 3), (p.Frame.STARTED, 8), (p.Frame.STDERR, p.DATA_MAX),
            (p.Frame.STDERR, 1), (p.Frame.EXITED, 8)]
        assert [port.name for port in bridge.console_ports] == [
            *p.output_port_names(AGENT_PORT), AGENT_PORT]
    finally:
        bridge.close()


def test_an_unknown_output_path_is_refused() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(p.frame(p.Frame.READY, b"v") +
                       p.frame(p.Frame.STARTED, p.STARTED.pack(1, 9)))
        with pytest.raises(p.AgentProtocolError, match="output path 9, not one of 0 \\(PIPES\\)"):
            AgentClient(ours).run(["/bin/true"], timeout=10)
