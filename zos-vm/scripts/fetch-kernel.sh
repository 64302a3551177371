#!/usr/bin/env bash
# Fetches the guest kernel from Debian's cloud kernel package into a cache directory:
#   <cache>/kernel/vmlinuz          the bzImage QEMU boots with -kernel
#   <cache>/kernel/modules/         the package's /lib/modules/<version> tree (modules only)
#   <cache>/kernel/version          the kernel release string
# Idempotent: when the cache is complete it only prints the kernel directory.
#
# Usage: fetch-kernel.sh [CACHE_DIR]
#   CACHE_DIR defaults to $ZOS_GUEST_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/guest.
#   ZOS_GUEST_KERNEL_PKG names the package (default: what linux-image-cloud-amd64 depends on).
# Prints the kernel directory on stdout; everything else goes to stderr.
set -euo pipefail

log() { printf '[fetch-kernel] %s\n' "$*" >&2; }
die() { printf '[fetch-kernel] ERROR: %s\n' "$*" >&2; exit 1; }

cache="${1:-${ZOS_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/guest}}"
out="$cache/kernel"

if [ -f "$out/.complete" ] && [ -f "$out/vmlinuz" ]; then
  printf '%s\n' "$out"
  exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found: the guest kernel comes from a Debian package"
command -v dpkg >/dev/null || die "dpkg not found"

pkg="${ZOS_GUEST_KERNEL_PKG:-}"
resolve_pkg() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
if [ -z "$pkg" ]; then
  pkg="$(resolve_pkg || true)"
  if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
    log "package lists do not know linux-image-cloud-amd64; running apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed (is a Debian mirror reachable?)"
    pkg="$(resolve_pkg || true)"
  fi
  [ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package (run apt-get update, or set ZOS_GUEST_KERNEL_PKG)"
fi

mkdir -p "$cache"
work="$(mktemp -d "$cache/.fetch.XXXXXX")"
dl="$(mktemp -d "${TMPDIR:-/tmp}/zos-kernel-dl.XXXXXX")"
trap 'rm -rf "$work" "$dl"' EXIT
# apt-get download drops privileges to _apt when it can: let it write the download directory.
chmod 0777 "$dl"

log "downloading $pkg"
(cd "$dl" && apt-get download -q "$pkg" >&2) \
  || die "apt-get download $pkg failed (is a Debian mirror reachable? try apt-get update)"
deb="$(ls "$dl"/*.deb 2>/dev/null | head -n1)"
[ -n "$deb" ] || die "apt-get download produced no .deb"

log "extracting $(basename "$deb")"
dpkg -x "$deb" "$work/root"
vmlinuz="$(ls "$work"/root/boot/vmlinuz-* 2>/dev/null | head -n1)"
[ -n "$vmlinuz" ] || die "no /boot/vmlinuz-* in $pkg"
version="${vmlinuz##*/vmlinuz-}"
moddir="$work/root/lib/modules/$version"
[ -d "$moddir" ] || die "no /lib/modules/$version in $pkg"

stage="$work/kernel"
mkdir -p "$stage"
cp "$vmlinuz" "$stage/vmlinuz"
mv "$moddir" "$stage/modules"
printf '%s\n' "$version" >"$stage/version"
printf '%s\n' "$pkg" >"$stage/package"
touch "$stage/.complete"

rm -rf "$out"
mv "$stage" "$out"
log "kernel $version in $out"
printf '%s\n' "$out"
