#!/usr/bin/env bash
# Builds a farm's boot image: Debian's iPXE ISO (BIOS, isohybrid: a CD or a USB stick) whose
# boot entry runs `dhcp && chain <boot service>/ipxe/<runmode>/<farm>`, so a farmer's machine
# boots the node OS for that farm straight from the network, with nothing installed.
#
# Usage: boot/make-iso.sh --farm ID --runmode dev|test|main --boot-url URL --out FILE.iso
#   URL is the boot service (`zos-boot serve`) as the farm's machines reach it.
#   Write to a USB stick with: dd if=FILE.iso of=/dev/sdX bs=4M conv=fsync
set -euo pipefail
log() { printf '[boot/make-iso] %s\n' "$*" >&2; }
die() { printf '[boot/make-iso] ERROR: %s\n' "$*" >&2; exit 1; }

farm="" runmode="" url="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --farm) farm="$2"; shift 2 ;;
    --runmode) runmode="$2"; shift 2 ;;
    --boot-url) url="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
[[ "$farm" =~ ^[0-9]+$ ]] || die "--farm must be a farm id (a decimal number)"
case "$runmode" in dev|test|main) ;; *) die "--runmode must be dev, test or main" ;; esac
[[ "$url" =~ ^https?://[^/[:space:]]+(/[^[:space:]]*)?$ ]] || die "--boot-url must be an http(s) URL"
[ -n "$out" ] || die "--out FILE.iso is required"
iso=/usr/lib/ipxe/ipxe.iso
[ -f "$iso" ] || die "$iso missing (Debian package ipxe)"
command -v xorriso >/dev/null || die "xorriso not found (Debian package xorriso)"

work="$(mktemp -d "${TMPDIR:-/tmp}/zos-iso.XXXXXX")"
trap 'rm -rf "$work"' EXIT
xorriso -osirrox on -indev "$iso" -extract / "$work/tree" 2>/dev/null || die "cannot unpack $iso"
chmod -R u+w "$work/tree"
dd if="$iso" of="$work/mbr.bin" bs=432 count=1 status=none
# isolinux hands APPEND to ipxe.krn as its command line, which iPXE runs as a script.
cat >"$work/tree/isolinux.cfg" <<CFG
SAY Zero-OS node: farm $farm, runmode $runmode, from ${url%/}
TIMEOUT 0
DEFAULT zos
LABEL zos
 KERNEL ipxe.krn
 APPEND dhcp && chain ${url%/}/ipxe/$runmode/$farm
CFG
rm -f "$work/tree/boot.cat"
xorriso -as mkisofs -quiet -o "$out.tmp" -V "ZOS_FARM_$farm" \
  -isohybrid-mbr "$work/mbr.bin" -c boot.cat -b isolinux.bin -no-emul-boot -boot-load-size 4 \
  -boot-info-table "$work/tree" 2>/dev/null || die "xorriso failed"
mv "$out.tmp" "$out"
log "farm $farm ($runmode) boot image: $out ($(du -h "$out" | cut -f1))"
printf '%s\n' "$out"
