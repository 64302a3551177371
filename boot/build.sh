#!/usr/bin/env bash
# Builds the node OS's boot artefacts into a boot directory:
#   <out>/kernel      the pinned Debian cloud kernel (zos-vm/scripts/fetch-kernel.sh)
#   <out>/initramfs   busybox, NIC/virtio/FUSE modules, /etc/zos/release.pub, zos-image (which
#                     mounts the OS payload) and the static core-0 as /init
#   <out>/os-store    the OS payload image (boot/build-os.sh), its root in <out>/os-root
# A boot directory is what `zos-boot serve --dir` serves and `zos-boot publish --dir` signs.
#
# Usage: boot/build.sh --release-key FILE.pub [--min-release X.Y.Z] [--out DIR]
#        boot/build.sh --core-0-only   (builds the static core-0 and prints its path)
#   --release-key  the public release key (64 hex digits, from `zos-image keygen`); nodes
#                  booted from this initramfs run only manifests it signed
#   --min-release  the oldest release these nodes accept (a downgrade floor)
#   --out          default: ${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/boot
#   ZOS_BOOT_KERNEL_SHA256  refuse a kernel with another hash (the cloud kernel's pin)
# Idempotent: cargo and the initramfs builder skip what is up to date. Prints the directory.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
log() { printf '[boot/build] %s\n' "$*" >&2; }
die() { printf '[boot/build] ERROR: %s\n' "$*" >&2; exit 1; }

key="" min="" out="${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/boot" core0_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --core-0-only) core0_only=1; shift ;;
    --release-key) key="$2"; shift 2 ;;
    --min-release) min="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
if [ -z "$core0_only" ]; then
  [ -n "$key" ] || die "--release-key FILE.pub is required"
  [ -f "$key" ] || die "$key: no such file"
  [[ "$(cat "$key")" =~ ^[0-9a-f]{64}$ ]] || die "$key is not a public key in 64 hex digits (one line)"
fi
if [ -n "$min" ] && ! [[ "$min" =~ ^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$ ]]; then
  die "--min-release $min is not MAJOR.MINOR.PATCH"
fi

# shellcheck disable=SC1091
source "$root/scripts/env.sh"
profile="${CARGO_PROFILE:-ci}"
triple=x86_64-unknown-linux-gnu
# An explicit --target keeps these static objects apart from the workspace's own (no rebuilds
# either way); +crt-static links glibc in, so /init needs no loader or libraries.
log "building the static core-0"
(cd "$root" && CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build -q --profile "$profile" --target "$triple" -p core-0 --bin core-0) >&2
core0="$CARGO_TARGET_DIR/$triple/$profile/core-0"
[ -x "$core0" ] || die "cargo did not produce $core0"
# A static(-pie) binary has no program interpreter.
if readelf -l "$core0" | grep -q 'program interpreter'; then die "$core0 is dynamically linked"; fi
if [ -n "$core0_only" ]; then printf '%s\n' "$core0"; exit 0; fi

kdir="$("$root/zos-vm/scripts/fetch-kernel.sh")" || die "fetching the kernel failed"
if [ -n "${ZOS_BOOT_KERNEL_SHA256:-}" ]; then
  found="$(sha256sum "$kdir/vmlinuz" | cut -d' ' -f1)"
  [ "$found" = "$ZOS_BOOT_KERNEL_SHA256" ] || die "the kernel has SHA-256 $found, not the pinned $ZOS_BOOT_KERNEL_SHA256"
fi

mkdir -p "$out"
extra="$(mktemp -d "${TMPDIR:-/tmp}/zos-boot-etc.XXXXXX")"
trap 'rm -rf "$extra"' EXIT
mkdir -p "$extra/etc/zos"
cp "$key" "$extra/etc/zos/release.pub"
if [ -n "$min" ]; then printf '%s\n' "$min" >"$extra/etc/zos/min-release"; fi
# The OS payload image core-0 mounts (<out>/os-store, <out>/os-root).
"$here/build-os.sh" --out "$out" >/dev/null
# Optional modules, shipped when the kernel has them: NIC drivers of common server hardware
# beside virtio, and what the executor's networks and VMs use.
INIT="$core0" EXTRA_DIR="$extra" EXTRA_BINS="$CARGO_TARGET_DIR/$profile/zos-image" \
  EXTRA_MODULES="e1000 e1000e igb ixgbe i40e r8169 tg3 bnxt_en tun bridge br_netfilter veth macvlan vhost_net nf_tables nft_ct nft_chain_nat nft_nat nft_masq nft_fib_inet nft_reject_inet nft_limit kvm_intel kvm_amd" \
  "$root/zos-vm/scripts/build-initramfs.sh" "$kdir" "$out/initramfs.cpio.gz" >/dev/null
cp "$out/initramfs.cpio.gz" "$out/initramfs.tmp" && mv "$out/initramfs.tmp" "$out/initramfs"
cp "$kdir/vmlinuz" "$out/kernel.tmp" && mv "$out/kernel.tmp" "$out/kernel"
log "kernel $(cat "$kdir/version") and initramfs ($(du -h "$out/initramfs" | cut -f1)) in $out"
printf '%s\n' "$out"
