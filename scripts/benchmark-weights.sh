#!/usr/bin/env bash
# Regenerates the weights of the grid pallets by running their FRAME benchmarks (v2) on the real
# wasm runtime: builds zos-chain-node with `runtime-benchmarks` in its own target directory (a
# different feature set; it would otherwise invalidate the shared one) and runs `benchmark
# pallet` for each pallet. From the same run it writes
# - runtime/src/weights/<pallet>.rs: the runtime's weights (its database weights), and
# - pallets/<name>/src/weights.rs: the pallet's `WeightInfo` trait, `SubstrateWeight<T>` with
#   the same numbers, and `()` with ParityDB's constants (what the pallets' mocks use).
# Takes ~25 min to build from scratch on 2 cores, then ~1 min per pallet at the defaults.
# STEPS and REPEAT override the defaults (50 and 20); PALLETS limits the run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-${CARGO_TARGET_DIR%/*}/bench-target}"
# A runtime among the benchmarking CLI's own dependencies cannot be built from this workspace.
export SKIP_FRAME_STORAGE_ACCESS_TEST_RUNTIME_WASM_BUILD=1
steps="${STEPS:-50}"
repeat="${REPEAT:-20}"
pallets="${PALLETS:-pallet_grid pallet_deployments pallet_billing pallet_releases}"
cargo build --profile ci -p zos-chain-node --features runtime-benchmarks
node="$CARGO_TARGET_DIR/ci/zos-chain-node"
for pallet in $pallets; do
  out="runtime/src/weights/$pallet.rs"
  "$node" benchmark pallet --chain dev --pallet "$pallet" --extrinsic '*' \
    --steps "$steps" --repeat "$repeat" --output "$out"
  crate_dir="pallets/${pallet#pallet_}"
  python3 - "$out" "$pallet" "$steps" "$repeat" "$crate_dir/src/weights.rs" <<'PY'
import re, sys
path, pallet, steps, repeat, pallet_path = sys.argv[1:]
text = open(path).read()
# Keep machine-specific paths and host names out of the committed files.
text = re.sub(r"// Executed Command:\n(// .*\n)+",
              f"// Executed Command (scripts/benchmark-weights.sh):\n// zos-chain-node benchmark pallet --chain dev --pallet {pallet} --extrinsic '*' --steps {steps} --repeat {repeat}\n",
              text)
text = re.sub(r"HOSTNAME: `[^`]*`, ", "", text)
open(path, "w").write(text)

# The pallet's own file, from the same numbers: the impl block's functions, verbatim.
header = text.split("#![cfg_attr(rustfmt, rustfmt_skip)]")[0]
start = text.index(f"impl<T: frame_system::Config> {pallet}::WeightInfo for WeightInfo<T> {{")
body = text[text.index("{", start) + 1 : text.rindex("}")]
signatures = re.findall(r"\tfn (\w+\([^)]*\)) -> Weight \{", body)
assert signatures, "no weight functions found"
trait_fns = "".join(f"\tfn {sig} -> Weight;\n" for sig in signatures)
out = (
    header
    + "#![cfg_attr(rustfmt, rustfmt_skip)]\n#![allow(unused_parens)]\n#![allow(unused_imports)]\n"
    + "#![allow(missing_docs)]\n\n"
    + "use frame_support::{traits::Get, weights::{Weight, constants::ParityDbWeight}};\n"
    + "use core::marker::PhantomData;\n\n"
    + f"/// Weight functions needed for `{pallet}`.\npub trait WeightInfo {{\n{trait_fns}}}\n\n"
    + f"/// Weights for `{pallet}` with the database weights of the runtime (`T::DbWeight`).\n"
    + "pub struct SubstrateWeight<T>(PhantomData<T>);\n"
    + f"impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {{{body}}}\n\n"
    + "/// The same weights with ParityDB's read and write costs, for tests and mocks.\n"
    + "impl WeightInfo for () {"
    + body.replace("T::DbWeight::get()", "ParityDbWeight::get()")
    + "}\n"
)
open(pallet_path, "w").write(out)
PY
  echo "wrote $out and $crate_dir/src/weights.rs"
done
