"""The GDB remote-protocol stub: framing, every command it answers, and real gdb attached.

The target here is a MemoryVM whose "running" is simulated: it stops when the test says so.
The stub under KVM, with a real guest, is tested in tests/test_gdbstub_kvm.py.
"""

from __future__ import annotations

import queue
import socket
import struct
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence

import pytest

from conftest import require_tool
from vmboot.errors import UsageError
from vmboot.gdbstub import packets
from vmboot.gdbstub.breakpoints import DebugRegisterSlots, WatchKind
from vmboot.gdbstub.registers import REGISTERS, target_xml
from vmboot.gdbstub.server import GdbServer, ListenAddress, parse_listen_address
from vmboot.gdbstub.session import GdbSession
from vmboot.gdbstub.target import StopEvent, StopKind
from vmboot.hv.base import VirtualCPU
from vmboot.hv.memory import MemoryVM
from vmboot.hv.registers import Register, Segment, SegmentRegister
from vmboot.x86.cr import CR0_PE, CR0_PG, CR4_PAE

PML4 = 0x10000
PDPT = 0x11000
PD = 0x12000
KERNEL_VA = 0xFFFF_FFFF_8100_0000
KERNEL_PA = 0x20_0000
DATA = bytes(range(256)) * 16


class FakeTarget:
    """A MemoryVM guest with two vCPUs that 'runs' until the test posts a stop."""

    def __init__(self) -> None:
        self.vm = MemoryVM(16 << 20)
        self._vcpus = [self.vm.create_vcpu(0), self.vm.create_vcpu(1)]
        # 4-level tables: the kernel VA window maps 2 MiB pages at KERNEL_PA, and the low
        # 2 MiB are identity mapped.
        self.vm.write(PML4, struct.pack("<Q", PDPT | 3))
        self.vm.write(PML4 + 511 * 8, struct.pack("<Q", PDPT | 3))
        self.vm.write(PDPT, struct.pack("<Q", PD | 3))
        self.vm.write(PDPT + 510 * 8, struct.pack("<Q", PD | 3))
        self.vm.write(PD, struct.pack("<Q", 0 | 0x83))
        self.vm.write(PD + 8 * 8, struct.pack("<Q", KERNEL_PA | 0x83))
        self.vm.write(KERNEL_PA, DATA)
        for i, vcpu in enumerate(self._vcpus):
            vcpu.set_registers({Register.CR0: CR0_PE | CR0_PG, Register.CR3: PML4,
                                Register.CR4: CR4_PAE, Register.RIP: KERNEL_VA + 0x10 * i,
                                Register.RAX: 0x1122334455667788 + i, Register.RFLAGS: 0x246})
            vcpu.set_segments({SegmentRegister.CS: Segment(selector=0x10, l=True, present=True),
                               SegmentRegister.GS: Segment(base=0xFFFF_8880_0000_0000 + i)})
        self.calls: list[tuple[str, object]] = []
        self.stops: queue.Queue[StopEvent] = queue.Queue()
        self.dr7 = 0
        self.drs: tuple[int, ...] = (0, 0, 0, 0)
        self.running = False
        self.offset: int | None = 0x1E00_0000
        self.hit_on_resume = False
        self.watchpoints = True

    @property
    def vcpus(self) -> Sequence[VirtualCPU]:
        return self._vcpus

    def pause(self) -> StopEvent:
        self.calls.append(("pause", None))
        self.running = False
        return StopEvent(StopKind.INTERRUPTED, cpu=0)

    def resume(self, step_cpu: int | None = None) -> None:
        self.calls.append(("resume", step_cpu))
        self.running = True
        if self.hit_on_resume and self.dr7:
            # As the hardware would: vCPU 0 reaches the address in DR0 and stops there.
            self._vcpus[0].set_register(Register.RIP, self.drs[0])
            self.stops.put(StopEvent(StopKind.BREAKPOINT, cpu=0, detail="hwbreak"))

    def wait_stop(self, timeout: float) -> StopEvent | None:
        try:
            stop = self.stops.get(timeout=timeout)
        except queue.Empty:
            return None
        self.running = False
        return stop

    def set_debug_registers(self, dr7: int, addresses: Sequence[int]) -> None:
        self.calls.append(("debug", dr7))
        self.dr7 = dr7
        self.drs = tuple(addresses)

    def kernel_offset(self) -> int | None:
        return self.offset


class Client:
    """A minimal gdb: sends packets, reads replies, acks."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = packets.PacketReader()
        self.pending: list[packets.Received] = []
        sock.settimeout(5)

    def _next(self) -> packets.Received:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.pending.extend(self.reader.feed(data))
        return self.pending.pop(0)

    def reply(self) -> bytes:
        while True:
            got = self._next()
            if got.event is packets.Event.PACKET:
                self.sock.sendall(b"+")
                return got.payload

    def ask(self, payload: bytes) -> bytes:
        self.sock.sendall(packets.frame(payload))
        got = self._next()
        assert got.event is packets.Event.ACK, got
        return self.reply()


@pytest.fixture
def session() -> Iterator[tuple[FakeTarget, Client, threading.Thread]]:
    target = FakeTarget()
    ours, theirs = socket.socketpair()
    stub = GdbSession(target, ours)
    thread = threading.Thread(target=stub.serve, daemon=True)
    thread.start()
    yield target, Client(theirs), thread
    theirs.close()
    thread.join(timeout=5)
    ours.close()


# -- framing ------------------------------------------------------------------------------------
def test_frame_and_checksum() -> None:
    assert packets.frame(b"OK") == b"$OK#9a"
    assert packets.checksum(b"") == 0


def test_escape_round_trip_covers_every_byte() -> None:
    data = bytes(range(256))
    escaped = packets.escape_binary(data)
    assert b"$" not in escaped and b"#" not in escaped and b"*" not in escaped
    assert packets.unescape_binary(escaped) == data


def test_run_length_expansion() -> None:
    assert packets.expand_run_length(b"0* ") == b"0" * 4  # ' ' is 32: three more
    assert packets.expand_run_length(b"ab") == b"ab"


def test_reader_skips_garbage_and_reports_bad_checksums() -> None:
    reader = packets.PacketReader()
    events = list(reader.feed(b"garbage$qC#b4+\x03$qC#00-"))
    kinds = [e.event for e in events]
    assert kinds == [packets.Event.PACKET, packets.Event.ACK, packets.Event.INTERRUPT,
                     packets.Event.BAD_CHECKSUM, packets.Event.NACK]
    assert events[0].payload == b"qC"


def test_reader_handles_packets_split_across_reads() -> None:
    reader = packets.PacketReader()
    out = [e for chunk in (b"$m10", b",4#", b"2e") for e in reader.feed(chunk)]
    assert [(e.event, e.payload) for e in out] == [(packets.Event.PACKET, b"m10,4")]


def test_reader_drops_an_endless_packet() -> None:
    reader = packets.PacketReader()
    out = list(reader.feed(b"$" + b"a" * (packets.MAX_PACKET + 10)))
    assert [e.event for e in out] == [packets.Event.BAD_CHECKSUM]
    assert [e.event for e in reader.feed(b"$OK#9a")] == [packets.Event.PACKET]


# -- registers and the description -------------------------------------------------------------
def test_target_xml_is_well_formed_and_numbers_every_register() -> None:
    root = ET.fromstring(target_xml())
    regs = root.findall("./feature/reg")
    assert [r.get("name") for r in regs] == [r.name for r in REGISTERS]
    assert [int(r.get("regnum", "-1")) for r in regs] == list(range(len(REGISTERS)))
    core = root.find("./feature[@name='org.gnu.gdb.i386.core']")
    assert core is not None
    names = [r.get("name") for r in core.findall("reg")]
    assert names[:18] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                          "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags"]


def test_listen_addresses() -> None:
    assert parse_listen_address(":1234") == ListenAddress(host="127.0.0.1", port=1234)
    assert parse_listen_address("localhost:0") == ListenAddress(host="localhost", port=0)
    assert parse_listen_address("unix:/tmp/x.sock") == ListenAddress(path="/tmp/x.sock")
    for bad in ("1234", "host:port", ":70000", "unix:"):
        with pytest.raises(UsageError, match="--gdb"):
            parse_listen_address(bad)


def test_debug_register_slots() -> None:
    slots = DebugRegisterSlots()
    assert slots.insert(0x1000, 1, None)
    assert slots.insert(0x2000, 8, WatchKind.WRITE)
    assert not slots.insert(0x2004, 8, WatchKind.WRITE)  # misaligned
    assert not slots.insert(0x3000, 3, WatchKind.ACCESS)  # no such length
    assert slots.dr7() == 0b0101 | (0b01 << 20) | (0b10 << 22) | (1 << 9)
    assert slots.addresses() == (0x1000, 0x2000, 0, 0)
    assert slots.insert(0x3000, 4, WatchKind.ACCESS) and slots.insert(0x4000, 1, None)
    assert not slots.insert(0x5000, 1, None)  # all four used
    hit = slots.hit(0b0100)
    assert hit is not None and hit.address == 0x3000 and hit.watch is WatchKind.ACCESS
    lowest = slots.hit(0b0110)
    assert lowest is not None and lowest.address == 0x2000
    assert slots.hit(0) is None
    assert slots.remove(0x1000, 1, None) and not slots.remove(0x1000, 1, None)


# -- the session ------------------------------------------------------------------------------
def test_session_answers_queries(session: tuple[FakeTarget, Client, threading.Thread]) -> None:
    target, gdb, _ = session
    assert b"qXfer:features:read+" in gdb.ask(b"qSupported:multiprocess+;swbreak+")
    assert gdb.ask(b"?") == b"T02thread:1;"
    assert gdb.ask(b"qfThreadInfo") == b"m1,2"
    assert gdb.ask(b"qsThreadInfo") == b"l"
    assert bytes.fromhex(gdb.ask(b"qThreadExtraInfo,2").decode()) == b"CPU 1"
    assert gdb.ask(b"qOffsets") == b"Text=1e000000;Data=1e000000;Bss=1e000000"
    assert gdb.ask(b"T3") == b"E02"
    assert gdb.ask(b"qSomethingNew") == b""
    xml = b""
    while True:
        part = gdb.ask(b"qXfer:features:read:target.xml:%x,100" % len(xml))
        xml += packets.unescape_binary(part[1:])
        if part[:1] == b"l":
            break
    assert xml == target_xml()
    assert target.calls[0] == ("pause", None)


def test_session_reads_registers_of_the_selected_cpu(
        session: tuple[FakeTarget, Client, threading.Thread]) -> None:
    _, gdb, _ = session
    g = gdb.ask(b"g")
    assert g[:16] == (0x1122334455667788).to_bytes(8, "little").hex().encode()
    rip_at = 16 * 16
    assert g[rip_at:rip_at + 16] == KERNEL_VA.to_bytes(8, "little").hex().encode()
    assert gdb.ask(b"Hg2") == b"OK"
    assert gdb.ask(b"p0") == (0x1122334455667789).to_bytes(8, "little").hex().encode()
    assert gdb.ask(b"p10") == (KERNEL_VA + 0x10).to_bytes(8, "little").hex().encode()
    gs_base = [r.name for r in REGISTERS].index("gs_base")
    assert gdb.ask(b"p%x" % gs_base) == (0xFFFF_8880_0000_0001).to_bytes(8, "little").hex().encode()
    st0 = [r.name for r in REGISTERS].index("st0")
    assert gdb.ask(b"p%x" % st0) == b"xx" * 10
    assert gdb.ask(b"p999") == b"E01"


def test_session_writes_a_register(session: tuple[FakeTarget, Client, threading.Thread]) -> None:
    target, gdb, _ = session
    assert gdb.ask(b"P3=" + (0xABCD).to_bytes(8, "little").hex().encode()) == b"OK"
    assert target.vcpus[0].get_register(Register.RDX) == 0xABCD
    assert gdb.ask(b"P3=12") == b"E01"


def test_session_memory_through_the_page_tables(
        session: tuple[FakeTarget, Client, threading.Thread]) -> None:
    target, gdb, _ = session
    assert gdb.ask(b"m%x,10" % KERNEL_VA) == DATA[:16].hex().encode()
    # A read running off the end of the mapped window returns the mapped part.
    end = KERNEL_VA + (2 << 20) - 4
    assert gdb.ask(b"m%x,8" % end) == b"00" * 4
    assert gdb.ask(b"m%x,4" % (KERNEL_VA + (4 << 20))) == b"E14"
    assert gdb.ask(b"mzz,4") == b"E01"
    assert gdb.ask(b"M%x,2:beef" % (KERNEL_VA + 4)) == b"OK"
    assert target.vm.read(KERNEL_PA + 4, 2) == b"\xbe\xef"
    payload = b"X%x,3:" % (KERNEL_VA + 8) + packets.escape_binary(b"#$}")
    assert gdb.ask(payload) == b"OK"
    assert target.vm.read(KERNEL_PA + 8, 3) == b"#$}"
    assert gdb.ask(b"M%x,2:beef" % (KERNEL_VA + (4 << 20))) == b"E14"


def test_session_breakpoints_continue_and_stop(
        session: tuple[FakeTarget, Client, threading.Thread]) -> None:
    target, gdb, _ = session
    assert gdb.ask(b"Z1,%x,1" % KERNEL_VA) == b"OK"
    assert target.dr7 == 0b01 and target.drs[0] == KERNEL_VA
    assert gdb.ask(b"Z0,%x,1" % (KERNEL_VA + 1)) == b"OK"
    assert gdb.ask(b"Z3,1000,4") == b""
    assert gdb.ask(b"Z2,1001,4") == b"E01"
    gdb.sock.sendall(packets.frame(b"vCont;c"))
    target.stops.put(StopEvent(StopKind.BREAKPOINT, cpu=1, detail="hwbreak"))
    assert gdb.reply() == b"T05hwbreak:;thread:2;"
    assert ("resume", None) in target.calls
    gdb.sock.sendall(packets.frame(b"vCont;s:2;c"))
    target.stops.put(StopEvent(StopKind.BREAKPOINT, cpu=1))
    assert gdb.reply() == b"T05thread:2;"
    assert ("resume", 1) in target.calls
    assert gdb.ask(b"z1,%x,1" % KERNEL_VA) == b"OK"
    assert gdb.ask(b"z1,%x,1" % KERNEL_VA) == b"E01"


def test_session_ctrl_c_pauses_a_running_guest(
        session: tuple[FakeTarget, Client, threading.Thread]) -> None:
    target, gdb, _ = session
    gdb.sock.sendall(packets.frame(b"c"))
    while not target.running:
        threading.Event().wait(0.01)
    gdb.sock.sendall(b"\x03")
    assert gdb.reply() == b"T02thread:1;"
    assert target.calls.count(("pause", None)) == 2


def test_session_survives_garbage_and_checksum_errors(
        session: tuple[FakeTarget, Client, threading.Thread]) -> None:
    _, gdb, _ = session
    gdb.sock.sendall(b"\x00\xffnoise$qC#00")
    got = gdb._next()
    assert got.event is packets.Event.NACK
    assert gdb.ask(b"qC") == b"QC1"


def test_session_no_ack_mode(session: tuple[FakeTarget, Client, threading.Thread]) -> None:
    _, gdb, _ = session
    assert gdb.ask(b"QStartNoAckMode") == b"OK"
    gdb.sock.sendall(packets.frame(b"qC"))
    got = gdb._next()
    assert got.event is packets.Event.PACKET and got.payload == b"QC1"


def test_detach_and_disconnect_leave_the_guest_running(
        session: tuple[FakeTarget, Client, threading.Thread]) -> None:
    target, gdb, thread = session
    assert gdb.ask(b"Z1,%x,1" % KERNEL_VA) == b"OK"
    assert gdb.ask(b"D") == b"OK"
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert target.running and target.dr7 == 0
    assert target.calls[-1] == ("resume", None)


def test_exited_guest_reports_w(session: tuple[FakeTarget, Client, threading.Thread]) -> None:
    target, gdb, _ = session
    gdb.sock.sendall(packets.frame(b"c"))
    target.stops.put(StopEvent(StopKind.EXITED))
    assert gdb.reply() == b"W00"
    assert gdb.ask(b"g") == b"E02"


# -- real gdb -------------------------------------------------------------------------------------
def test_real_gdb_attaches_reads_and_reconnects() -> None:
    gdb_path = require_tool("gdb", "gdb")
    target = FakeTarget()
    target.hit_on_resume = True
    server = GdbServer(target, parse_listen_address("127.0.0.1:0"))
    server.start()
    try:
        port = server.bound.port
        for _ in range(2):  # the second connection proves the stub takes a reconnect
            target.vcpus[0].set_register(Register.RIP, KERNEL_VA)
            out = subprocess.run(
                [gdb_path, "-nx", "-batch", "-ex", "set confirm off",
                 "-ex", f"target remote 127.0.0.1:{port}",
                 "-ex", "info registers rip rax cr3 fs_base",
                 "-ex", f"x/2gx {KERNEL_VA:#x}",
                 "-ex", "info threads",
                 "-ex", "thread 2", "-ex", "p/x $rip",
                 "-ex", f"hbreak *{KERNEL_VA + 0x40:#x}",
                 "-ex", "continue",
                 "-ex", "p/x $pc",
                 "-ex", "detach"],
                capture_output=True, text=True, timeout=60, check=False)
            text = out.stdout + out.stderr
            assert f"rip            {KERNEL_VA:#x}" in text, text
            assert "0x1122334455667788" in text, text
            first = int.from_bytes(DATA[:8], "little")
            assert f"{first:#018x}" in text, text
            assert "Thread 2" in text and f"{KERNEL_VA + 0x10:#x}" in text, text
            assert "Hardware assisted breakpoint 1" in text, text
            assert f"Thread 1 hit Breakpoint 1, {KERNEL_VA + 0x40:#x}" in text, text
            assert ("debug", 0b01) in target.calls  # DR7 armed slot 0 for the continue
            while not (target.running and target.dr7 == 0):  # detached: cleared, running
                threading.Event().wait(0.05)
            target.calls.clear()
    finally:
        server.close()
