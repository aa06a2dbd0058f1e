"""The ctypes layouts and ioctl numbers in vmboot.hv.kvm.abi against the installed C headers.

A C program is generated from abi.py itself (every checked struct, every field, every
KVM_* constant), compiled with gcc against <linux/kvm.h>, and its output compared.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest

from conftest import require, require_tool
from vmboot.hv.kvm import abi

HEADER = Path("/usr/include/linux/kvm.h")

KVM_RUN_FIELDS: dict[str, int] = {
    "request_interrupt_window": abi.KvmRun.request_interrupt_window.offset,
    "immediate_exit": abi.RUN_IMMEDIATE_EXIT,
    "exit_reason": abi.RUN_EXIT_REASON,
    "if_flag": abi.RUN_IF_FLAG,
    "cr8": abi.KvmRun.cr8.offset,
    "apic_base": abi.KvmRun.apic_base.offset,
    "hw": abi.RUN_EXIT_UNION,
    "io.direction": abi.RUN_IO,
    "io.size": abi.RUN_IO + abi.KvmRunIo.size.offset,
    "io.port": abi.RUN_IO + abi.KvmRunIo.port.offset,
    "io.count": abi.RUN_IO + abi.KvmRunIo.count.offset,
    "io.data_offset": abi.RUN_IO + abi.KvmRunIo.data_offset.offset,
    "mmio.phys_addr": abi.RUN_MMIO,
    "mmio.data": abi.RUN_MMIO_DATA,
    "mmio.len": abi.RUN_MMIO + abi.KvmRunMmio.len.offset,
    "mmio.is_write": abi.RUN_MMIO + abi.KvmRunMmio.is_write.offset,
    "fail_entry.hardware_entry_failure_reason": abi.RUN_FAIL_ENTRY,
    "fail_entry.cpu": abi.RUN_FAIL_ENTRY + abi.KvmRunFailEntry.cpu.offset,
    "internal.suberror": abi.RUN_INTERNAL,
    "internal.ndata": abi.RUN_INTERNAL + abi.KvmRunInternal.ndata.offset,
    "internal.data": abi.RUN_INTERNAL_DATA,
    "emulation_failure.flags": abi.RUN_EXIT_UNION + abi.KvmRunEmulationFailure.flags.offset,
    "emulation_failure.insn_size": abi.RUN_EMULATION_INSN,
    "emulation_failure.insn_bytes": abi.RUN_EMULATION_INSN + 1,
    "system_event.type": abi.RUN_SYSTEM_EVENT,
    "system_event.ndata": abi.RUN_SYSTEM_EVENT + abi.KvmRunSystemEvent.ndata.offset,
    "debug.arch.exception": abi.RUN_DEBUG,
    "debug.arch.pc": abi.RUN_DEBUG + abi.KvmDebugExitArch.pc.offset,
    "debug.arch.dr6": abi.RUN_DEBUG + abi.KvmDebugExitArch.dr6.offset,
    "debug.arch.dr7": abi.RUN_DEBUG + abi.KvmDebugExitArch.dr7.offset,
    "kvm_valid_regs": abi.KvmRun.kvm_valid_regs.offset,
}


def _constants() -> dict[str, int]:
    return {name: value for name, value in vars(abi).items()
            if (name.startswith("KVM_") or name == "KVMIO") and isinstance(value, int)
            and not isinstance(value, bool)}


def _program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for cname, ctype in abi.CHECKED_STRUCTS.items():
        lines.append(f'printf("sizeof {cname} %zu\\n", sizeof(struct {cname}));')
        for field, *_ in ctype._fields_:  # type: ignore[attr-defined]
            lines.append(f'printf("offsetof {cname}.{field} %zu\\n", offsetof(struct {cname}, {field}));')
    for field in KVM_RUN_FIELDS:
        lines.append(f'printf("offsetof kvm_run.{field} %zu\\n", offsetof(struct kvm_run, {field}));')
    for name in _constants():
        lines.append(f'printf("const {name} %llu\\n", (unsigned long long)({name}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    require_tool("gcc", "gcc")
    require(HEADER.exists(), str(HEADER), "apt-get install linux-libc-dev")
    tmp = tmp_path_factory.mktemp("kvm-abi")
    src, exe = tmp / "abi.c", tmp / "abi"
    src.write_text(_program())
    proc = subprocess.run(["gcc", "-o", str(exe), str(src)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    facts = {}
    for line in out.splitlines():
        kind, name, value = line.split()
        facts[f"{kind} {name}"] = int(value)
    return facts


@pytest.mark.parametrize("cname", sorted(abi.CHECKED_STRUCTS))
def test_struct_layout_matches_header(c_facts: dict[str, int], cname: str) -> None:
    ctype = abi.CHECKED_STRUCTS[cname]
    assert ctypes.sizeof(ctype) == c_facts[f"sizeof {cname}"]
    for field, *_ in ctype._fields_:  # type: ignore[attr-defined]
        assert getattr(ctype, field).offset == c_facts[f"offsetof {cname}.{field}"], field


@pytest.mark.parametrize("field", sorted(KVM_RUN_FIELDS))
def test_kvm_run_offsets_match_header(c_facts: dict[str, int], field: str) -> None:
    assert KVM_RUN_FIELDS[field] == c_facts[f"offsetof kvm_run.{field}"]


def test_kvm_run_exit_union_is_256_bytes(c_facts: dict[str, int]) -> None:
    size = c_facts["offsetof kvm_run.kvm_valid_regs"] - c_facts["offsetof kvm_run.hw"]
    assert size == abi.RUN_EXIT_UNION_SIZE == ctypes.sizeof(abi.KvmRunExit)


@pytest.mark.parametrize("name", sorted(_constants()))
def test_constant_matches_header(c_facts: dict[str, int], name: str) -> None:
    assert _constants()[name] == c_facts[f"const {name}"]


def test_every_ioctl_is_checked() -> None:
    """Guard against a new ioctl in abi.py that the generated program would not cover."""
    names = _constants()
    for ioctl in ("KVM_RUN", "KVM_GET_REGS", "KVM_SET_SREGS", "KVM_GET_MSRS", "KVM_SET_CPUID2",
                  "KVM_GET_SUPPORTED_CPUID", "KVM_SET_USER_MEMORY_REGION", "KVM_IRQ_LINE",
                  "KVM_CREATE_PIT2", "KVM_SET_IDENTITY_MAP_ADDR", "KVM_GET_LAPIC", "KVM_SET_FPU",
                  "KVM_IOEVENTFD", "KVM_IRQFD", "KVM_GET_TSC_KHZ"):
        assert ioctl in names


def test_sized_variants_extend_the_headers() -> None:
    assert ctypes.sizeof(abi.kvm_cpuid2_type(3)) == ctypes.sizeof(abi.KvmCpuid2) + 3 * ctypes.sizeof(
        abi.KvmCpuidEntry2)
    assert ctypes.sizeof(abi.kvm_msrs_type(2)) == ctypes.sizeof(abi.KvmMsrs) + 2 * ctypes.sizeof(
        abi.KvmMsrEntry)
    assert abi.kvm_msrs_type(2) is abi.kvm_msrs_type(2)
