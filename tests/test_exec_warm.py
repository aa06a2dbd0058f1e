"""Warm `vmboot exec`: the first run boots and saves a guest ready for a command; later runs
resume it from the cache and take their command over the status channel."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import requires_kvm, shared_kernel_file
from vmboot.errors import BootConfigError
from vmboot.execute import ExecReason, exec_command
from vmboot.initramfs.reader import read_cpio

TIMEOUT_S = 300


# -- without KVM ---------------------------------------------------------------------------
def test_warm_with_files_is_refused(busybox: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(BootConfigError, match="warm exec resumes a saved guest"):
        exec_command(["true"], kernel=tmp_path / "no-kernel", busybox=busybox, warm=True,
                     files=[(tmp_path / "f", "/f")])


def test_the_warm_agent_image_is_reproducible_and_has_the_agent_as_init(busybox: Path) -> None:
    from vmboot.agent import agent_binary
    from vmboot.execute.image import agent_initramfs
    from vmboot.execute.layout import INIT_PATH, SHELL_PATH

    entries = {e.path: e for e in read_cpio(agent_initramfs([], busybox))}
    assert entries[INIT_PATH].data == agent_binary().read_bytes()
    assert SHELL_PATH in entries
    assert agent_initramfs([], busybox) == agent_initramfs([], busybox)  # the cache key


def test_the_warm_key_covers_what_changes_the_guest(busybox: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    import os

    from vmboot.execute.warm import warm_config, warm_image, warm_key

    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path / "cache"))
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"kernel one")
    image = warm_image(busybox)
    other_image = tmp_path / "other.cpio"
    other_image.write_bytes(image.read_bytes() + b"\0")
    config = warm_config(kernel, image, memory="256M", cpuid_policy="auto",
                         entry="bzimage64", cpus=1)
    key = warm_key(config)
    changed = [dataclasses.replace(config, cpus=2), dataclasses.replace(config, memory="512M"),
               dataclasses.replace(config, cmdline=config.cmdline + " loglevel=3"),
               dataclasses.replace(config, initrd=other_image)]
    assert len({key, *(warm_key(c) for c in changed)}) == 1 + len(changed)
    old = os.stat(kernel)
    kernel.write_bytes(b"kernel two")  # same size; its modification time kept too
    os.utime(kernel, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert warm_key(config) != key


def test_the_warm_image_is_built_once_and_kept_under_its_inputs(
        busybox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm run with its image in the cache builds nothing; another busybox is another
    image."""
    from vmboot.execute import image as image_module
    from vmboot.execute.image import agent_initramfs
    from vmboot.execute.warm import warm_image

    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path / "cache"))
    first = warm_image(busybox)
    assert first.read_bytes() == agent_initramfs([], busybox)
    built: list[Path] = []
    monkeypatch.setattr(image_module, "agent_initramfs",
                        lambda files, bb: built.append(bb) or b"")  # type: ignore[func-returns-value]
    assert warm_image(busybox) == first and built == []
    other = tmp_path / "busybox2"
    other.write_bytes(busybox.read_bytes() + b"\0")
    second = warm_image(other)
    assert second != first and built == [other]


# -- real Linux ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("warm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMBOOT_CACHE", str(path))
        yield path


@pytest.mark.slow
@requires_kvm
def test_warm_runs_share_one_saved_guest(cache: Path, busybox: Path) -> None:
    kernel = shared_kernel_file("tiny-bzImage")
    first = exec_command(["sh", "-c", "echo out; echo err >&2; exit 7"], kernel=kernel,
                         busybox=busybox, warm=True, timeout=TIMEOUT_S)
    assert (first.reason, first.exit_status, first.stdout, first.stderr) == \
        (ExecReason.EXITED, 7, b"out\n", b"err\n"), first.detail
    (snapshot,) = (cache / "snapshots").glob("*.snap")  # beside it: its use lock
    digest = hashlib.sha256(snapshot.read_bytes()).hexdigest()
    second = exec_command(["sh", "-c", "echo first\necho 'sec ond'; ls /tmp/left 2>&1; touch /tmp/left"],
                          kernel=kernel, busybox=busybox, warm=True, timeout=TIMEOUT_S)
    assert second.reason is ExecReason.EXITED and second.exit_status == 0, second.detail
    assert second.stdout == b"first\nsec ond\nls: /tmp/left: No such file or directory\n"
    third = exec_command(["ls", "/tmp"], kernel=kernel, busybox=busybox, warm=True,
                         env={"PATH": "/bin"}, timeout=TIMEOUT_S)
    assert third.reason is ExecReason.EXITED and third.stdout == b"", third.detail  # fresh guest
    assert [p.name for p in (cache / "snapshots").glob("*.snap")] == [snapshot.name]
    assert hashlib.sha256(snapshot.read_bytes()).hexdigest() == digest
    t = second.timings
    # the resume message leaves with the command; the agent answers it, then starts the command
    phases = [t.initramfs, t.restored, t.command_sent, t.agent_ready, t.command_start,
              t.first_output, t.command_exit, t.vm_exit]
    assert None not in phases and phases == sorted(phases), t  # type: ignore[type-var]
    assert t.vm_exit == t.total and t.origin is not None
    assert third.timings.first_output is None  # ls wrote nothing
    print(f"\nwarm exec: first run (boot and save) {first.timings.total:.1f} s, then "
          f"{second.timings.total:.2f} s and {third.timings.total:.2f} s")


@pytest.mark.parametrize("device", ["vsock", "net"])
def test_warm_with_virtio_devices_is_refused_before_reading_the_kernel(
        busybox: Path, tmp_path: Path, device: str) -> None:
    from vmboot.devices.virtio.share import Share
    from vmboot.devices.virtio.vsock_host import VsockConfig
    from vmboot.net.config import NetConfig

    given: dict[str, object] = {"vsock": VsockConfig(), "shares": [Share(tmp_path, "t")],
                                "net": NetConfig("user")}
    with pytest.raises(BootConfigError, match=rf"^{device}: a warm exec resumes one saved guest "
                                              "for every run, which has no such device"):
        exec_command(["true"], kernel=tmp_path / "no-kernel", busybox=busybox, warm=True,
                     **{device: given[device]})  # type: ignore[arg-type]


@pytest.mark.slow
@requires_kvm
def test_a_warm_guest_mounts_its_share_after_the_restore(cache: Path, busybox: Path,
                                                        tmp_path: Path) -> None:
    """The share is saved unused; each restore starts a fresh virtiofsd the guest then
    mounts. A guest that has mounted it cannot be saved: the message says why."""
    from vmboot.config import DEFAULT_CPUID_POLICY, DEFAULT_ENTRY, DEFAULT_MEMORY
    from vmboot.devices.virtio.share import Share
    from vmboot.errors import DeviceStateError
    from vmboot.execute.warm import warm_config, warm_image, warm_snapshot_path
    from vmboot.vmm.machine import Machine

    kernel = shared_kernel_file("tiny-smp-bzImage")  # the kernel with virtio-fs
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("from the host\n")
    shares = [Share(data, "data")]
    mount = ["sh", "-c", "mkdir -p /mnt && mount -t virtiofs data /mnt && cat /mnt/f"]
    for _ in range(2):  # the first run boots and saves, and both restore
        run = exec_command(mount, kernel=kernel, busybox=busybox, warm=True, shares=shares,
                           timeout=TIMEOUT_S)
        assert (run.reason, run.exit_status, run.stdout) == \
            (ExecReason.EXITED, 0, b"from the host\n"), (run.detail, run.stderr)
    config = warm_config(kernel, warm_image(busybox), memory=DEFAULT_MEMORY,
                         cpuid_policy=DEFAULT_CPUID_POLICY, entry=DEFAULT_ENTRY, cpus=1,
                         shares=shares)  # exec_command's defaults
    snapshot = warm_snapshot_path(config)
    assert snapshot.exists()
    machine = Machine.from_config(config, on_panic=None)
    with machine.restore(snapshot):
        assert machine.exec(["/bin/sh", *mount[1:]], env={}, timeout=TIMEOUT_S).exit_status == 0
        with pytest.raises(DeviceStateError, match=r"virtio-fs data: the guest has used the "
                                                   r"share .*snapshot before the guest mounts"):
            machine.snapshot(tmp_path / "used.snap")
    assert not (tmp_path / "used.snap").exists()
