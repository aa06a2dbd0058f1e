#!/usr/bin/env bash
# Install everything the test suite needs (Debian/Ubuntu, as root or with sudo) and run it:
# lint (ruff), types (mypy), then pytest. Extra arguments go to pytest, e.g. `-m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# binutils: as/ld build the probe kernels; cpio: the initramfs tests compare with it;
# linux-libc-dev: kvm.h for the ABI test; gcc compiles the ABI checker; file: independent
# readings of kernel headers; qemu-system-x86: the side-by-side boots.
APT_PACKAGES="binutils gcc cpio linux-libc-dev file qemu-system-x86 dpkg-dev"
missing=""
for p in $APT_PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "== apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY=${PYTHON:-python3}
echo "== pip install -e .[test]"
$PY -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff"
$PY -m ruff check src tests bench
echo "== mypy"
$PY -m mypy
echo "== pytest"
exec $PY -m pytest "$@"
