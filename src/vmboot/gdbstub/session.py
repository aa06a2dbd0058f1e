"""One debugger connection: gdb's packets in, replies and stop reports out.

The guest is paused when gdb connects and whenever gdb is not running it; while it runs,
the session watches the socket for Ctrl-C and the target for a stop. Unknown packets get the
empty reply the protocol defines as "not supported"; malformed ones get an ``E`` error; a
checksum error gets ``-`` so gdb retransmits. Nothing gdb sends can end the VM: ``D``, ``k``
and a dropped connection all clear the breakpoints and let the guest run on.
"""

from __future__ import annotations

import logging
import re
import select
import socket
from collections.abc import Callable

from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.errors import GuestMemoryError, PageWalkError
from vmboot.gdbstub import packets
from vmboot.gdbstub.breakpoints import DebugRegisterSlots, WatchKind
from vmboot.gdbstub.packets import Event
from vmboot.gdbstub.registers import (
    REGISTERS,
    decode_register,
    encode_all,
    encode_register,
    read_values,
    target_xml,
    write_value,
)
from vmboot.gdbstub.target import GdbTarget, StopEvent, StopKind
from vmboot.hv.base import VirtualCPU

log = logging.getLogger("vmboot.gdbstub")

POLL_SECONDS = 0.05
MAX_MEMORY_READ = (packets.MAX_PACKET - 8) // 2
"""The most bytes one ``m`` reply carries (two hex digits a byte)."""

_MEMORY_ARGS = re.compile(rb"^([0-9a-fA-F]+),([0-9a-fA-F]+)$")
_Z_ARGS = re.compile(rb"^([0-4]),([0-9a-fA-F]+),([0-9a-fA-F]+)")
_WATCH_KIND = {2: WatchKind.WRITE, 4: WatchKind.ACCESS}

ERR_ARGS = b"E01"
ERR_THREAD = b"E02"
ERR_MEMORY = b"E14"
ERR_NO_SLOT = b"E0e"


class GdbSession:
    """Serves one connected gdb until it detaches, kills, or hangs up."""

    def __init__(self, target: GdbTarget, conn: socket.socket,
                 on_kill: Callable[[], None] | None = None) -> None:
        self.target = target
        self.conn = conn
        self.on_kill = on_kill
        self.reader = packets.PacketReader()
        self.ack_mode = True
        self.running = False
        self.finished = False
        self.g_cpu = 0
        self.last_stop = StopEvent(StopKind.INTERRUPTED)
        self.slots = DebugRegisterSlots()
        self._last_sent = b""

    # -- the loop ------------------------------------------------------------------------------
    def serve(self) -> None:
        self.last_stop = self.target.pause()
        self.g_cpu = self.last_stop.cpu
        try:
            while not self.finished:
                if self.running:
                    stop = self.target.wait_stop(POLL_SECONDS)
                    if stop is not None:
                        self._stopped(stop)
                        continue
                    ready, _, _ = select.select([self.conn], [], [], 0)
                else:
                    ready, _, _ = select.select([self.conn], [], [], POLL_SECONDS)
                if not ready:
                    continue
                data = self.conn.recv(65536)
                if not data:
                    log.info("gdb disconnected")
                    break
                for received in self.reader.feed(data):
                    self._handle(received)
                    if self.finished:
                        break
        except OSError as exc:
            log.info("gdb connection lost: %s", exc)
        finally:
            self._let_go()

    def _let_go(self) -> None:
        """Leave the guest running with no breakpoints of ours, whatever ended the session."""
        if self.last_stop.kind is StopKind.EXITED:
            return
        if self.slots.any_set():
            self.slots.clear()
            self.target.set_debug_registers(0, (0, 0, 0, 0))
        if not self.running:
            self.target.resume()
            self.running = True

    def _stopped(self, stop: StopEvent) -> None:
        self.running = False
        self.last_stop = stop
        if stop.kind is not StopKind.EXITED:
            self.g_cpu = stop.cpu
        self._send(self._stop_reply(stop))

    def _stop_reply(self, stop: StopEvent) -> bytes:
        if stop.kind is StopKind.EXITED:
            return b"W00"
        extra = ""
        if stop.watch_address is not None:
            extra = f"{stop.watch_kind or 'watch'}:{stop.watch_address:x};"
        elif stop.kind is StopKind.BREAKPOINT and stop.detail == "hwbreak":
            extra = "hwbreak:;"
        return f"T{stop.signal:02x}{extra}thread:{stop.cpu + 1:x};".encode()

    # -- wire ----------------------------------------------------------------------------------
    def _send(self, payload: bytes) -> None:
        self._last_sent = packets.frame(payload)
        self.conn.sendall(self._last_sent)

    def _handle(self, received: packets.Received) -> None:
        event = received.event
        if event is Event.INTERRUPT:
            if self.running:
                self._stopped(self.target.pause())
            return
        if event is Event.NACK:
            if self._last_sent:
                self.conn.sendall(self._last_sent)
            return
        if event is Event.ACK:
            return
        if event is Event.BAD_CHECKSUM:
            if self.ack_mode:
                self.conn.sendall(packets.NACK)
            return
        if self.ack_mode:
            self.conn.sendall(packets.ACK)
        payload = packets.expand_run_length(received.payload)
        if self.running and payload[:1] not in (b"?",):
            # gdb sends nothing but Ctrl-C while the target runs (all-stop mode).
            return
        reply = self._dispatch(payload)
        if reply is not None:
            self._send(reply)
        if payload == b"QStartNoAckMode":
            self.ack_mode = False

    # -- commands ------------------------------------------------------------------------------
    def _dispatch(self, p: bytes) -> bytes | None:
        if p == b"?":
            return self._stop_reply(self.last_stop)
        if self.last_stop.kind is StopKind.EXITED and p[:1] not in (b"q", b"Q", b"D", b"k"):
            return ERR_THREAD
        head = p[:1]
        if p.startswith(b"qSupported"):
            return (f"PacketSize={packets.MAX_PACKET:x};qXfer:features:read+;QStartNoAckMode+;"
                    "vContSupported+;hwbreak+").encode()
        if p == b"QStartNoAckMode":
            return b"OK"
        if p.startswith(b"qXfer:features:read:"):
            return self._xfer_features(p[len(b"qXfer:features:read:"):])
        if p == b"qAttached" or p.startswith(b"qAttached:"):
            return b"1"
        if p == b"qC":
            return f"QC{self.g_cpu + 1:x}".encode()
        if p == b"qfThreadInfo":
            return ("m" + ",".join(f"{i + 1:x}" for i in range(len(self.target.vcpus)))).encode()
        if p == b"qsThreadInfo":
            return b"l"
        if p.startswith(b"qThreadExtraInfo,"):
            cpu = self._thread_cpu(p[len(b"qThreadExtraInfo,"):])
            return ERR_THREAD if cpu is None else f"CPU {cpu}".encode().hex().encode()
        if p == b"qOffsets":
            offset = self.target.kernel_offset()
            if offset is None:
                return b""
            # gdb moves .text, .data and .bss of the symbol file by these offsets (other
            # sections, .rodata among them, keep their link addresses).
            return f"Text={offset:x};Data={offset:x};Bss={offset:x}".encode()
        if head == b"H" and len(p) >= 2:
            return self._select_thread(p[1:2], p[2:])
        if head == b"T":
            return b"OK" if self._thread_cpu(p[1:]) is not None else ERR_THREAD
        if p == b"g":
            return encode_all(read_values(self._vcpu()))
        if head == b"G":
            return self._write_all(p[1:])
        if head == b"p":
            return self._read_one(p[1:])
        if head == b"P":
            return self._write_one(p[1:])
        if head == b"m":
            return self._read_memory(p[1:])
        if head == b"M":
            return self._write_memory_hex(p[1:])
        if head == b"X":
            return self._write_memory_binary(p[1:])
        if head in (b"Z", b"z"):
            return self._breakpoint(head == b"Z", p[1:])
        if head in (b"c", b"C"):
            self._resume(None)
            return None
        if head in (b"s", b"S"):
            self._resume(self.g_cpu)
            return None
        if p == b"vCont?":
            return b"vCont;c;C;s;S"
        if p.startswith(b"vCont;"):
            return self._vcont(p[len(b"vCont;"):])
        if head == b"D":
            self.finished = True
            return b"OK"
        if head == b"k":
            self.finished = True
            if self.on_kill is not None:
                self.on_kill()
            return None
        return b""

    def _vcpu(self) -> VirtualCPU:
        return self.target.vcpus[self.g_cpu]

    def _thread_cpu(self, field: bytes) -> int | None:
        try:
            thread = int(field, 16)
        except ValueError:
            return None
        if 1 <= thread <= len(self.target.vcpus):
            return thread - 1
        return None

    def _select_thread(self, op: bytes, field: bytes) -> bytes:
        if field in (b"0", b"-1"):
            return b"OK"
        cpu = self._thread_cpu(field)
        if cpu is None:
            return ERR_THREAD
        if op == b"g":
            self.g_cpu = cpu
        return b"OK"

    def _xfer_features(self, args: bytes) -> bytes:
        name, _, window = args.partition(b":")
        if name != b"target.xml":
            return b"E00"
        try:
            offset_s, length_s = window.split(b",")
            offset, length = int(offset_s, 16), int(length_s, 16)
        except ValueError:
            return ERR_ARGS
        document = target_xml()
        chunk = document[offset:offset + length]
        more = offset + length < len(document)
        return (b"m" if more else b"l") + packets.escape_binary(chunk)

    def _read_one(self, field: bytes) -> bytes:
        try:
            number = int(field, 16)
        except ValueError:
            return ERR_ARGS
        if not 0 <= number < len(REGISTERS):
            return ERR_ARGS
        return encode_register(number, read_values(self._vcpu())[number]).encode()

    def _write_one(self, args: bytes) -> bytes:
        number_s, _, value_s = args.partition(b"=")
        try:
            number = int(number_s, 16)
        except ValueError:
            return ERR_ARGS
        if not 0 <= number < len(REGISTERS):
            return ERR_ARGS
        value = decode_register(number, value_s)
        if value is None:
            return ERR_ARGS
        return b"OK" if write_value(self._vcpu(), number, value) else ERR_ARGS

    def _write_all(self, digits: bytes) -> bytes:
        vcpu = self._vcpu()
        pos = 0
        for number, reg in enumerate(REGISTERS):
            width = reg.bits // 4
            field = digits[pos:pos + width]
            pos += width
            if len(field) < width:
                break
            value = decode_register(number, field)
            if value is not None:
                write_value(vcpu, number, value)
        return b"OK"

    def _memory_args(self, args: bytes) -> tuple[int, int] | None:
        match = _MEMORY_ARGS.match(args)
        if match is None:
            return None
        return int(match.group(1), 16), int(match.group(2), 16)

    def _space(self) -> GuestAddressSpace:
        return GuestAddressSpace.from_vcpu(self._vcpu())

    def _read_memory(self, args: bytes) -> bytes:
        parsed = self._memory_args(args)
        if parsed is None:
            return ERR_ARGS
        address, length = parsed
        length = min(length, MAX_MEMORY_READ)
        space = self._space()
        out = bytearray()
        # Page by page, so a read that runs into an unmapped page returns what precedes it.
        while len(out) < length:
            va = (address + len(out)) & 0xFFFF_FFFF_FFFF_FFFF
            chunk = min(length - len(out), 0x1000 - (va & 0xFFF))
            try:
                out += space.read(va, chunk)
            except (PageWalkError, GuestMemoryError):
                break
        if not out and length:
            return ERR_MEMORY
        return out.hex().encode()

    def _write_memory(self, address: int, data: bytes) -> bytes:
        try:
            self._space().write(address, data)  # whole or not at all
        except (PageWalkError, GuestMemoryError):
            return ERR_MEMORY
        return b"OK"

    def _write_memory_hex(self, args: bytes) -> bytes:
        head, _, digits = args.partition(b":")
        parsed = self._memory_args(head)
        if parsed is None:
            return ERR_ARGS
        address, length = parsed
        try:
            data = bytes.fromhex(digits.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return ERR_ARGS
        if len(data) != length:
            return ERR_ARGS
        return self._write_memory(address, data)

    def _write_memory_binary(self, args: bytes) -> bytes:
        head, sep, body = args.partition(b":")
        parsed = self._memory_args(head)
        if parsed is None or not sep:
            return ERR_ARGS
        address, length = parsed
        data = packets.unescape_binary(body)
        if len(data) != length:
            return ERR_ARGS
        if not data:
            return b"OK"  # gdb probes X support with an empty write
        return self._write_memory(address, data)

    def _breakpoint(self, insert: bool, args: bytes) -> bytes:
        match = _Z_ARGS.match(args)
        if match is None:
            return ERR_ARGS
        kind, address, length = int(match.group(1)), int(match.group(2), 16), int(match.group(3), 16)
        if kind == 3:
            return b""  # x86 debug registers cannot trap reads alone
        watch = _WATCH_KIND.get(kind)
        if watch is not None and not self.target.watchpoints:
            return b""
        # Software breakpoints (Z0) are served with a debug register as well: writing INT3
        # into guest code needs the host to intercept #BP, which not every host can.
        if insert:
            ok = self.slots.insert(address, length, watch)
            if not ok:
                return ERR_NO_SLOT if self.slots.valid(address, length, watch) else ERR_ARGS
        elif not self.slots.remove(address, length, watch):
            return ERR_ARGS
        self.target.set_debug_registers(self.slots.dr7(), self.slots.addresses())
        return b"OK"

    def _resume(self, step_cpu: int | None) -> None:
        self.target.resume(step_cpu)
        self.running = True

    def _vcont(self, actions: bytes) -> bytes | None:
        step_cpu: int | None = None
        for action in actions.split(b";"):
            verb, _, thread = action.partition(b":")
            if verb[:1] in (b"s", b"S"):
                if thread:
                    cpu = self._thread_cpu(thread)
                    if cpu is None:
                        return ERR_THREAD
                    step_cpu = cpu
                else:
                    step_cpu = self.g_cpu
            elif verb[:1] not in (b"c", b"C"):
                return ERR_ARGS
        self._resume(step_cpu)
        return None

