#!/usr/bin/env bash
# Every test of the project. One cargo profile (`ci`) and one feature set (`--workspace`) for the
# node binary and all test targets, so nothing is compiled twice.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
profile="${CARGO_PROFILE:-ci}"
failed=()
step() {
  local name="$1"; shift
  echo
  echo "== $name"
  local start=$SECONDS
  if "$@"; then
    echo "== $name: ok ($((SECONDS - start)) s)"
  else
    echo "== $name: FAILED ($((SECONDS - start)) s)"
    failed+=("$name")
  fi
}

# The binaries first: end-to-end tests run the `zos` CLI and the chain node from the target dir.
# Every test binary is built once with the workspace's feature set, then run directly (another
# package selection would unify features differently and rebuild), in two lanes at once: the
# single-host end-to-end binaries (mostly waiting for blocks and guests) beside everything
# else. They use disjoint namespaces, name prefixes and free ports.
LANE_TESTS=" e2e vm_e2e public_ip_e2e overlay_e2e "
cargo_tests() {
  cargo build --profile "$profile" --workspace --bins || return 1
  # The node OS's static PID 1, for the boot tests (its own target directory: no rebuilds).
  bash boot/build.sh --core-0-only >/dev/null || return 1
  local list
  list=$(mktemp)
  cargo test --profile "$profile" --workspace --no-run --message-format=json >"$list" || return 1
  # "<package dir> <target name> <executable>" per test binary.
  local binaries
  binaries=$(python3 - "$list" <<'PY'
import json, os, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(os.path.dirname(m["manifest_path"]), m["target"]["name"], m["executable"])
PY
  )
  rm -f "$list"
  # As cargo runs them: from the package's directory, with its manifest dir in the environment.
  run_binaries() {
    local rc=0 dir name exe
    while read -r dir name exe; do
      [ -n "$exe" ] || continue
      echo "     Running $name ($exe)"
      (cd "$dir" && CARGO_MANIFEST_DIR="$dir" "$exe") || { rc=1; echo "FAILED: $name"; }
    done
    return "$rc"
  }
  local lane_log lane rc=0 lane_start=$SECONDS
  lane_log=$(mktemp)
  grep -E " ($(echo $LANE_TESTS | tr ' ' '|')) " <<<"$binaries" | run_binaries >"$lane_log" 2>&1 &
  lane=$!
  trap 'kill "$lane" 2>/dev/null; cat "$lane_log"' INT TERM
  grep -vE " ($(echo $LANE_TESTS | tr ' ' '|')) " <<<"$binaries" | run_binaries || rc=1
  cargo test --profile "$profile" --workspace --doc || rc=1
  wait "$lane" || rc=1
  trap - INT TERM
  echo "---- lane: $LANE_TESTS($((SECONDS - lane_start)) s) ----"
  cat "$lane_log"
  rm -f "$lane_log"
  return "$rc"
}
step "cargo test (workspace)" cargo_tests
# The polkadot.js suite only drives its own dev chains on free loopback ports and mostly waits
# for finality, so it runs in the background beside the steps below (saves ~8 min of waiting).
pjs_log=$(mktemp)
( failed=(); step "polkadot.js suite" bash -c 'cd tests/polkadot-js && { [ -d node_modules ] && npm ls >/dev/null 2>&1 || npm ci --no-audit --no-fund; } && npm test' \
    >"$pjs_log" 2>&1; [ "${#failed[@]}" -eq 0 ] ) &
pjs=$!
# FRAME benchmarks run as tests against the pallets' mock runtimes; in the same build, the
# try-runtime checks: each storage migration's pre- and post-upgrade checks and try_state.
step "pallet benchmarks and try-runtime checks as tests" env SKIP_WASM_BUILD=1 cargo test \
  --profile "$profile" -p pallet-grid -p pallet-deployments -p pallet-billing -p pallet-releases \
  --features runtime-benchmarks,try-runtime --no-fail-fast
# The README's `make run` flow, non-interactively: chain, executor node, image hub, a 2-of-2
# contract, the guest's entrypoint line and a settled consumption report.
step "local grid (make run --check)" bash scripts/run-local-grid.sh --check
# The explorer in Debian's chromium (puppeteer-core drives the system browser; nothing is
# downloaded) against a dev chain and an executor node: build, then explorer/test/.
step "explorer (chromium)" bash -c 'cd explorer && { command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium); } && { [ -d node_modules ] && npm ls >/dev/null 2>&1 || npm ci --no-audit --no-fund; } && npm test'

wait "$pjs" || failed+=("polkadot.js suite")
cat "$pjs_log"
rm -f "$pjs_log"

echo
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all test steps passed"
