#!/usr/bin/env bash
# Fetch a Debian cloud kernel (vmlinuz) and, when the apt sources carry it, its -dbg vmlinux,
# and unpack them into a cache directory. Used by tests/debian_kernel.py; safe to re-run.
#
#   scripts/fetch-debian-kernel.sh [--no-dbg] [ABI]
#
# ABI is e.g. 6.1.0-56 (default: what the linux-image-cloud-amd64 meta-package depends on).
# Cache: $VMBOOT_CACHE/debian-kernels or ~/.cache/vmboot/debian-kernels, one directory per ABI:
#   <cache>/<ABI>/boot/vmlinuz-<ABI>-cloud-amd64
#   <cache>/<ABI>/boot/System.map-<ABI>-cloud-amd64          (a placeholder in Debian's packages)
#   <cache>/<ABI>/usr/lib/debug/boot/vmlinux-<ABI>-cloud-amd64 (only from the -dbg package)
# The last line printed on success is the ABI directory. Needs apt-get (run `apt-get update` first).
set -euo pipefail

want_dbg=1
if [ "${1:-}" = "--no-dbg" ]; then want_dbg=0; shift; fi
abi="${1:-}"

cache="${VMBOOT_CACHE:-$HOME/.cache/vmboot}/debian-kernels"
mkdir -p "$cache"

if [ -z "$abi" ]; then
  dep=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: linux-image-\(.*\)-cloud-amd64$/\1/p' | head -n1)
  if [ -z "$dep" ]; then
    echo "fetch-debian-kernel: apt-cache knows no linux-image-cloud-amd64 (run apt-get update?)" >&2
    exit 2
  fi
  abi="$dep"
fi
flavour="$abi-cloud-amd64"
dest="$cache/$abi"
mkdir -p "$dest" "$cache/debs"

have_pkg() { apt-cache show "$1" >/dev/null 2>&1; }
download() {  # download package $1 into $cache/debs, print the .deb path
  local pkg="$1" deb
  deb=$(ls "$cache/debs/${pkg}_"*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    (cd "$cache/debs" && apt-get download -q "$pkg" >&2)
    deb=$(ls "$cache/debs/${pkg}_"*.deb | head -n1)
  fi
  echo "$deb"
}

if [ ! -e "$dest/boot/vmlinuz-$flavour" ]; then
  pkg="linux-image-$flavour-unsigned"
  have_pkg "$pkg" || pkg="linux-image-$flavour"
  deb=$(download "$pkg")
  # Only /boot is needed; the modules are 100 MB unpacked.
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dest" --wildcards './boot/*'
  rm -f "$deb"
fi

if [ "$want_dbg" = 1 ] && [ ! -e "$dest/usr/lib/debug/boot/vmlinux-$flavour" ]; then
  pkg="linux-image-$flavour-dbg"
  if have_pkg "$pkg"; then
    deb=$(download "$pkg")
    # The package unpacks to ~1.7 GB of module debug info; take only the vmlinux.
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dest" --wildcards "./usr/lib/debug/boot/vmlinux-$flavour"
    rm -f "$deb"
  else
    echo "fetch-debian-kernel: $pkg is not in the apt sources; no vmlinux with .symtab" >&2
  fi
fi
echo "$dest"
