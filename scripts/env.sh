# Sourced by the Makefile, .ci/run and scripts: one shared build directory for development and CI
# (outside the clone, so a fresh clone builds incrementally), plus the toolchain environment.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/target}"
export CARGO_PROFILE="${CARGO_PROFILE:-ci}"
_zos_env="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.toolchain-env"
# shellcheck disable=SC1090
[ -f "$_zos_env" ] && . "$_zos_env"
unset _zos_env
# The wasm builder looks for Cargo.lock upwards from its build directory, which lies outside the
# clone: tell it where the workspace is.
export WASM_BUILD_WORKSPACE_HINT="${WASM_BUILD_WORKSPACE_HINT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
