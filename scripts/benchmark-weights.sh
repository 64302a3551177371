#!/usr/bin/env bash
# Regenerates runtime/src/weights/<pallet>.rs by running the FRAME benchmarks (v2) of the grid
# pallets on the real wasm runtime: builds zos-chain-node with `runtime-benchmarks` in its own
# target directory (a different feature set; it would otherwise invalidate the shared one) and
# runs `benchmark pallet` for each pallet. Takes ~25 min from scratch on 2 cores, ~10 min after.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-${CARGO_TARGET_DIR%/*}/bench-target}"
# A runtime among the benchmarking CLI's own dependencies cannot be built from this workspace.
export SKIP_FRAME_STORAGE_ACCESS_TEST_RUNTIME_WASM_BUILD=1
steps="${STEPS:-10}"
repeat="${REPEAT:-5}"
cargo build --profile ci -p zos-chain-node --features runtime-benchmarks
node="$CARGO_TARGET_DIR/ci/zos-chain-node"
for pallet in pallet_grid pallet_deployments pallet_billing; do
  out="runtime/src/weights/$pallet.rs"
  "$node" benchmark pallet --chain dev --pallet "$pallet" --extrinsic '*' \
    --steps "$steps" --repeat "$repeat" --output "$out"
  # Keep machine-specific paths and host names out of the committed file.
  python3 - "$out" "$pallet" "$steps" "$repeat" <<'PY'
import re, sys
path, pallet, steps, repeat = sys.argv[1:]
text = open(path).read()
text = re.sub(r"// Executed Command:\n(// .*\n)+",
              f"// Executed Command (scripts/benchmark-weights.sh):\n// zos-chain-node benchmark pallet --chain dev --pallet {pallet} --extrinsic '*' --steps {steps} --repeat {repeat}\n",
              text)
text = re.sub(r"HOSTNAME: `[^`]*`, ", "", text)
open(path, "w").write(text)
PY
  echo "wrote $out"
done
