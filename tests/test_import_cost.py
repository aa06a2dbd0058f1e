"""What `vmboot run` imports before the first guest instruction: no NumPy (it costs ~150-190 ms
here). NumPy stays for symbol tables, which load only when a trace or symbolize needs them.
Nor the downloader (`vmboot fetch`: tarfile, urllib) or the profiler, which only their own
verbs or flags need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
        "import sys, json, hashlib, os\n"
        "from pathlib import Path\n"
        "from vmboot.execute import channel\n"
        "from vmboot.execute.cache import cache_subdir\n"
        f"kernel = Path({str(kernel)!r})\n"
        "wanted = sorted({n for names in channel.REQUIRED_SYMBOLS.values() for n in names})\n"
        "info = kernel.stat()\n"
        "key = json.dumps([os.path.realpath(kernel), info.st_size, info.st_mtime_ns, wanted])\n"
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
