#!/usr/bin/env bash
# Starts a single-validator development chain on 127.0.0.1 and prints how to reach it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
node="$CARGO_TARGET_DIR/${CARGO_PROFILE:-ci}/zos-chain-node"
rpc_port="${RPC_PORT:-9944}"
[ -x "$node" ] || { echo "node binary missing at $node (run: make build)" >&2; exit 1; }
cat <<MSG

  ZOS grid development chain
  RPC endpoint : ws://127.0.0.1:${rpc_port}
  polkadot.js  : https://polkadot.js.org/apps/?rpc=ws%3A%2F%2F127.0.0.1%3A${rpc_port}#/explorer
  Stop with Ctrl-C. The chain state is temporary (--tmp).

MSG
exec "$node" --dev --tmp --rpc-port "$rpc_port" --listen-addr /ip4/127.0.0.1/tcp/0 \
  --no-mdns --no-telemetry --no-prometheus --rpc-cors all
