"""``vmboot trace CORE``: the kernel stack of every CPU of an ELF core, offline."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vmboot.errors import UsageError

DESCRIPTION = """\
Read an ELF kernel core (a vmcore from `vmboot run --dump-on`, QEMU's dump-guest-memory,
virtme-ng's `vng --dump`, kdump's /proc/vmcore) and print a symbolised kernel stack trace
for each of its CPUs, as the kernel prints an oops. Symbols come from --vmlinux, --system-map
or the kallsyms inside --kernel (no debug package needed); unwinding uses ORC when the
kernel has it, else frame pointers. The KASLR slide comes from the core's VMCOREINFO
(KERNELOFFSET), else from the guest's page tables.
"""

EPILOG = """\
examples:
  vmboot trace dumps/vmcore.1.panic --kernel bzImage
  vmboot trace qemu.core --kernel bzImage --vmlinux vmlinux --json

exit status: 0 when at least one CPU was traced, 1 otherwise (the messages say why).
"""

EXIT_OK = 0
EXIT_NO_TRACE = 1
USER_MODE_CPL = 3


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "trace",
        help="kernel stack traces of every CPU of a vmcore or QEMU dump",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("core", metavar="CORE", help="an ELF core file")
    p.add_argument("--kernel", metavar="IMAGE", help="the bzImage or vmlinux that ran")
    p.add_argument("--vmlinux", metavar="FILE", help="a vmlinux with .symtab (and ORC)")
    p.add_argument("--system-map", metavar="FILE", help="a System.map")
    p.add_argument("--max-frames", metavar="N", type=int, default=32,
                   help="frames per CPU (default: 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    if not (args.kernel or args.vmlinux or args.system_map):
        raise UsageError("trace: give the kernel's symbols: --kernel IMAGE, --vmlinux FILE or "
                         "--system-map FILE")
    from vmboot.debug import capture_stack_trace, format_trace
    from vmboot.debug.core_reader import read_core
    from vmboot.debug.frames import StackFrame
    from vmboot.errors import DebugError, StackWalkError
    from vmboot.hv.registers import GENERAL_REGISTERS, Register, SegmentRegister
    from vmboot.x86.cr import CR0_PG

    results: list[dict[str, Any]] = []
    with read_core(args.core) as core:
        slide = core.kaslr_offset
        for vcpu in core.vm.vcpus:
            entry: dict[str, Any] = {"cpu": vcpu.index}
            regs = vcpu.get_registers(GENERAL_REGISTERS)
            if not vcpu.get_register(Register.CR0) & CR0_PG:
                entry["error"] = (f"paging is off (RIP {regs[Register.RIP]:#x}): the CPU was "
                                  f"never started, or runs firmware or boot code")
                results.append(entry)
                continue
            if vcpu.get_segment(SegmentRegister.CS).selector & 3 == USER_MODE_CPL:
                entry["error"] = f"in user mode at RIP {regs[Register.RIP]:#x} (no kernel stack)"
                results.append(entry)
                continue
            try:
                frames = capture_stack_trace(vcpu, vmlinux=args.vmlinux,
                                             system_map=args.system_map, kernel=args.kernel,
                                             max_frames=args.max_frames,
                                             slide="auto" if slide is None else slide)
            except StackWalkError as e:
                entry["error"] = str(e)
                entry["frames"] = e.frames
            except DebugError as e:
                entry["error"] = str(e)
            else:
                entry["frames"] = frames
            frames_done: list[StackFrame] = [f for f in entry.get("frames", [])
                                             if isinstance(f, StackFrame)]
            entry["frames"] = frames_done
            entry["text"] = format_trace(frames_done, regs)
            results.append(entry)
        notes = list(core.notes)
        writer = core.writer
    traced = sum(1 for r in results if r.get("frames"))
    if args.json:
        print(json.dumps({"core": args.core, "writer": writer, "kaslr_offset": slide,
                          "notes": notes, "cpus": [
                              {"cpu": r["cpu"], "error": r.get("error"),
                               "frames": [{"pc": f.pc, "symbol": f.symbol, "offset": f.offset,
                                           "reliable": f.reliable}
                                          for f in r.get("frames", [])]}
                              for r in results]}, indent=2))
        return EXIT_OK if traced else EXIT_NO_TRACE
    for note in notes:
        print(f"vmboot trace: {note}", file=sys.stderr)
    for r in results:
        print(f"CPU {r['cpu']}:")
        if "text" in r:
            print(r["text"], end="" if r["text"].endswith("\n") else "\n")
        if r.get("error"):
            print(f"  ({r['error']})")
    return EXIT_OK if traced else EXIT_NO_TRACE
