#!/usr/bin/env bash
# Runs the zombienet local testnet test (native provider) against the built zos-chain-node.
# Every node listens on 127.0.0.1 only (see bin/zos-chain-node).
set -euo pipefail
cd "$(dirname "$0")"
source ../scripts/env.sh
export ZOS_CHAIN_NODE_BIN="${ZOS_CHAIN_NODE_BIN:-$CARGO_TARGET_DIR/${CARGO_PROFILE:-ci}/zos-chain-node}"
[ -x "$ZOS_CHAIN_NODE_BIN" ] || { echo "build the node first: make build" >&2; exit 1; }
[ -d node_modules ] || npm ci --no-audit --no-fund
export PATH="$PWD/bin:$PATH"
exec npx zombienet --provider native test local.zndsl "$@"
