#!/usr/bin/env bash
# Idempotent set-up of everything the workspace needs to build and test on Debian 12.
#
# Two routes for the wasm runtime toolchain:
#  - rustup can download components (internet): `rustup target add wasm32v1-none`.
#  - otherwise (package registries only): Debian's rustc-web 1.96 + rust-web-src, linked into
#    rustup as the toolchain `debian`, with core/alloc prebuilt for wasm32v1-none (with embedded
#    bitcode, which the LTO link of the runtime blob needs).
# When everything is in place it finishes in seconds. It prints the environment the build needs
# to scripts/.toolchain-env (sourced by the Makefile).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
env_file="$here/.toolchain-env"
log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "installing $* needs root (or sudo)"
    echo sudo
  fi
}

# ---- apt packages --------------------------------------------------------------------------
apt_packages=(clang protobuf-compiler libssl-dev pkg-config make git curl ca-certificates
  qemu-system-x86 busybox-static fuse3 libfuse3-dev iproute2 cpio xz-utils
  nftables wireguard-go wireguard-tools python3 e2fsprogs pebble util-linux dropbear-bin
  openssh-client ipxe xorriso)
# Node.js may come from another source than Debian (with npm bundled): check the commands.
command -v node >/dev/null || apt_packages+=(nodejs)
command -v npm >/dev/null || apt_packages+=(npm)
wasm_debian_packages=(rustc-web cargo-web rust-web-src rust-web-llvm lld-22)

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# ZOS_WASM_ROUTE=debian forces the registry-only route (to check it on a machine with internet).
wasm_route=""
if [ "${ZOS_WASM_ROUTE:-}" = debian ]; then
  :
elif rustup target list --installed 2>/dev/null | grep -qx wasm32v1-none; then
  wasm_route=rustup
elif [ -d /usr/lib/rustlib/wasm32v1-none/lib ] && ls /usr/lib/rustlib/wasm32v1-none/lib/libcore-*.rlib >/dev/null 2>&1; then
  wasm_route=debian
fi

for p in "${apt_packages[@]}"; do have_pkg "$p" || missing+=("$p"); done
if [ "$wasm_route" != rustup ]; then
  # Try the ordinary route first; rustup refuses at once when it cannot download.
  if [ -z "$wasm_route" ] && [ "${ZOS_WASM_ROUTE:-}" != debian ] \
    && timeout 60 rustup target add wasm32v1-none >/dev/null 2>&1; then
    wasm_route=rustup
  else
    for p in "${wasm_debian_packages[@]}"; do have_pkg "$p" || missing+=("$p"); done
  fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=$(need_root "${missing[*]}")
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || die "apt-get update failed (is a Debian mirror reachable?)"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed; the wasm route needs Debian bookworm-security's rustc-web/rust-web-src/rust-web-llvm and lld-22"
fi

# ---- yggdrasil: the overlay benchmark's peer anchor ----------------------------------------------
# Unpacked, not installed: the package's service would start a daemon that announces itself by
# multicast on the host's LAN. The tests run it only inside their own namespaces.
ygg_dir="${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/tools/yggdrasil"
if [ ! -x "$ygg_dir/usr/sbin/yggdrasil" ]; then
  log "unpacking Debian's yggdrasil into $ygg_dir"
  ygg_tmp="$(mktemp -d)"
  chmod 0777 "$ygg_tmp"
  (cd "$ygg_tmp" && apt-get download yggdrasil >/dev/null 2>&1) \
    || { SUDO=$(need_root "apt-get update"); $SUDO apt-get update -qq && (cd "$ygg_tmp" && apt-get download yggdrasil >/dev/null 2>&1); } \
    || die "apt-get download yggdrasil failed (is a Debian mirror reachable?)"
  mkdir -p "$ygg_dir"
  dpkg -x "$ygg_tmp"/yggdrasil_*.deb "$ygg_dir"
  rm -rf "$ygg_tmp"
fi

# ---- Debian toolchain route --------------------------------------------------------------------
if [ "$wasm_route" != rustup ]; then
  [ -x /usr/bin/rustc ] || die "/usr/bin/rustc missing after installing rustc-web"
  [ -d /usr/lib/rustlib/src/rust/library ] || die "rust-web-src did not provide /usr/lib/rustlib/src/rust/library"
  if ! rustup toolchain list | grep -q '^debian'; then
    log "linking Debian's toolchain into rustup as 'debian'"
    rustup toolchain link debian /usr
  fi
  sysroot_lib=/usr/lib/rustlib/wasm32v1-none/lib
  if ! ls "$sysroot_lib"/libcore-*.rlib >/dev/null 2>&1; then
    log "building core/alloc for wasm32v1-none once (with embedded bitcode for LTO)"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/src"
    cat >"$work/Cargo.toml" <<'TOML'
[package]
name = "wasm-sysroot-seed"
version = "0.0.0"
edition = "2021"
[lib]
crate-type = ["rlib"]
[profile.release]
panic = "abort"
TOML
    printf '#![no_std]\nextern crate alloc;\npub fn seed() -> alloc::vec::Vec<u8> { alloc::vec::Vec::new() }\n' >"$work/src/lib.rs"
    (cd "$work" && CARGO_TARGET_DIR="$work/target" RUSTFLAGS="-C embed-bitcode=yes" RUSTC_BOOTSTRAP=1 \
      cargo +debian build -q --release --target wasm32v1-none -Zbuild-std=core,alloc) \
      || die "building core/alloc for wasm32v1-none failed"
    SUDO=$(need_root "the wasm32v1-none sysroot")
    $SUDO mkdir -p "$sysroot_lib"
    for lib in core alloc compiler_builtins rustc_std_workspace_core; do
      for f in "$work"/target/wasm32v1-none/release/deps/lib"$lib"-*.rlib; do
        [ -e "$f" ] && $SUDO cp "$f" "$sysroot_lib"/
      done
    done
  fi
  # The sysroot must work without build-std: substrate-wasm-builder probes exactly that.
  probe="$(mktemp -d)"
  mkdir -p "$probe/src"
  printf '[package]\nname = "wasm-probe"\nversion = "0.0.0"\nedition = "2021"\n[lib]\ncrate-type = ["rlib"]\n' >"$probe/Cargo.toml"
  printf '#![no_std]\nextern crate alloc;\npub fn probe() -> alloc::vec::Vec<u8> { alloc::vec::Vec::new() }\n' >"$probe/src/lib.rs"
  (cd "$probe" && CARGO_TARGET_DIR="$probe/target" cargo +debian build -q --release --target wasm32v1-none) \
    || die "the wasm32v1-none sysroot in $sysroot_lib does not work without build-std; delete it and rerun"
  rm -rf "$probe"
  wasm_route=debian
fi

# ---- environment for builds ---------------------------------------------------------------------
{
  echo "# generated by scripts/setup-toolchain.sh"
  if [ "$wasm_route" = debian ]; then
    echo "export WASM_BUILD_TOOLCHAIN=debian"
    # Rust >= 1.96 no longer passes --allow-undefined to wasm-ld; runtime host functions are imports.
    echo "export WASM_BUILD_RUSTFLAGS='-C link-arg=--allow-undefined'"
  fi
} >"$env_file"
log "toolchain ready (wasm route: $wasm_route)"
