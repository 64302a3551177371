#!/usr/bin/env bash
# Builds the guest initramfs: busybox-static, the kernel modules the guest needs (virtio PCI/MMIO,
# block, net, virtio-fs, FUSE, overlay) with their dependencies, and guest/init as /init.
#
# Usage: build-initramfs.sh [KERNEL_DIR] [OUTPUT]
#   KERNEL_DIR  from fetch-kernel.sh (default: <cache>/kernel, fetched when missing)
#   OUTPUT      default: <cache>/initramfs.cpio.gz
#   <cache> is $ZOS_GUEST_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/guest.
#   BUSYBOX names a static busybox binary (default: busybox on PATH; package busybox-static).
#   AGENT names the guest agent binary (zos-guest-agent) to ship as /bin/zos-guest-agent with the
#   shared libraries it links; without it the guests have no agent (no exec or shell sessions).
#   INIT names another /init (default: guest/init); boot/build.sh passes the static core-0.
#   EXTRA_DIR names a directory copied over the archive's root (the node OS's /etc/zos).
#   EXTRA_MODULES lists more modules to ship and load when the kernel has them (NIC drivers).
#   EXTRA_BINS lists more programs to ship as /bin/<name>, with the shared libraries they link
#   (the node OS's zos-image, which mounts the OS payload).
# Idempotent: rebuilds only when the init script, this script, the kernel or busybox changed.
# Prints the output path on stdout; everything else goes to stderr.
#
# The per-VM configuration is not in this archive: the VM library appends a second (uncompressed)
# cpio archive with /zos/config to it, which the kernel unpacks over this one.
set -euo pipefail

log() { printf '[build-initramfs] %s\n' "$*" >&2; }
die() { printf '[build-initramfs] ERROR: %s\n' "$*" >&2; exit 1; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
init_src="${INIT:-$here/../guest/init}"
cache="${ZOS_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/guest}"
kdir="${1:-}"
if [ -z "$kdir" ]; then
  kdir="$("$here/fetch-kernel.sh" "$cache")" || die "fetching the guest kernel failed"
fi
out="${2:-$cache/initramfs.cpio.gz}"

[ -f "$kdir/.complete" ] || die "$kdir is not a complete kernel directory (run fetch-kernel.sh)"
[ -f "$init_src" ] || die "missing $init_src"
busybox="${BUSYBOX:-$(command -v busybox || true)}"
[ -n "$busybox" ] && [ -x "$busybox" ] || die "busybox not found (install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked; install busybox-static or set BUSYBOX"
fi
agent="${AGENT:-}"
if [ -n "$agent" ] && [ ! -x "$agent" ]; then die "AGENT=$agent is not an executable"; fi
read -r -a extra_bins <<<"${EXTRA_BINS:-}"
for b in "${extra_bins[@]}"; do [ -x "$b" ] || die "EXTRA_BINS: $b is not an executable"; done
for tool in cpio gzip sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

# Modules the guest loads, in this order after their dependencies.
# evdev and button: the ACPI power button, so a stop is a clean shutdown.
wanted=(virtio virtio_ring virtio_pci virtio_mmio virtio_blk virtio_net virtio_console
  fuse virtiofs overlay evdev button)
extra_dir="${EXTRA_DIR:-}"
if [ -n "$extra_dir" ] && [ ! -d "$extra_dir" ]; then die "EXTRA_DIR=$extra_dir is not a directory"; fi
read -r -a extra_modules <<<"${EXTRA_MODULES:-}"

stamp_of() {
  {
    sha256sum "$init_src" "${BASH_SOURCE[0]}" "$busybox" | cut -d' ' -f1
    if [ -n "$agent" ]; then sha256sum "$agent" | cut -d' ' -f1; else echo no-agent; fi
    for b in "${extra_bins[@]}"; do sha256sum "$b" | cut -d' ' -f1; done
    cat "$kdir/version"
    # The kernel tree's hash (recorded by the executor before this runs): another kernel of
    # the same version string still gets its own modules.
    cat "$kdir/.blake3" 2>/dev/null || echo no-kernel-hash
    printf '%s\n' "${wanted[@]}" "${extra_modules[@]}"
    if [ -n "$extra_dir" ]; then
      (cd "$extra_dir" && find . -type f | LC_ALL=C sort | xargs -r sha256sum)
    fi
  } | sha256sum | cut -d' ' -f1
}
stamp="$(stamp_of)"
# Reused only when built from the same inputs and unchanged since.
if [ -f "$out" ] && [ -f "$out.stamp" ] && [ "$(cat "$out.stamp")" = "$stamp" ] \
  && [ -f "$out.sha256" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$(cat "$out.sha256")" ]; then
  printf '%s\n' "$out"
  exit 0
fi

mods="$kdir/modules/kernel"
declare -A path_of=()
while IFS= read -r f; do
  name="${f##*/}"; name="${name%%.ko*}"
  path_of[$name]="$f"
  # modules.dep/modinfo use either spelling.
  path_of[${name//-/_}]="$f"
done < <(find "$mods" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst')

builtin_of() { grep -q "/$1\.ko$" "$kdir/modules/modules.builtin" 2>/dev/null; }

ko_text() { # module file -> uncompressed bytes on stdout
  case "$1" in
    *.xz) xz -dc "$1" ;;
    *.zst) zstd -dc "$1" ;;
    *) cat "$1" ;;
  esac
}

declare -A seen=()
order=()
visit() {
  local m="${1//-/_}"
  [ -n "${seen[$m]:-}" ] && return 0
  seen[$m]=1
  if [ -z "${path_of[$m]:-}" ]; then
    builtin_of "$m" && return 0
    builtin_of "${1}" && return 0
    die "module $1 is neither built in nor shipped by the kernel package"
  fi
  local deps
  deps="$(ko_text "${path_of[$m]}" | "$busybox" strings | sed -n 's/^depends=//p' | head -n1)"
  local d
  for d in ${deps//,/ }; do visit "$d"; done
  order+=("$m")
}
for m in "${wanted[@]}"; do visit "$m"; done
# Drivers for hardware the kernel may lack are optional: shipped when the package has them.
for m in "${extra_modules[@]}"; do
  if [ -n "${path_of[${m//-/_}]:-}" ] || builtin_of "$m"; then visit "$m"; else log "optional module $m not in this kernel"; fi
done

stage="$(mktemp -d "${TMPDIR:-/tmp}/zos-initramfs.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,run,mnt,newroot,etc,root,zos/config,lib/modules}
ln -s bin "$stage/sbin"
mkdir -p "$stage/usr"
ln -s ../bin "$stage/usr/bin"
ln -s ../bin "$stage/usr/sbin"
cp "$busybox" "$stage/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$stage/bin/$applet"
done
: >"$stage/lib/modules/load-order"
for m in "${order[@]}"; do
  ko_text "${path_of[$m]}" >"$stage/lib/modules/$m.ko"
  printf '%s\n' "$m" >>"$stage/lib/modules/load-order"
done
ship_with_libraries() { # program, its name under /bin
  cp "$1" "$stage/bin/$2"
  # Linked to glibc dynamically: the libraries and loader go where ldd finds them.
  command -v ldd >/dev/null || die "ldd not found (libc-bin) to ship $2's libraries"
  for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
    [ -f "$lib" ] || continue
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
  done
}
if [ -n "$agent" ]; then ship_with_libraries "$agent" zos-guest-agent; fi
for b in "${extra_bins[@]}"; do ship_with_libraries "$b" "$(basename "$b")"; done
cp "$init_src" "$stage/init"
chmod 0755 "$stage/init"
if [ -n "$extra_dir" ]; then cp -a "$extra_dir/." "$stage/"; fi
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\n' >"$stage/etc/group"
# The kernel opens /dev/console before /init runs; only root can create the node here. The VM
# library's config appendix carries it too, and /init reopens the console after mounting devtmpfs.
if [ "$(id -u)" = 0 ]; then mknod -m 0600 "$stage/dev/console" c 5 1; fi

mkdir -p "$(dirname "$out")"
tmp_out="$out.tmp.$$"
# Byte-reproducible: sorted names, one owner, one time, no inode or device numbers, no gzip
# name or time, so the same inputs give the same archive (and the same manifest hash).
find "$stage" -mindepth 1 -exec touch -h -d @0 {} +
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) \
  | gzip -9 -n >"$tmp_out"
sha256sum "$tmp_out" | cut -d' ' -f1 >"$out.sha256"
mv "$tmp_out" "$out"
printf '%s\n' "$stamp" >"$out.stamp"
log "built $out ($(du -h "$out" | cut -f1), modules: ${order[*]})"
printf '%s\n' "$out"
