#!/usr/bin/env bash
# Runs the zombienet local testnet test (native provider) against the built zos-chain-node.
set -euo pipefail
cd "$(dirname "$0")"
source ../scripts/env.sh
bin_dir="$CARGO_TARGET_DIR/${CARGO_PROFILE:-ci}"
[ -x "$bin_dir/zos-chain-node" ] || { echo "build the node first: make build" >&2; exit 1; }
[ -d node_modules ] || npm ci --no-audit --no-fund
export PATH="$bin_dir:$PATH"
exec npx zombienet --provider native test local.zndsl "$@"
