"""What `vmboot run` imports before the first guest instruction: no NumPy (it costs ~150-190 ms
here). NumPy stays for symbol tables, which load only when a trace or symbolize needs them.
Nor the downloader (`vmboot fetch`: tarfile, urllib) or the profiler, which only their own
verbs or flags need. And what `vmboot exec --warm` imports to restore a saved guest: none of
the boot code, the report classifier or the devices a warm guest lacks (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import vmboot

NOT_AT_START = {"vmboot.execute.fetch", "tarfile", "vmboot.vmm.profile", "vmboot.debug"}


def test_the_boot_path_does_not_import_numpy() -> None:
    code = (
        "import sys\n"
        "from vmboot.cli.main import build_parser\n"
        "build_parser()\n"
        "import vmboot.vmm.machine, vmboot.vmm.runner, vmboot.hv.kvm, vmboot.linux\n"
        "from vmboot.hv import MemoryVM\n"
        "from vmboot.linux import load_kernel, BootOptions\n"
        "from tests_bzimage import image\n"
        "k = load_kernel(image)\n"
        "with MemoryVM(64 << 20) as vm:\n"
        "    plan = k.prepare(vm, BootOptions(cmdline='x', initrd=b'i' * 100))\n"
        "    plan.configure_vcpu(vm.create_vcpu(0))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy' or m in NOT_AT_START))\n"
    )
    setup = (f"NOT_AT_START = {sorted(NOT_AT_START)!r}\n"
             "import sys, types\nsys.path.insert(0, 'tests')\nfrom bzimage_builder import build_bzimage\n"
             "m = types.ModuleType('tests_bzimage'); m.image = build_bzimage(); "
             "sys.modules['tests_bzimage'] = m\n")
    out = subprocess.run([sys.executable, "-c", setup + code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_cached_driver_answer_does_not_load_the_symbol_readers(tmp_path: Path) -> None:
    """`vmboot exec` asks which drivers the kernel has on every run; once the cache knows,
    the symbol readers (NumPy with them) stay unloaded."""
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"not read: the answer is cached")
    code = (
        "import sys, json, hashlib\n"
        "from pathlib import Path\n"
        "from vmboot.execute import channel\n"
        "from vmboot.execute.cache import cache_subdir\n"
        "from vmboot.file_digest import file_version\n"
        f"kernel = Path({str(kernel)!r})\n"
        "wanted = sorted({n for names in channel.REQUIRED_SYMBOLS.values() for n in names})\n"
        "key = json.dumps([*file_version(kernel)[0], wanted])\n"
        "entry = cache_subdir(channel.DRIVERS_SUBDIR, create=True) / "
        "f'{hashlib.sha256(key.encode()).hexdigest()}.json'\n"
        "entry.write_text(json.dumps(wanted))\n"
        "assert channel.kernel_function_names(kernel) == frozenset(wanted)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy' "
        "or m.startswith('vmboot.debug')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "VMBOOT_CACHE": str(tmp_path / "cache")})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_machine_imports_no_kernel_loader_until_it_boots() -> None:
    """A restore reads no kernel: `vmboot.linux` loads its loaders and decompressors only
    when a name of theirs is used."""
    code = ("import sys\nimport vmboot.vmm.machine, vmboot.vmm.snapshots\n"
            "print(sorted(m for m in sys.modules if m.startswith(('vmboot.linux.loader', "
            "'vmboot.compression'))))\n"
            "from vmboot.linux import load_kernel, BzImage\n"
            "print(load_kernel.__module__, BzImage.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["[]", "vmboot.linux.loader.detect vmboot.linux.loader.bzimage"], out


WARM_PATH = (
    "import json, sys\n"
    "before = set(sys.modules)  # what the interpreter's own start loaded (site, .pth files)\n"
    "from vmboot.cli.main import build_parser\n"
    "words = ['exec', '--warm', '--json', '--', 'echo', 'hi']\n"
    "build_parser(words).parse_args(words)\n"
    "import vmboot.execute.agent_run, vmboot.execute.api, vmboot.execute.channel\n"
    "import vmboot.execute.guest_choice, vmboot.execute.warm\n"
    "import vmboot.vmm.guest_agent, vmboot.vmm.machine, vmboot.vmm.runner\n"
    "import vmboot.vmm.snapshots, vmboot.vmm.vcpus, vmboot.snapshot.restore\n"
    "from vmboot.report import read_console\n"
    "read_console(b'')\n"
)
"""What ``vmboot exec --warm`` loads before and while it restores a saved guest: the exec
verb's parser, the modules exec_command and the warm run import, and the reading of an
empty console (a clean warm exit prints nothing there)."""

NOT_ON_THE_WARM_PATH = (
    "vmboot.cli.run", "vmboot.cli.gdb_args", "vmboot.cli.terminal", "vmboot.gdbstub",
    "vmboot.net.config", "vmboot.net.passt", "vmboot.net.backend",
    "vmboot.devices.virtio.block", "vmboot.devices.virtio.share",
    "vmboot.devices.virtio.vsock_host", "vmboot.devices.virtio.vsock",
    "vmboot.report.classify", "vmboot.report.titles", "vmboot.report.lines",
    "vmboot.elf", "vmboot.initramfs", "vmboot.compression", "vmboot.execute.fetch",
    "vmboot.linux.options", "vmboot.linux.bootparam", "vmboot.linux.configurator",
    "vmboot.linux.loader", "vmboot.x86.page_walk", "vmboot.vmm.code_fetch",
    "vmboot.vmm.host_root", "vmboot.snapshot.save", "vmboot.debug",
    "vmboot.execute.image", "vmboot.execute.guest", "importlib.resources", "tempfile",
)
"""Modules (and packages, with everything under them) that a warm run does not use: the
other verbs' options, devices a warm guest does not have, the report classifier, the boot
code (a restore boots nothing), the initramfs builders and the exec image, the downloader,
and the standard library's package-data reader and temporary files."""

MAX_WARM_PATH_DATACLASSES = 35
"""Dataclasses defined by the modules on the warm path (each costs ~0.3 ms to create). Raise
it only for one the warm path uses; load any other where it is used."""


def _warm_path() -> dict[str, list[str]]:
    report = (
        "loaded = sorted(m for m in sys.modules if m.startswith('vmboot'))\n"
        "everything = sorted(set(sys.modules) - before)\n"
        "made = sorted(f'{n}.{v.__qualname__}' for n in loaded for v in vars(sys.modules[n]).values()\n"
        "              if isinstance(v, type) and v.__module__ == n\n"
        "              and '__dataclass_fields__' in vars(v))\n"
        "print(json.dumps({'modules': everything, 'dataclasses': made}))\n"
    )
    # Without site (-S): .pth files of an interpreter's site-packages may import what this
    # test looks for (importlib.resources, tempfile) before vmboot does. vmboot and its
    # package are found through PYTHONPATH instead (the warm path needs no other package).
    src = str(Path(vmboot.__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-S", "-c", WARM_PATH + report], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": src})
    result: dict[str, list[str]] = json.loads(out.stdout)
    return result


def test_the_warm_exec_path_loads_no_boot_report_or_device_code() -> None:
    """Issue 18: `vmboot exec --warm` must hand the command to the agent within 100 ms of
    the process start, so what it imports is only what a restore and the agent need."""
    loaded = _warm_path()["modules"]
    unexpected = [m for m in loaded if m.startswith(tuple(f"{n}." for n in NOT_ON_THE_WARM_PATH))
                  or m in NOT_ON_THE_WARM_PATH]
    assert unexpected == [], unexpected


def test_the_warm_exec_path_defines_few_dataclasses() -> None:
    made = _warm_path()["dataclasses"]
    assert len(made) <= MAX_WARM_PATH_DATACLASSES, made
