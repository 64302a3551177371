#!/usr/bin/env bash
# Produces the chain specs from the runtime's genesis presets into chain-spec/out/ (not committed:
# the presets in runtime/src/genesis_config_presets.rs are the single source).
#   out/<name>.json      human-readable spec (genesis as the preset name)
#   out/<name>-raw.json  raw spec (genesis storage), what nodes of a shared network must use
set -euo pipefail
cd "$(dirname "$0")"
node="${ZOS_CHAIN_NODE_BIN:-$CARGO_TARGET_DIR/${CARGO_PROFILE:-ci}/zos-chain-node}"
mkdir -p out
for chain in dev local production; do
  "$node" build-spec --chain "$chain" --disable-default-bootnode >"out/$chain.json" 2>/dev/null
  "$node" build-spec --chain "$chain" --raw --disable-default-bootnode >"out/$chain-raw.json" 2>/dev/null
  echo "chain-spec/out/$chain.json chain-spec/out/$chain-raw.json"
done
