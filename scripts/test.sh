#!/usr/bin/env bash
# Every test of the project, in one cargo profile shared with the node binary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
profile="${CARGO_PROFILE:-ci}"

echo "== cargo test (workspace, profile $profile, target $CARGO_TARGET_DIR)"
cargo test --profile "$profile" --workspace --no-fail-fast
