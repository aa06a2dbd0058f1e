"""A restored guest running a command: ``vmboot exec --warm`` against QEMU microvm's
``-incoming`` of the same guest, each timed from process start, in one run.

The guest is the one warm exec saves: the tiny-smp kernel, the agent image
(:func:`vmboot.execute.image.agent_initramfs`: the guest agent as init, the busybox vmboot
ships), the warm command line, 256 MiB, one vCPU, the agent on a virtio-console port
named ``vmboot.agent``.

- vmboot: ``vmboot exec --warm --kernel tiny-smp-bzImage --json -- echo hi`` as a new
  process (the first run, untimed, boots and saves the guest into a temporary cache);
- QEMU: ``qemu-system-x86_64 -M microvm,acpi=off`` under KVM (the command line of the
  other QEMU benches, :data:`vmproc.QEMU_KVM`) with a virtio-serial port of that name on
  a UNIX socket, booted once until the agent greets and has run one command (as warm exec
  saves it), saved through QMP ``migrate "exec:cat > FILE"``; then each run starts
  ``qemu-system-x86_64 ... -incoming "exec:cat FILE"``, connects to the port's socket and
  does what ``vmboot exec --warm`` does: the resume message (wall time, entropy) and
  ``echo hi`` in one write, through the agent (the same frames and the same client,
  :mod:`vmboot.agent.client`).

Both are timed from just before the process is spawned to the agent's STARTED answer (the
command is exec'd) and to its exit status; the two kinds of run are interleaved.

Run: ``python bench/qemu_restore.py [--runs N]``. Writes bench/results/qemu_restore.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, compile_bytecode, fmt_s, print_table, summary_row, write_results
from vmproc import KERNELS, QEMU_KVM
from warm_exec import run_exec

from vmboot.agent.client import AgentClient
from vmboot.execute.default_guest import shipped_busybox
from vmboot.execute.image import agent_initramfs
from vmboot.execute.warm import READY_PROBE, shell_argv, warm_cmdline
from vmboot.vmm.guest_agent import AGENT_PORT

REPO = Path(__file__).resolve().parent.parent
KERNEL = "tiny-smp-bzImage"
MEMORY_MIB = 256
COMMAND = ["echo", "hi"]
BOOT_TIMEOUT = 900.0
RUN_TIMEOUT = 300.0
PEER = "QEMU microvm (KVM) -incoming"


def qemu_command(kernel: Path, initrd: Path, agent_sock: Path, qmp_sock: Path,
                 serial: Path) -> list[str]:
    return [*QEMU_KVM, "-M", "microvm,acpi=off", "-m", str(MEMORY_MIB), "-smp", "1",
            "-global", "virtio-mmio.force-legacy=false",
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=agent,path={agent_sock},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", warm_cmdline(),
            "-serial", f"file:{serial}", "-monitor", "none", "-display", "none",
            "-qmp", f"unix:{qmp_sock},server=on,wait=off"]


def connect(path: Path, deadline: float, proc: subprocess.Popen[bytes]) -> socket.socket:
    """A connection to QEMU's UNIX socket ``path`` once it listens."""
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if proc.poll() is not None:
                raise SystemExit(f"QEMU exited with status {proc.returncode} before {path} "
                                 "listened") from None
            if time.monotonic() > deadline:
                raise SystemExit(f"QEMU: nothing listens on {path}") from None
            time.sleep(0.001)


class Qmp:
    """QEMU's monitor: one command at a time, events skipped."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lines = sock.makefile("r")
        self.lines.readline()  # the greeting
        self.command("qmp_capabilities")

    def command(self, name: str, **arguments: object) -> Any:
        message: dict[str, object] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply: dict[str, Any] = json.loads(self.lines.readline())
            if "error" in reply:
                raise SystemExit(f"QMP {name}: {reply['error']}")
            if "return" in reply:
                return reply["return"]


@contextlib.contextmanager
def qemu(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # microvm has no i8042: a reset does not end it
        proc.wait()


def save_qemu_guest(base: list[str], work: Path, state: Path) -> float:
    """Boot the guest in QEMU until its agent has run one command, then migrate it into
    ``state``; the seconds the boot took."""
    t0 = time.monotonic()
    with qemu(base) as proc:
        deadline = t0 + BOOT_TIMEOUT
        agent = AgentClient(connect(work / "agent.sock", deadline, proc))
        try:
            agent.wait_ready(BOOT_TIMEOUT)
        except Exception as e:
            console = (work / "serial.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"QEMU: the agent did not greet ({e}); console:\n{console}") from None
        done = agent.run(list(READY_PROBE), env={}, timeout=BOOT_TIMEOUT)
        if done.exit_status != 0:
            raise SystemExit(f"QEMU: {READY_PROBE} in the guest: {done}")
        booted = time.monotonic() - t0
        qmp = Qmp(connect(work / "qmp.sock", deadline, proc))
        qmp.command("migrate", uri=f"exec:cat > {state}")
        while (status := qmp.command("query-migrate").get("status")) not in ("completed",):
            if status in ("failed", "cancelled"):
                raise SystemExit(f"QEMU: migrate to {state}: {status}")
            time.sleep(0.05)
        agent.close()
    return booted


def restore_qemu(base: list[str], work: Path, state: Path) -> dict[str, float]:
    """One ``-incoming`` run: seconds from spawn to the resume answer, the command's STARTED
    and its exit status."""
    (work / "agent.sock").unlink(missing_ok=True)
    started = time.monotonic()
    with qemu([*base, "-incoming", f"exec:cat {state}"]) as proc:
        deadline = started + RUN_TIMEOUT
        agent = AgentClient(connect(work / "agent.sock", deadline, proc))
        agent.send_resumed(RUN_TIMEOUT)  # as warm exec: it leaves with the command
        result = agent.run(shell_argv(COMMAND), env={}, timeout=RUN_TIMEOUT)
        exited = time.monotonic()
        agent.close()
        if (result.stdout != b"hi\n" or result.exit_status != 0 or result.started_at is None
                or agent.answered_at is None):
            raise SystemExit(f"QEMU restored guest: {result}")
    return {"agent_ready": agent.answered_at - started,
            "command_start": result.started_at - started,
            "command_exit": exited - started}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    args = ap.parse_args()
    kernel = KERNELS / KERNEL
    busybox = shipped_busybox()
    if busybox is None:
        raise SystemExit("this checkout has no shipped busybox (src/vmboot/guest_image/busybox)")
    bytecode = compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="vmboot-bench-qemu-restore-") as tmp:
        work = Path(tmp)
        initrd = work / "agent.cpio"
        initrd.write_bytes(agent_initramfs([], busybox))
        base = qemu_command(kernel, initrd, work / "agent.sock", work / "qmp.sock",
                            work / "serial.log")
        state = work / "qemu.state"
        qemu_boot = save_qemu_guest(base, work, state)
        env = {**os.environ, "VMBOOT_CACHE": str(work / "cache"),
               "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        vm_args = ["--kernel", str(kernel), "-m", f"{MEMORY_MIB}M"]
        vmboot_boot = run_exec(vm_args, True, env)["total"]  # boots and saves the warm guest
        ours: list[dict[str, float]] = []
        theirs: list[dict[str, float]] = []
        for _ in range(args.runs):
            ours.append(run_exec(vm_args, True, env))
            theirs.append(restore_qemu(base, work, state))
        state_bytes = state.stat().st_size
    phases = ("agent_ready", "command_start", "command_exit")
    table = [[name, fmt_s(statistics.median(r[name] for r in ours)),
              fmt_s(statistics.median(r[name] for r in theirs))] for name in phases]
    print_table([["boot and save (1 run)", fmt_s(vmboot_boot), fmt_s(qemu_boot)], *table],
                ["from process start (median)", "vmboot exec --warm", PEER])
    command = f"python bench/qemu_restore.py --runs {args.runs}"
    ready = (Timing.of([r["agent_ready"] for r in ours]),
             Timing.of([r["agent_ready"] for r in theirs]))
    start = (Timing.of([r["command_start"] for r in ours]),
             Timing.of([r["command_start"] for r in theirs]))
    end = (Timing.of([r["command_exit"] for r in ours]),
           Timing.of([r["command_exit"] for r in theirs]))
    summary = [
        summary_row("restored guest: process start to the agent's resume answer", *ready[:1],
                    PEER, ready[1], "-", command),
        summary_row("restored guest: process start to the command exec'd (STARTED)", start[0],
                    PEER, start[1], "-", command),
        summary_row("restored guest: process start to `echo hi`'s exit status", end[0],
                    PEER, end[1], "-", command),
    ]
    out = write_results("qemu_restore", {
        "command": command, "kernel": KERNEL, "memory_mib": MEMORY_MIB, "bytecode": bytecode,
        "qemu": " ".join(QEMU_KVM), "qemu_state_bytes": state_bytes,
        "boot_and_save_s": {"vmboot": vmboot_boot, "qemu": qemu_boot},
        "vmboot_runs": ours, "qemu_runs": theirs, "summary": summary})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
