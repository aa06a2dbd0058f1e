"""``vmboot fetch busybox|kernel``: download what ``vmboot exec`` needs into the vmboot cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Download a host-side artefact into the vmboot cache ($VMBOOT_CACHE, else
$XDG_CACHE_HOME/vmboot, else ~/.cache/vmboot) through the host's apt-get:

  busybox   Debian's busybox-static (a static x86-64 busybox for the guest's /init)
  kernel    the newest Debian cloud kernel (linux-image-<ABI>-cloud-amd64), /boot only

Nothing is installed on the host; run `apt-get update` first on a fresh machine.
`vmboot exec` needs neither: vmboot ships a kernel and busybox of its own.
"""

EPILOG = """\
examples:
  vmboot fetch kernel
      prints the cached vmlinuz path, e.g. ~/.cache/vmboot/debian-kernels/6.1.0-41/boot/...
  vmboot exec --kernel "$(vmboot fetch kernel)" -- uname -r
      run a command under the Debian kernel
  VMBOOT_CACHE=/tmp/c vmboot fetch busybox --json
      {"what": "busybox", "path": "/tmp/c/busybox/busybox", "cache": "/tmp/c"}
"""

WHAT = ("busybox", "kernel")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fetch", help="download busybox or a Debian kernel into the vmboot cache",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=WHAT, help="what to fetch")
    p.add_argument("--force", action="store_true", help="download again even if the cache has it")
    p.add_argument("--json", action="store_true", help='print {"what", "path", "cache"} as JSON')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmboot.execute.cache import cache_dir  # imported here: every verb's parser is built at start-up
    from vmboot.execute.fetch import fetch_busybox, fetch_debian_kernel

    fetch = fetch_busybox if args.what == "busybox" else fetch_debian_kernel
    path: Path = fetch(force=args.force)
    if args.json:
        print(json.dumps({"what": args.what, "path": str(path), "cache": str(cache_dir())}))
    else:
        print(path)
    return 0
