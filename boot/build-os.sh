#!/usr/bin/env bash
# Builds the node OS payload, the root filesystem core-0 mounts lazily from a release's image:
# the workspace's zos-executor, zos-image and zos-overlay, the hypervisor (QEMU, its firmware and TCG
# accelerator, virtiofsd), the tools the executor runs (e2fsprogs, nftables, iproute2,
# util-linux's unshare and mount, wireguard-go, bash), busybox for the rest, and every shared
# library they link. Packs it with zos-image into <out>/os-store and writes the image root to
# <out>/os-root (what `zos-boot publish` puts in the manifest).
#
# Usage: boot/build-os.sh --out BOOT_DIR
# The workspace binaries must be built first (`make build`); the host tools come from Debian
# (scripts/setup-toolchain.sh installs them). Repacking the same tree yields the same root.
# Prints the image root on stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
log() { printf '[boot/build-os] %s\n' "$*" >&2; }
die() { printf '[boot/build-os] ERROR: %s\n' "$*" >&2; exit 1; }

out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
[ -n "$out" ] || die "--out BOOT_DIR is required"

# shellcheck disable=SC1091
source "$root/scripts/env.sh"
bins="$CARGO_TARGET_DIR/${CARGO_PROFILE:-ci}"
for b in zos-executor zos-image zos-overlay; do
  [ -x "$bins/$b" ] || die "$bins/$b is missing: build the workspace first (make build)"
done
# The image records owners and modes: everything in it is root's, so no other user of a node
# could replace a program through the writable layer, and the root does not depend on who built.
[ "$(id -u)" = 0 ] || die "run as root: the OS image's files must be owned by root"
umask 022
busybox="${BUSYBOX:-$(command -v busybox || true)}"
[ -n "$busybox" ] && ! ldd "$busybox" >/dev/null 2>&1 || die "a static busybox is needed (busybox-static)"

stage="$(mktemp -d "${TMPDIR:-/tmp}/zos-os.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
# Merged /usr, as Debian: library paths from ldd land in the same place either way.
mkdir -p "$stage"/usr/{bin,sbin,lib,lib64,libexec,share} "$stage"/{etc,dev,proc,sys,run,tmp,root,var/lib/zos,var/cache}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$stage/$d"; done
chmod 1777 "$stage/tmp"

elfs=()
add_file() { # host path [path in the image]: copied with its target's bytes
  local src="$1" dst="${2:-$1}"
  mkdir -p "$stage$(dirname "$dst")"
  cp -L "$src" "$stage$dst"
  if [ "$(head -c4 "$src" | od -An -c | tr -d ' ')" = "177ELF" ]; then elfs+=("$src"); fi
}
add_tool() { # name required|optional: from PATH (including sbin)
  local path
  path="$(PATH="$PATH:/usr/sbin:/sbin" command -v "$1" || true)"
  if [ -z "$path" ]; then
    [ "$2" = optional ] || die "$1 is not installed (scripts/setup-toolchain.sh)"
    log "optional $1 is not installed; the payload goes without it"
    return 0
  fi
  case "$path" in /usr/*) ;; *) path="/usr$path" ;; esac
  add_file "$path"
}

add_file "$bins/zos-executor" /usr/bin/zos-executor
add_file "$bins/zos-image" /usr/bin/zos-image
# The overlay daemon: a release runs it as a service beside the executor (see the README).
add_file "$bins/zos-overlay" /usr/bin/zos-overlay
for t in qemu-system-x86_64 mke2fs mkfs.ext4 e2fsck resize2fs nft ip unshare mount umount bash; do
  add_tool "$t" required
done
for t in wireguard-go wg; do add_tool "$t" optional; done
add_file /usr/lib/qemu/virtiofsd
# QEMU's firmware (BIOS, option ROMs; links resolved) and its TCG accelerator module.
mkdir -p "$stage/usr/share/qemu"
cp -rL /usr/share/qemu/. "$stage/usr/share/qemu/"
for m in /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so; do add_file "$m"; done

# Every library each program links, and the loader.
for elf in "${elfs[@]}"; do
  for lib in $(ldd "$elf" 2>/dev/null | grep -o '/[^ ]*' || true); do
    [ -f "$lib" ] || continue
    case "$lib" in /usr/*) dst="$lib" ;; *) dst="/usr$lib" ;; esac
    [ -e "$stage$dst" ] || { mkdir -p "$stage$(dirname "$dst")"; cp -L "$lib" "$stage$dst"; }
  done
done

# busybox for everything else a shell script may call (never over a real tool).
cp "$busybox" "$stage/usr/bin/busybox"
for applet in $("$busybox" --list); do
  [ -e "$stage/usr/bin/$applet" ] || [ -e "$stage/usr/sbin/$applet" ] || ln -s busybox "$stage/usr/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\n' >"$stage/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$stage/etc/hosts"
printf 'hosts: files dns\n' >"$stage/etc/nsswitch.conf"
printf 'NAME="Zero-OS node"\nID=zos\n' >"$stage/etc/os-release"
: >"$stage/etc/resolv.conf"

# Fixed owners, modes and times: the same inputs give the same image root.
chown -R -h 0:0 "$stage"
chmod -R u+rwX,go+rX,go-w "$stage"
chmod 1777 "$stage/tmp"
find "$stage" -exec touch -h -d @0 {} +
mkdir -p "$out"
size="$(du -sb "$stage" | cut -f1)"
image_root="$("$bins/zos-image" pack "$stage" --store "$out/os-store" | tail -n1)"
[[ "$image_root" =~ ^[0-9a-f]{64}$ ]] || die "zos-image pack printed no image root"
printf '%s\n' "$image_root" >"$out/os-root.tmp" && mv "$out/os-root.tmp" "$out/os-root"
printf '%s\n' "$size" >"$out/os-size"
log "OS payload $image_root: $((size / 1048576)) MiB in $(find "$stage" -type f | wc -l) files, packed into $out/os-store"
printf '%s\n' "$image_root"
