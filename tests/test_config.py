"""MachineConfig: validation of every field before anything is built, one vocabulary for the
CLI and the API, and Machine's two ways of being made (keywords, from_config)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from bzimage_builder import build_bzimage
from conftest import requires_kvm
from elf_builder import simple_kernel
from vmboot.cli.main import build_parser
from vmboot.config import (
    CPUID_POLICIES,
    DEFAULT_CMDLINE,
    DEFAULT_CONSOLE_DEVICE,
    DEFAULT_MEMORY,
    DEFAULT_VIRTIO_CMDLINE,
    DEFAULT_VIRTIO_NOTIFICATIONS,
    DUMP_TRIGGERS,
    ENTRIES,
    MAX_CPUS,
    MIN_CPUS,
    MachineConfig,
)
from vmboot.devices.serial import COM1, COM2
from vmboot.devices.virtio.machine_devices import CONSOLE_CHOICES
from vmboot.devices.virtio.setup import NOTIFICATION_CHOICES
from vmboot.devices.virtio.share import ROOT_TAG, Share
from vmboot.devices.virtio.vsock_host import VsockConfig
from vmboot.errors import BootConfigError, UsageError, VmbootError
from vmboot.linux import BzImage, ElfKernel, Kernel, KernelFormat, KernelImage, load_kernel
from vmboot.units import parse_size
from vmboot.vmm.machine import Machine


def test_defaults_and_memory_kept_in_bytes() -> None:
    cfg = MachineConfig("bzImage")
    assert cfg.memory == cfg.memory_bytes == parse_size(DEFAULT_MEMORY)
    assert cfg.cmdline == DEFAULT_CMDLINE
    assert cfg.cpus == MIN_CPUS == 1
    assert cfg.serial_ports == (COM1,)
    assert MachineConfig("bzImage", memory="64M").memory == 64 << 20


def test_config_is_frozen() -> None:
    cfg = MachineConfig("bzImage")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cpus = 2  # type: ignore[misc]


@pytest.mark.parametrize("cpus", [MIN_CPUS, 2, MAX_CPUS])
def test_cpus_in_range_accepted(cpus: int) -> None:
    assert MachineConfig("bzImage", cpus=cpus).cpus == cpus


@pytest.mark.parametrize("cpus", [0, -1, MAX_CPUS + 1, True, 1.5, "2"])
def test_cpus_out_of_range_named_with_value_and_limits(cpus: object) -> None:
    with pytest.raises(UsageError) as info:
        MachineConfig("bzImage", cpus=cpus)  # type: ignore[arg-type]
    msg = str(info.value)
    assert msg.startswith("cpus: ") and repr(cpus) in msg
    assert f"{MIN_CPUS}..{MAX_CPUS}" in msg


@pytest.mark.parametrize(("field", "value"), [
    ("memory", "lots"), ("cpuid_policy", "fastest"), ("entry", "bios"), ("serial_ports", ()),
    ("capture_limit", -1), ("timeout", 0), ("timeout", -3.0),
])
def test_each_field_is_validated_and_named(field: str, value: object) -> None:
    with pytest.raises(UsageError) as info:
        MachineConfig("bzImage", **{field: value})  # type: ignore[arg-type]
    assert str(info.value).startswith(f"{field}: ")


def test_cli_choices_come_from_the_config_vocabulary() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run, exec_ = sub.choices["run"], sub.choices["exec"]
    by_dest = {a.dest: a for a in run._actions}
    assert tuple(by_dest["cpuid"].choices or ()) == CPUID_POLICIES
    assert tuple(by_dest["entry"].choices or ()) == ENTRIES
    assert by_dest["append"].default == DEFAULT_CMDLINE
    assert by_dest["memory"].default == DEFAULT_MEMORY
    exec_entry = next(a for a in exec_._actions if a.dest == "entry")
    assert tuple(exec_entry.choices or ()) == ENTRIES


def test_machine_keywords_build_the_same_config_as_from_config() -> None:
    kernel = build_bzimage()
    by_keywords = Machine(kernel, initrd=b"x", memory="64M", cmdline="quiet", entry="bzimage64")
    cfg = MachineConfig(kernel, initrd=b"x", memory="64M", cmdline="quiet", entry="bzimage64")
    from_config = Machine.from_config(cfg)
    assert by_keywords.config == from_config.config == cfg
    assert by_keywords.memory_bytes == from_config.memory_bytes == 64 << 20


def test_machine_keywords_are_validated_before_anything_is_built() -> None:
    with pytest.raises(UsageError, match="cpuid_policy: 'fastest'"):
        Machine(build_bzimage(), cpuid_policy="fastest")
    with pytest.raises(UsageError, match="cpus: 33"):
        Machine(build_bzimage(), cpus=33)


def test_serial_outputs_reach_the_configured_ports() -> None:
    from vmboot.devices.console import ConsoleOutput

    out = ConsoleOutput(None)
    cfg = MachineConfig(build_bzimage(), serial_ports=(COM1, COM2))
    machine = Machine.from_config(cfg, serial_outputs={COM2.name: out})
    serials = machine.platform.serials
    assert set(serials) == {COM1.name, COM2.name}
    assert serials[COM2.name].output is out
    assert serials[COM1.name].output is machine.console


@requires_kvm
def test_several_vcpus_are_made_when_started() -> None:
    with Machine(build_bzimage(), memory="32M", cpus=2) as machine:
        assert [v.index for v in machine.vcpus] == [0, 1]
        assert machine.vcpu_set is not None and len(machine.vcpu_set) == 2


@pytest.mark.parametrize(("field", "value"), [
    ("console_device", "vga"), ("virtio_notifications", "polling"), ("dump_on", "crash"),
])
def test_feature_fields_are_validated_and_named(field: str, value: object) -> None:
    with pytest.raises(UsageError) as info:
        MachineConfig("bzImage", dump_dir="dumps", **{field: value})  # type: ignore[arg-type]
    assert str(info.value).startswith(f"{field}: ")


def test_dump_triggers_are_kept_as_a_sorted_tuple_and_need_a_directory() -> None:
    assert MachineConfig("bzImage", dump_on="timeout,panic",  # type: ignore[arg-type]
                         dump_dir="d").dump_on == ("panic", "timeout")
    assert set(MachineConfig("bzImage", dump_on=DUMP_TRIGGERS, dump_dir="d").dump_on) \
        == set(DUMP_TRIGGERS)
    with pytest.raises(UsageError, match=r"dump_on=panic needs dump_dir \(--dump-dir DIR\)"):
        MachineConfig("bzImage", dump_on=("panic",))


def test_feature_keywords_of_machine_land_in_its_config() -> None:
    kernel = build_bzimage()
    by_keywords = Machine(kernel, cpus=2, dump_on="oops", dump_dir="d", console_device="virtio",
                          virtio_rng=True, virtio_notifications="exits")
    cfg = MachineConfig(kernel, cpus=2, dump_on=("oops",), dump_dir="d",
                        console_device="virtio", virtio_rng=True, virtio_notifications="exits")
    assert by_keywords.config == Machine.from_config(cfg).config == cfg
    assert by_keywords.cmdline == DEFAULT_VIRTIO_CMDLINE  # the default line, for hvc0


def test_cli_feature_choices_come_from_the_config_vocabulary() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    by_dest = {a.dest: a for a in sub.choices["run"]._actions}
    assert tuple(by_dest["console"].choices or ()) == CONSOLE_CHOICES
    assert by_dest["console"].default == DEFAULT_CONSOLE_DEVICE
    assert tuple(by_dest["virtio_notify"].choices or ()) == NOTIFICATION_CHOICES
    assert by_dest["virtio_notify"].default == DEFAULT_VIRTIO_NOTIFICATIONS
    assert by_dest["cpus"].default == MIN_CPUS


def test_both_kernel_kinds_satisfy_the_kernel_protocol() -> None:
    bz = load_kernel(build_bzimage())
    elf = load_kernel(simple_kernel())
    assert isinstance(bz, BzImage) and isinstance(elf, ElfKernel)
    for kernel, kind in ((bz, KernelFormat.BZIMAGE), (elf, KernelFormat.VMLINUX)):
        assert isinstance(kernel, Kernel)
        assert kernel.format is kind
    assert not isinstance(b"bytes", Kernel)


def test_old_bzimage_name_is_an_alias() -> None:
    assert KernelImage is BzImage


@pytest.mark.parametrize(("field", "value", "prefix"), [
    ("memory", "1M", "memory size: "), ("memory", 0x200400, "memory size: "),
    ("cmdline", "console=ttyS0\0quiet", "cmdline: "),
])
def test_memory_range_and_cmdline_are_validated_when_made(field: str, value: object,
                                                           prefix: str) -> None:
    with pytest.raises(VmbootError) as info:
        MachineConfig("bzImage", **{field: value})  # type: ignore[arg-type]
    assert str(info.value).startswith(prefix)


def test_device_keywords_become_config_fields(tmp_path: Path) -> None:
    kernel = build_bzimage()
    vsock = VsockConfig(cid=7)
    share = Share(tmp_path, "data")
    machine = Machine(kernel, vsock=vsock, agent=True)
    try:
        assert machine.config == MachineConfig(kernel, vsock=vsock, agent=True)
        assert machine.vsock is not None and machine.vsock in machine.virtio.devices
        assert machine.virtio.console_port is None  # the agent's port is not the console
        assert len(machine.virtio.devices) == 2  # vsock, and the console device for the agent
    finally:
        machine.close()
    assert MachineConfig(kernel, shares=[share]).shares == (share,)  # type: ignore[arg-type]


def test_device_fields_are_checked_when_the_config_is_made(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        MachineConfig("bzImage", shares=(Share(tmp_path / "absent", "x"),))
    with pytest.raises(UsageError, match="'same' is already used"):
        MachineConfig("bzImage", shares=(Share(tmp_path, "same"), Share(tmp_path, "same")))
    with pytest.raises(UsageError, match="drop the initrd"):
        MachineConfig("bzImage", initrd=b"cpio", rootfs="/")
    with pytest.raises(UsageError, match="only '/'"):
        MachineConfig("bzImage", rootfs=tmp_path)
    with pytest.raises(UsageError, match="already used"):
        MachineConfig("bzImage", rootfs="/", shares=(Share(tmp_path, ROOT_TAG),))
    with pytest.raises(BootConfigError, match="vsock cid: 2 is outside"):
        MachineConfig("bzImage", vsock=VsockConfig(cid=2))
