#!/usr/bin/env bash
# Install everything the test suite needs on Debian or Ubuntu and run it: lint (ruff),
# types (mypy), then pytest. Extra arguments go to pytest, e.g. `-m "not slow"`.
#
# System tools come from apt-get (through sudo when not root). Python packages go into a
# virtual environment, .venv in the repository (made on the first run, reused after), so a
# system Python that refuses `pip install` (PEP 668) is never touched. PYTHON names the
# interpreter that makes the venv (default python3); VENV its directory.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# What the tests run, and why:
#   binutils (as, ld, nm, objcopy)  build the probe kernels, read symbols independently
#   gcc, linux-libc-dev              compile the ABI checks against <linux/kvm.h>, <asm/bootparam.h>
#   cpio                             GNU cpio reads and writes the initramfs archives we compare with
#   lz4, zstd, xz-utils, gzip        the reference decompressors for kernels and initramfs
#   busybox-static                   a static busybox for custom guest images
#   qemu-system-x86                  the side-by-side boots (TCG and KVM), QEMU dumps, virtiofsd
#   file                             an independent reading of kernel headers
#   dpkg-dev (dpkg-deb), apt         fetching Debian's kernel and busybox packages
#   e2fsprogs, passt, crash, gdb,    disk images, user-mode networking, post-mortem readers
#   dwarves (pahole), iproute2
#   linux-source-6.1                 tools/include/nolibc, to rebuild the guest agent and compare
#   python3-venv                     the virtual environment below
APT_PACKAGES="binutils gcc linux-libc-dev cpio lz4 zstd xz-utils gzip busybox-static qemu-system-x86
file dpkg-dev e2fsprogs passt crash gdb dwarves iproute2 linux-source-6.1 python3-venv"
missing=""
for p in $APT_PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  installable="" unavailable=""
  for p in $missing; do  # e.g. passt is not in older releases: the tests that need it skip
    if apt-cache show "$p" >/dev/null 2>&1; then installable="$installable $p"; else unavailable="$unavailable $p"; fi
  done
  if [ -n "$installable" ]; then
    echo "== apt-get install$installable"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $installable >/dev/null
    echo "== installed:$installable"
  fi
  if [ -n "$unavailable" ]; then echo "== not in this distribution's archive:$unavailable"; fi
else
  echo "== apt packages: all present"
fi

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== python venv: $VENV (new)"
  "${PYTHON:-python3}" -m venv "$VENV"
else
  echo "== python venv: $VENV (reused)"
fi
PY="$VENV/bin/python"
echo "== pip install -e .[test]"
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
echo "== python packages: $("$PY" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null \
  | grep -iE '^(vmboot|numpy|lz4|zstandard|pytest|hypothesis|mypy|ruff|drgn)==' | tr '\n' ' ')"

echo "== ruff"
"$PY" -m ruff check src tests bench fuzz
echo "== mypy"
"$PY" -m mypy
echo "== pytest"
exec "$PY" -m pytest "$@"
