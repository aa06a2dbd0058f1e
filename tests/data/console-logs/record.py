"""Record real kernel reports of Debian's cloud kernel under QEMU TCG into this directory.

    python tests/data/console-logs/record.py [--abi 6.1.0-57] [--work DIR] [SCENARIO...]

For each scenario the script boots ``linux-image-<ABI>-cloud-amd64`` (fetched with
``apt-get download``) under ``qemu-system-x86_64 -accel tcg`` with a busybox initramfs
whose ``/init`` provokes one kind of report, and saves the serial console as
``debian-<ABI>-<scenario>.log``. Most reports come from ``provoke/vmboot_provoke.c``, a
small module built here against the kernel's own headers package (``linux-headers-<ABI>-
cloud-amd64``, ``-common`` and ``linux-kbuild``): it WARNs, dereferences NULL, BUG()s,
sleeps with preemption off, spins with preemption off (soft lockup, RCU stall) or sleeps
uninterruptibly (hung task) when loaded. The panic is the real ``echo c >
/proc/sysrq-trigger``; ``ok`` is a plain boot. Needs apt-get, dpkg-deb, make, gcc, a
static busybox (``vmboot fetch busybox``) and qemu-system-x86_64; about a minute per
scenario on two cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "src"))

from vmboot.execute.discovery import find_busybox  # noqa: E402
from vmboot.initramfs.builders import build_initramfs, complete_tree  # noqa: E402
from vmboot.initramfs.entry import Entry  # noqa: E402

DEFAULT_ABI = "6.1.0-57"
QEMU_TIMEOUT_S = 600
BASE_CMDLINE = "console=ttyS0 panic=-1"


@dataclass(frozen=True)
class Scenario:
    name: str
    script: str
    """Shell lines /init runs after mounting /proc and /sys."""
    cmdline: str = ""


def _insmod(what: str, seconds: int = 8) -> str:
    return f"insmod /vmboot_provoke.ko what={what} spin_seconds={seconds}\n"


SCENARIOS = (
    Scenario("ok", "echo nothing to report\n"),
    Scenario("panic", "echo c > /proc/sysrq-trigger\n"),
    Scenario("warning", _insmod("warning")),
    Scenario("oops", _insmod("oops")),
    Scenario("bug", _insmod("bug")),
    Scenario("atomic-sleep", _insmod("atomic-sleep")),
    Scenario("soft-lockup", _insmod("soft-lockup", 10), "watchdog_thresh=1"),
    Scenario("rcu-stall", _insmod("rcu-stall", 30),
             "nosoftlockup rcupdate.rcu_cpu_stall_timeout=3"),
    Scenario("hung-task", "echo 2 > /proc/sys/kernel/hung_task_timeout_secs\n"
                          + _insmod("hung-task", 12)),
)

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo vmboot-record: start
{script}echo vmboot-record: done
poweroff -f
"""


def run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def fetch(abi: str, work: Path) -> tuple[Path, Path]:
    """The vmlinuz and the kernel headers tree of ``abi``, downloaded and unpacked in work."""
    root = work / "root"
    flavour = f"{abi}-cloud-amd64"
    vmlinuz = root / "boot" / f"vmlinuz-{flavour}"
    headers = root / "usr" / "src" / f"linux-headers-{flavour}"
    if vmlinuz.exists() and headers.exists():
        return vmlinuz, headers
    series = ".".join(abi.split(".")[:2])  # 6.1.0-57 -> 6.1
    packages = [f"linux-image-{flavour}-unsigned", f"linux-headers-{flavour}",
                f"linux-headers-{abi}-common", f"linux-kbuild-{series}"]
    missing = [p for p in packages if not any(work.glob(f"{p}_*.deb"))]
    if missing:
        run(["apt-get", "download", "-q", *missing], cwd=work)
    for deb in sorted(d for p in packages for d in work.glob(f"{p}_*.deb")):
        run(["dpkg-deb", "-x", str(deb), str(root)])
    # The flavour's Makefile includes the -common tree by its installed, absolute path.
    makefile = headers / "Makefile"
    makefile.write_text(makefile.read_text().replace("/usr/src/", f"{root}/usr/src/"))
    return vmlinuz, headers


def build_module(headers: Path, work: Path) -> Path:
    build = work / "provoke"
    build.mkdir(exist_ok=True)
    for name in ("vmboot_provoke.c", "Kbuild"):
        (build / name).write_bytes((HERE / "provoke" / name).read_bytes())
    run(["make", "-s", "-C", str(headers), f"M={build}", "modules"])
    return build / "vmboot_provoke.ko"


def initramfs(scenario: Scenario, busybox: Path, module: Path) -> bytes:
    entries = [
        Entry.file("init", INIT.format(script=scenario.script).encode(), 0o755),
        Entry.file("bin/busybox", busybox.read_bytes(), 0o755),
        Entry.file("vmboot_provoke.ko", module.read_bytes(), 0o644),
        Entry.directory("proc"), Entry.directory("sys"), Entry.directory("dev"),
    ]
    return build_initramfs(complete_tree(entries))


def record(scenario: Scenario, abi: str, vmlinuz: Path, cpio: bytes, work: Path) -> Path:
    image = work / f"{scenario.name}.cpio"
    image.write_bytes(cpio)
    out = HERE / f"debian-{abi}-{scenario.name}.log"
    cmdline = f"{BASE_CMDLINE} {scenario.cmdline}".strip()
    with out.open("wb") as log:
        run(["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
             "-kernel", str(vmlinuz), "-initrd", str(image), "-append", cmdline],
            stdout=log, stdin=subprocess.DEVNULL, timeout=QEMU_TIMEOUT_S)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--abi", default=DEFAULT_ABI)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep downloads and builds here (default: a temporary directory)")
    parser.add_argument("scenarios", nargs="*", choices=[[]] + [s.name for s in SCENARIOS],
                        metavar="SCENARIO")
    args = parser.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.scenarios or s.name in args.scenarios]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        vmlinuz, headers = fetch(args.abi, work)
        module = build_module(headers, work)
        busybox = find_busybox()
        for scenario in chosen:
            print(record(scenario, args.abi, vmlinuz, initramfs(scenario, busybox, module), work))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
